"""Pick the torch device: CUDA when present, then Apple MPS, else CPU; always overridable."""

from __future__ import annotations

import torch

from ..errors import InputError


def pick_device(requested: str | None = None) -> torch.device:
    """Return ``requested`` if it can be used, else the best device present ("auto" or None)."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"Unknown device {requested!r}: use 'auto', 'cpu', 'cuda' or 'mps'.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {requested!r} was asked for, but PyTorch sees no CUDA GPU here.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"Device {requested!r} was asked for, but Apple MPS is not available here.")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """True where bfloat16 matrix work runs natively: a CUDA GPU of compute capability 8.0 or
    newer (Ampere+), or a CPU whose oneDNN has AVX512-BF16/AMX. Pre-Ampere GPUs emulate bf16
    (``torch.cuda.is_bf16_supported()`` says True there by default), which is slower than fp32."""
    if device.type == "cuda":
        return _cuda_bf16_is_native(device)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _cuda_bf16_is_native(device: torch.device) -> bool:
    try:
        major, _minor = torch.cuda.get_device_capability(device)
    except (AssertionError, RuntimeError):  # no CUDA here after all
        return False
    if major < 8:
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch has no ``including_emulation``; the capability check above suffices
        return bool(torch.cuda.is_bf16_supported())

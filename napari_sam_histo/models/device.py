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
    """True where bfloat16 matrix work runs natively (CUDA, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False

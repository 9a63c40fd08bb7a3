"""Pick the torch device: CUDA when present, then Apple MPS, else CPU; always overridable. And
what runs fast on it: bf16 (native or not), the optimized float32 image encoder."""

from __future__ import annotations

import os

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


# Architectures whose optimized (traced + frozen) float32 encoder was measured faster than eager
# on a CPU: MobileSAM (conv stages whose BatchNorms fold away) 1.3x end to end on 2 quiet AVX2 cores (docs/speed.md).
# ViT-B/L/H are
# not measured (12-60 s per tile here, mostly plain matmuls), and a frozen copy of ViT-H would hold
# another 2.5 GB of weights: they stay eager unless asked (encoder_mode="optimized").
OPTIMIZED_ENCODER_ARCHS = ("vit_t",)
FAST_ENCODER_ENV = "NAPARI_SAM_HISTO_FAST_ENCODER"


def optimized_encoder_is_fast(device: torch.device, arch: str) -> bool:
    """Whether ``encoder_mode="auto"`` picks the optimized float32 encoder: on a CPU, for the
    architectures measured faster. ``NAPARI_SAM_HISTO_FAST_ENCODER=0`` turns it off (eager);
    on a GPU the eager encoder (cuDNN, bf16 where native) is kept."""
    if os.environ.get(FAST_ENCODER_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return torch.device(device).type == "cpu" and arch in OPTIMIZED_ENCODER_ARCHS

"""Normalized Focal Loss (Sofiiuk et al., RITM), the loss Kim et al. train with.

Focal loss down-weights pixels already right; NFL then rescales the weights so they sum to the
number of pixels, so the loss does not vanish as the mask gets better (faster convergence than
BCE, RITM §3). Per pixel, with p the predicted probability and y the target:

    pt   = 1 - |y - p|
    beta = (1 - pt) ** gamma
    w    = alpha if y else 1 - alpha
    loss = - sum(w * beta * log(pt)) / sum(beta)        (per sample)

The normaliser ``sum(beta)`` is treated as a constant (no gradient), as in RITM. RITM divides
``sum(w * beta * N / sum(beta) * log(pt))`` by N; the N cancel, which is the formula above.
"""

from __future__ import annotations

import torch

DEFAULT_ALPHA = 0.5
DEFAULT_GAMMA = 2.0


def normalized_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    gamma: float = DEFAULT_GAMMA,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Per-sample NFL of ``logits`` against a binary ``target`` of the same shape (B, ...)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    logits = logits.float()
    target = target.float()
    prob = torch.sigmoid(logits)
    pt = 1.0 - (target - prob).abs()
    beta = (1.0 - pt) ** gamma
    weight = torch.where(target > 0.5, torch.full_like(pt, alpha), torch.full_like(pt, 1.0 - alpha))
    dims = tuple(range(1, logits.dim()))
    normaliser = beta.sum(dim=dims, keepdim=True).detach() + eps
    log_pt = torch.log(torch.clamp(pt + eps, max=1.0))
    return -(weight * beta * log_pt / normaliser).sum(dim=dims)

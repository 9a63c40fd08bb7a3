"""Clicks simulated during training, as RITM trains (Sofiiuk et al. 2022) and Kim et al. follow.

The first click lands at random inside the object. Each further click is sampled from the error
region of the previous prediction: the error type (missed object = positive click, false
positive = negative click) whose distance-transform maximum is larger, then a pixel at random
among those deeper than half that maximum, so clicks land well inside errors but not always on
the same pixel (the evaluation clicker, ``evaluation.clicker``, always takes the deepest one).

``simulated_click_loss`` is the training step built on them, shared by the offline training loop
(``training.trainer``) and the online adaptation (``adaptation.decoder_adapter``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from ..evaluation.clicker import AutoClick, larger_error
from ..evaluation.metrics import LOGIT_THRESHOLD
from .nfl_loss import DEFAULT_ALPHA, DEFAULT_GAMMA, normalized_focal_loss
from .prompted_forward import ImageGeometry, PromptedForward


def first_click(target: np.ndarray, rng: np.random.Generator) -> AutoClick:
    """A positive click at a random pixel of the object (``target`` must not be empty)."""
    rows, cols = np.nonzero(np.asarray(target, dtype=bool))
    if rows.size == 0:
        raise ValueError("the target mask is empty: there is no object to click on")
    pick = int(rng.integers(rows.size))
    return AutoClick(int(rows[pick]), int(cols[pick]), True)


def error_click(target: np.ndarray, prediction: np.ndarray, rng: np.random.Generator) -> AutoClick | None:
    """A click sampled from the larger error region of ``prediction``; None when there is no error."""
    error = larger_error(target, prediction)
    if error is None:
        return None
    rows, cols = np.nonzero(error.distance > error.depth / 2.0)
    pick = int(rng.integers(rows.size))
    return AutoClick(int(rows[pick]), int(cols[pick]), error.positive)


def simulated_click_loss(forward: PromptedForward, features: torch.Tensor, geometry: list[ImageGeometry],
                         targets: list[np.ndarray], rng: np.random.Generator, max_extra_clicks: int,
                         mask_prompt_prob: float, alpha: float = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA,
                         autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """The loss of one training step on a batch (Kim et al. §2.2, following RITM's iterative
    training): a random first click inside each of ``targets``; then, without gradient,
    0..``max_extra_clicks`` rounds in which ``forward`` predicts and a click is sampled from each
    prediction's error region, the last prediction fed back as the mask prompt with probability
    ``mask_prompt_prob``; the final prediction, restored to each target's size, scored with the
    Normalized Focal Loss (the batch mean). ``features``: the images' embeddings (B, C, h, w);
    ``autocast()``: the context the forward passes run in (mixed precision). Everything random
    comes from ``rng``, in a fixed order: a seeded generator gives the same clicks again."""
    clicks = [[first_click(t, rng)] for t in targets]
    prompts, use_mask = None, None
    with torch.no_grad(), autocast():
        for _ in range(int(rng.integers(0, max_extra_clicks + 1))):
            low_res = forward(features.detach(), clicks, geometry, prompts, use_mask).float()
            for i, logits in enumerate(forward.restore(low_res, geometry)):
                click = error_click(targets[i], (logits > LOGIT_THRESHOLD).cpu().numpy(), rng)
                if click is not None:
                    clicks[i].append(click)
            prompts, use_mask = low_res, rng.random(len(targets)) < mask_prompt_prob
    with autocast():
        low_res = forward(features, clicks, geometry, prompts, use_mask)
    losses = [normalized_focal_loss(logits[None], torch.as_tensor(target, device=features.device)[None], alpha, gamma)
              for logits, target in zip(forward.restore(low_res.float(), geometry), targets)]
    return torch.cat(losses).mean()

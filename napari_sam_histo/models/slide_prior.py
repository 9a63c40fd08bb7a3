"""A slide prior: a linear read-out of SAM's image embedding, fitted on one slide's accepted
objects, added to a decoder's mask logits.

Why: SAM's decoder follows edges; a tumour region is defined by its texture, and on one slide the
texture of what the pathologist accepts is consistent. A logistic regression over each embedding
cell's 256 channels (and their 3x3 and 7x7 neighbourhood means: the texture around the cell)
says how much a cell looks like the accepted objects; its logit, times a small weight, is added to
every mask the decoder returns, so the clicks still decide where the object is and the prior
tips the uncertain cells. It has 769 parameters and is fitted by L-BFGS (a second or two on a
CPU) from the examples the adaptation already keeps; the adaptation's gate decides whether it is
used (docs/benchmarks.md has what it does on RINGS and EBHI-Seg).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CONTEXT = (1, 3, 7)  # neighbourhood sizes (in embedding cells) whose mean channels are features
PRIOR_WEIGHT = 0.25  # the prior's logit is scaled by this before it is added to the decoder's
REGULARIZATION = 0.1  # inverse L2 strength, as scikit-learn's ``C`` (measured: 0.1 on RINGS)
CELLS_PER_EXAMPLE = 1024  # cells drawn per example (memory and time stay bounded)
CELL = 16  # model-input pixels per embedding cell (1024 / 64)


def context_features(features: torch.Tensor) -> torch.Tensor:
    """(C, h, w) embedding -> (C * len(CONTEXT), h, w): each cell's channels and the means of its
    neighbourhoods (edges averaged over what exists)."""
    f = features.float()
    parts = [f if k == 1 else F.avg_pool2d(f[None], k, 1, k // 2, count_include_pad=False)[0] for k in CONTEXT]
    return torch.cat(parts)


class SlidePrior(nn.Module):
    """Logit per embedding cell: ``weight . context_features + bias``."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.linear = nn.Linear(channels * len(CONTEXT), 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, h, w) logits. A neighbourhood mean is linear and the same for every
        channel, so each part of the weight is applied to the cells first and the one-channel maps
        are pooled after: a few ms a click instead of pooling all channels (130 ms on one core)."""
        parts = self.linear.weight[0].float().reshape(len(CONTEXT), -1)  # (len(CONTEXT), C)
        maps = torch.einsum("kc,bchw->bkhw", parts.to(image_embeddings.device), image_embeddings.float())
        out = torch.zeros_like(maps[:, :1])
        for i, k in enumerate(CONTEXT):
            m = maps[:, i: i + 1]
            out = out + (m if k == 1 else F.avg_pool2d(m, k, 1, k // 2, count_include_pad=False))
        return out + self.linear.bias.float().to(out.device)


class SlidePriorDecoder(nn.Module):
    """A decoder whose mask logits get ``weight`` x the slide prior (upsampled bilinearly to the
    masks' grid). With ``weight`` 0 it is the decoder itself."""

    def __init__(self, decoder: nn.Module, prior: SlidePrior, weight: float = PRIOR_WEIGHT) -> None:
        super().__init__()
        self.decoder = decoder
        self.prior = prior
        self.weight = float(weight)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool = False):
        masks, iou = self.decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                                  sparse_prompt_embeddings=sparse_prompt_embeddings,
                                  dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=multimask_output)
        if self.weight == 0:
            return masks, iou
        prior = self.prior(image_embeddings)
        prior = F.interpolate(prior, masks.shape[-2:], mode="bilinear", align_corners=False)
        return masks + (self.weight * prior).to(masks.dtype), iou


def _cell_fraction(mask: np.ndarray, input_size, grid: tuple[int, int]) -> torch.Tensor:
    """The share of each embedding cell inside ``mask`` (resized as SAM resizes the image)."""
    in_h, in_w = int(input_size[0]), int(input_size[1])
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    resized = F.interpolate(m, (in_h, in_w), mode="area") if tuple(m.shape[-2:]) != (in_h, in_w) else m
    canvas = torch.zeros(1, 1, grid[0] * CELL, grid[1] * CELL)
    canvas[..., :in_h, :in_w] = resized[..., : grid[0] * CELL, : grid[1] * CELL]
    return F.avg_pool2d(canvas, CELL)[0, 0]


def example_cells(features: torch.Tensor, target: np.ndarray, input_size, original_size,
                  rng: np.random.Generator, limit: int = CELLS_PER_EXAMPLE,
                  ignore: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells, labels) of one tile on the CPU: context features of embedding cells lying wholly
    inside the image (not SAM's padding), labelled by whether most of the cell is in the accepted
    mask; cells mostly in ``ignore`` left out; at most ``limit`` cells, drawn with ``rng``."""
    features = features.detach().float().cpu()
    x = context_features(features[0] if features.dim() == 4 else features)  # (C', h, w)
    grid = tuple(x.shape[-2:])
    fraction = _cell_fraction(target, input_size, grid)
    rows, cols = int(input_size[0]) // CELL, int(input_size[1]) // CELL  # cells wholly inside the image
    cells = x[:, :rows, :cols].reshape(x.shape[0], -1).T
    labels = (fraction[:rows, :cols] > 0.5).reshape(-1).float()
    if ignore is not None and np.any(ignore):
        kept = (_cell_fraction(ignore, input_size, grid)[:rows, :cols] <= 0.5).reshape(-1)
        cells, labels = cells[kept], labels[kept]
    if len(labels) > limit:
        keep = torch.as_tensor(np.sort(rng.choice(len(labels), limit, replace=False)))
        cells, labels = cells[keep], labels[keep]
    return cells, labels


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, regularization: float,
                 max_iter: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) of an L2-regularised logistic regression (scikit-learn's objective with
    ``C`` = ``regularization``) by L-BFGS; None when the labels are all one class (nothing to tell
    apart). The slide prior and the slide refiner both fit this way."""
    labels = torch.as_tensor(labels, dtype=torch.float32)
    if len(labels) == 0 or bool((labels == labels[0]).all()):
        return None
    features = torch.as_tensor(features, dtype=torch.float32)
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * regularization * len(labels))

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(features @ weight + bias, labels) + penalty * (weight @ weight)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_slide_prior(cells: torch.Tensor, labels: torch.Tensor, regularization: float = REGULARIZATION,
                    max_iter: int = 100) -> SlidePrior | None:
    """``fit_logistic`` on embedding cells, as a ``SlidePrior``; None when the labels are one class."""
    fitted = fit_logistic(cells, labels, regularization, max_iter)
    if fitted is None:
        return None
    prior = SlidePrior(cells.shape[1] // len(CONTEXT))
    with torch.no_grad():
        prior.linear.weight.copy_(fitted[0][None])
        prior.linear.bias.copy_(fitted[1])
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return prior.eval()

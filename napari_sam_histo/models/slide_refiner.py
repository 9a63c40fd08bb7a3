"""A slide refiner: a per-slide pixel classifier that moves SAM's mask border to where this slide's
accepted objects put it, switched on or off per object by the object's own clicks.

Why: on a slide, what the pathologist counts as the object's border is consistent (on RINGS glands:
the outer epithelial rim, which SAM's mask misses on some glands and overshoots on others), and it
is visible in colour at the pixel level, finer than SAM's 16-px embedding cells (a prior on the
embedding did not help there). A logistic regression over SAM's logit, the pixel's colour at three
scales and their products (19 numbers a pixel) is fitted on the logits SAM gave while the slide's
accepted objects were clicked, labelled by their accepted masks: where SAM is sure the logit wins,
near its border the colour decides. It is wrong on an object unlike the accepted ones (a tumour
tile after benign glands), so each object keeps a running score of SAM's and the refiner's masks
at every new click (the click says what the pixel under it should have been, ``ClickEvidence``),
and the object is shown refined unless SAM has erred less by ``REFINED_LEAD`` or more; and a
refined mask that overlaps SAM's by less than the refiner's ``min_agreement`` (``MIN_AGREEMENT``
unless fitted with another) is not a border moved but another object, so SAM's is shown instead
(``masks_agree``). SAM's own logits stay the mask prompt.
Offline figures and the command: docs/benchmarks.md, *Offline checks* (``scripts/slide-refiner-offline-check``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..slides.rgb import to_rgb_uint8
from .slide_prior import fit_logistic

SCALES = (0.0, 2.0, 6.0)  # Gaussian sigmas (tile pixels) of the colour features; 0: the pixel itself
LOGIT_SCALE = 10.0  # SAM's logits are clipped to +-2 x this and divided by it (features near 1)
REGULARIZATION = 1.0  # inverse L2 strength, as scikit-learn's ``C``
PIXELS_PER_SNAPSHOT = 3000  # drawn from the whole tile, and as many again near SAM's border
NEAR_BORDER = 10.0  # |logit| under this is "near SAM's border"
FEATURES = 1 + 6 * len(SCALES)  # logit, colour at each scale, colour x logit at each scale
# Nats by which SAM must lead at an object's clicks to be shown instead of the refiner. A click sits
# on an error of what was shown, which might count against the shown mask too often. Leads of 0, 1, 2
# and 4 on six EBHI-Seg cases (two of them also in the offline figures of docs/benchmarks.md) take 9.72,
# 9.92, 9.96 and 10.04 clicks (SAM 10.96): no lead (docs/benchmarks.md).
REFINED_LEAD = 0.0
# The refiner moves SAM's border; a refined mask that overlaps SAM's by less than this (IoU) is not
# a border moved but another object (on RINGS: a tumour tile refined by a refiner that learnt benign
# glands, IoU 0.1-0.3 against SAM's 0.5-0.8 with the truth), and SAM's mask stands in for it. Set a
# priori at one half (the refined mask must share more with SAM's than it changes) and not tuned:
# docs/adaptation.md.
MIN_AGREEMENT = 0.5
TIE = 1e-6  # nats: click evidence this close is a tie (the refined mask stood aside for SAM's there)


def _gaussian(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) -> the same blurred by a separable Gaussian (radius 3 sigma, edges replicated).
    scipy's filter, five times faster here than torch's grouped convolution, gives the same numbers."""
    from scipy import ndimage

    blurred = np.asarray(image, dtype=np.float32)
    for axis in (1, 2):
        blurred = ndimage.gaussian_filter1d(blurred, sigma, axis=axis, mode="nearest", truncate=3.0)
    return torch.from_numpy(blurred)


def colour_features(image: np.ndarray) -> torch.Tensor:
    """A tile (grey, RGB or RGBA, any dtype ``to_rgb_uint8`` takes) -> (3 * len(SCALES), H, W)
    float32: RGB in [0, 1] at each scale (about 0.2 s for a 1024-px tile here: the blurs)."""
    rgb = torch.as_tensor(to_rgb_uint8(image, "tile"), dtype=torch.float32).permute(2, 0, 1) / 255.0
    return torch.cat([rgb if sigma == 0 else _gaussian(rgb, sigma) for sigma in SCALES])


def pixel_features(logits: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """SAM's (H, W) logits and a tile's ``colour_features`` -> (FEATURES, H, W)."""
    z = (torch.as_tensor(logits, dtype=torch.float32).clamp(-2 * LOGIT_SCALE, 2 * LOGIT_SCALE) / LOGIT_SCALE)[None]
    return torch.cat([z, colour, colour * z])


def masks_agree(refined: torch.Tensor, sam: torch.Tensor, threshold: float,
                min_agreement: float = MIN_AGREEMENT) -> bool:
    """Whether the refined mask (``refined`` > 0) is a correction of SAM's (``sam`` > ``threshold``):
    their IoU is at least ``min_agreement``. Two empty masks agree; a refined mask where SAM's is
    empty never does (the refiner moves a border, it finds no object)."""
    if min_agreement <= 0:
        return True
    a, b = refined > 0, sam > threshold
    union = int((a | b).sum())
    return (int((a & b).sum()) / union if union else 1.0) >= min_agreement


class SlideRefiner:
    """Refined logit per pixel: ``weight . pixel_features + bias`` (a mask is refined > 0).
    ``min_agreement``: the least IoU with SAM's mask at which a session shows the refined mask
    (``masks_agree``; 0: always)."""

    def __init__(self, weight: torch.Tensor, bias: float, min_agreement: float = MIN_AGREEMENT) -> None:
        self.weight = torch.as_tensor(weight, dtype=torch.float32).reshape(FEATURES)
        self.bias = float(bias)
        self.min_agreement = float(min_agreement)

    def on_tile(self, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slope, offset) maps of one tile: the refined logit is linear in SAM's scaled logit
        ``z``, ``slope * z + offset``, so a click costs two operations a pixel once these are made."""
        n = colour.shape[0]
        if 1 + 2 * n != FEATURES:
            raise ValueError(f"colour has {n} channels; colour_features gives {(FEATURES - 1) // 2}.")
        w_colour, w_product = self.weight[1: 1 + n], self.weight[1 + n:]
        slope = self.weight[0] + torch.einsum("c,chw->hw", w_product, colour)
        offset = self.bias + torch.einsum("c,chw->hw", w_colour, colour)
        return slope, offset

    def on_image(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``on_tile`` straight from a tile's pixels, as a click needs it: a blur is linear, so each
        scale's colour channels are first combined into the two maps' parts and only those two are
        blurred (four blurs instead of six three-channel ones: ~0.15 s for a 1024-px tile here)."""
        rgb = torch.as_tensor(to_rgb_uint8(image, "tile"), dtype=torch.float32).permute(2, 0, 1) / 255.0
        w_colour, w_product = self.weight[1: 1 + 3 * len(SCALES)], self.weight[1 + 3 * len(SCALES):]
        slope = torch.full(rgb.shape[1:], float(self.weight[0]))
        offset = torch.full(rgb.shape[1:], self.bias)
        for i, sigma in enumerate(SCALES):
            parts = torch.einsum("kc,chw->khw", torch.stack([w_product[3 * i: 3 * i + 3], w_colour[3 * i: 3 * i + 3]]), rgb)
            if sigma:
                parts = _gaussian(parts, sigma)
            slope += parts[0]
            offset += parts[1]
        return slope, offset

    @staticmethod
    def apply(logits: torch.Tensor, tile: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Refined logits from SAM's and a tile's ``on_tile`` maps."""
        slope, offset = tile
        z = torch.as_tensor(logits, dtype=torch.float32)
        if z.shape != slope.shape:
            raise ValueError(f"logits of shape {tuple(z.shape)} for a tile of {tuple(slope.shape)}.")
        z = z.clamp(-2 * LOGIT_SCALE, 2 * LOGIT_SCALE) / LOGIT_SCALE
        return slope.to(z.device) * z + offset.to(z.device)

    def __call__(self, logits: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return self.apply(logits, self.on_tile(colour))


def refiner_samples(snapshots, colour: torch.Tensor, target: np.ndarray, rng: np.random.Generator,
                    per_snapshot: int = PIXELS_PER_SNAPSHOT) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) from one accepted object on one tile: for each of SAM's logit maps taken
    while it was clicked (``snapshots``), ``per_snapshot`` pixels drawn from the tile and as many
    from near SAM's border (where the refiner has something to say), labelled by ``target``."""
    target = np.asarray(target, bool)
    if target.shape != tuple(colour.shape[1:]):
        raise ValueError(f"target of shape {target.shape} for a tile of {tuple(colour.shape[1:])}.")
    labels_all = torch.as_tensor(target.reshape(-1), dtype=torch.float32)
    xs, ys = [], []
    for logits in snapshots:
        logits = torch.as_tensor(logits, dtype=torch.float32).cpu()
        if logits.shape != target.shape:
            raise ValueError(f"logits of shape {tuple(logits.shape)} for a tile of {target.shape}.")
        features = pixel_features(logits, colour).reshape(FEATURES, -1)
        near = np.flatnonzero((logits.abs() < NEAR_BORDER).reshape(-1).numpy())
        index = rng.choice(features.shape[1], per_snapshot)
        if len(near):
            index = np.concatenate([index, rng.choice(near, min(per_snapshot, len(near)))])
        index = torch.as_tensor(index)
        xs.append(features[:, index].T)
        ys.append(labels_all[index])
    if not xs:
        return torch.zeros(0, FEATURES), torch.zeros(0)
    return torch.cat(xs), torch.cat(ys)


def fit_slide_refiner(features: torch.Tensor, labels: torch.Tensor, regularization: float = REGULARIZATION,
                      max_iter: int = 200, min_agreement: float = MIN_AGREEMENT) -> SlideRefiner | None:
    """``fit_logistic`` on pixels, as a ``SlideRefiner`` (shown under ``min_agreement``); None when
    the labels are all one class."""
    fitted = fit_logistic(features, labels, regularization, max_iter)
    return None if fitted is None else SlideRefiner(fitted[0], float(fitted[1]), min_agreement)


class ClickEvidence:
    """Which of SAM's mask and the refined one an object is shown with. Each new click is placed on
    an error of what was shown; before it is added, both masks' log-loss at the clicked pixel (the
    click's label as truth) is added to their scores, and the refined mask is shown unless SAM's
    total is lower by ``lead`` (nats) or more (a tie keeps the choice). ``start``: what the object's
    first mask uses ("refined" or "sam")."""

    def __init__(self, threshold: float, start: str = "refined", lead: float = REFINED_LEAD) -> None:
        if start not in ("refined", "sam"):
            raise ValueError(f"start {start!r}: choose 'refined' or 'sam'.")
        self.threshold = float(threshold)
        self.lead = float(lead)
        self.loss = {"sam": 0.0, "refined": 0.0}
        self.use_refined = start == "refined"

    def copy(self) -> ClickEvidence:
        other = ClickEvidence(self.threshold, "refined" if self.use_refined else "sam", self.lead)
        other.loss = dict(self.loss)
        return other

    def add_click(self, row: int, col: int, positive: bool, sam_logits, refined_logits) -> bool:
        """Score the previous masks at the new click (None before the object's first mask);
        returns whether the refined mask is shown next."""
        if sam_logits is None or refined_logits is None:
            return self.use_refined
        sign = 1.0 if positive else -1.0
        margins = {"sam": float(sam_logits[row, col]) - self.threshold, "refined": float(refined_logits[row, col])}
        for name, margin in margins.items():
            self.loss[name] += float(np.logaddexp(0.0, -sign * margin))
        difference = self.loss["refined"] - (self.loss["sam"] + self.lead)
        if abs(difference) > TIE:  # a tie (the two masks alike at every click since) keeps the choice
            self.use_refined = difference < 0
        return self.use_refined


class TileRefiner:
    """A ``SlideRefiner`` on one tile, as a click session uses it: SAM's logits in, refined logits
    out (a pixel is in the mask above 0). The tile's maps are made at the first call, from
    ``colour()`` (the tile's ``colour_features``, kept by the annotator: a multiply-add) or else
    from ``read_tile()`` (its pixels: the blurs), and kept on the logits' device. ``start`` and
    ``lead``: the session's ``ClickEvidence``."""

    def __init__(self, refiner: SlideRefiner, read_tile, start: str = "refined", lead: float = REFINED_LEAD,
                 evidence: ClickEvidence | None = None, maps: tuple | None = None, colour=None) -> None:
        """``evidence``: the object's evidence so far, that the tile starts from (a copy is taken);
        ``maps``: the tile's ``on_tile`` maps when its colour features are already made;
        ``colour``: a function giving them (any float dtype; ``read_tile`` is then not needed: None)."""
        self.refiner = refiner
        self.start = start
        self.lead = float(lead)
        self.evidence = evidence.copy() if evidence is not None else None
        self._read_tile = read_tile
        self._colour = colour
        self._maps: tuple[torch.Tensor, torch.Tensor] | None = maps

    @property
    def min_agreement(self) -> float:
        """The refiner's agreement rule (``masks_agree``), which the session applies."""
        return self.refiner.min_agreement

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._maps is None:
            if self._colour is not None:
                self._maps = self.refiner.on_tile(self._colour().float())
            else:
                self._maps = self.refiner.on_image(self._read_tile())
            self._read_tile = self._colour = None  # (closures over a tile's pixels need not live on)
        if self._maps[0].device != logits.device:
            self._maps = tuple(m.to(logits.device) for m in self._maps)
        return self.refiner.apply(logits, self._maps)

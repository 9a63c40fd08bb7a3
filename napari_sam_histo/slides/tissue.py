"""Where a slide has tissue, so a cohort's precompute (``cohort.embed``) skips tiles of bare glass.

The rule, kept simple and documented because users see its effect:

1. An **overview** of about ``OVERVIEW_SIDE`` pixels along its long side: the coarsest pyramid
   level at least that large, reduced further by an integer block mean, read in chunks (a single
   level 100k² slide is never held whole).
2. **Saturation** ``(max - min) / max`` of each overview pixel, averaged over 5×5 against
   noise: glass is white or grey (saturation near 0, whatever its brightness), H&E and IHC stains
   are coloured. Black (out-of-scan) is 0 too.
3. **Otsu's threshold** on the saturation, clamped to ``[MIN_THRESHOLD, MAX_THRESHOLD]``: on a
   slide that is almost all glass or all tissue Otsu would split noise or two stains, and the clamp
   keeps faint stroma in and glass out.
4. A small **morphological cleanup** (closing, then opening, 3×3): fills pinholes in tissue and
   drops dust specks.

A tile is **tissue** when at least ``MIN_TISSUE_FRACTION`` (5 %) of its footprint is: an object
clicked near the tissue's edge still finds its tile. Coloured pen marks count as tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import TileBox

OVERVIEW_SIDE = 1024
MIN_THRESHOLD, MAX_THRESHOLD = 0.04, 0.15  # glass rarely exceeds 0.04; faint stroma rarely falls below 0.15
MIN_TISSUE_FRACTION = 0.05
_CHUNK = 2048  # overview reads: level pixels per chunk side (at least 64 overview pixels)


@dataclass(frozen=True)
class TissueMask:
    """Tissue (True) on an overview of the slide; ``downsample`` level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    threshold: float  # the saturation that separated glass from tissue

    def fraction(self, box: TileBox) -> float:
        """The fraction of ``box``'s footprint (any level) that is tissue (at least one mask pixel)."""
        x0, y0, w0, h0 = box.level0_box
        d = self.downsample
        height, width = self.mask.shape
        c0, r0 = min(int(x0 / d), width - 1), min(int(y0 / d), height - 1)
        c1, r1 = max(int(np.ceil((x0 + w0) / d)), c0 + 1), max(int(np.ceil((y0 + h0) / d)), r0 + 1)
        return float(self.mask[r0:r1, c0:c1].mean())

    def keeps(self, box: TileBox, min_fraction: float = MIN_TISSUE_FRACTION) -> bool:
        return self.fraction(box) >= min_fraction

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold maximising the between-class variance of ``values`` (in [0, 1])."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def overview(source, side: int = OVERVIEW_SIDE) -> tuple[np.ndarray, float]:
    """(RGB overview, level-0 pixels per overview pixel), about ``side`` pixels along its long side."""
    large = [i for i, (w, h) in enumerate(source.level_dimensions) if max(w, h) >= side]
    level = max(large, key=lambda i: source.level_downsamples[i]) if large else 0
    width, height = source.level_dimensions[level]
    f = max(int(max(width, height) // side), 1)
    out_w, out_h = max(width // f, 1), max(height // f, 1)
    if width < f or height < f:  # a strip thinner than one block: read it whole
        f, out_w, out_h = 1, width, height
    chunk = f * max(_CHUNK // f, 64)
    out = np.zeros((out_h, out_w, 3), np.uint8)
    for y in range(0, out_h * f, chunk):
        for x in range(0, out_w * f, chunk):
            w, h = min(chunk, out_w * f - x), min(chunk, out_h * f - y)
            pixels = source.read_region(TileBox(level, x, y, w, h, source.level_downsamples[level]))
            blocks = pixels.reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
            out[y // f: (y + h) // f, x // f: (x + w) // f] = blocks.round().astype(np.uint8)
    return out, float(source.level_downsamples[level]) * f


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)


def tissue_mask(source, side: int = OVERVIEW_SIDE) -> TissueMask:
    """The slide's tissue on an overview (see the module for the rule)."""
    from scipy import ndimage

    rgb, downsample = overview(source, side)
    sat = ndimage.uniform_filter(saturation(rgb), size=5)  # pixel noise on glass is no tissue
    threshold = float(np.clip(otsu_threshold(sat), MIN_THRESHOLD, MAX_THRESHOLD))
    mask = sat > threshold
    structure = np.ones((3, 3), bool)
    mask = ndimage.binary_closing(mask, structure, border_value=0) | mask
    mask = ndimage.binary_opening(mask, structure)
    return TissueMask(mask, downsample, threshold)

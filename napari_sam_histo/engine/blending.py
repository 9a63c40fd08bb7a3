"""One object's logits from its tiles, at one or several working levels, without seams.

* Tiles of one level are averaged where they overlap, each weighted by a ramp that falls towards
  its **inner** borders (those that are not the slide's) over ``BLEND_MARGIN`` of a tile: near an
  inner border SAM saw nothing beyond it, and the neighbour that sees across is trusted there.
  The average is taken on the logits, before thresholding, so two tiles that disagree meet in a
  smooth transition instead of a straight cut along a tile border.
* Finer levels are composited over coarser ones: inside a finer level's tiles its logits replace
  the coarser ones, blended over the same ramp, so refining at a higher magnification changes the
  object only there, and it stays one object.
* The result is on one grid at the finest downsample clicked, unless the object's extent would
  exceed ``MAX_OBJECT_PIXELS`` there; it is then coarser (the status and tests say so), which
  bounds the memory one object can take (a float32 field of 4096² is 64 MiB).

Logits are resampled with bilinear interpolation at output pixel centres (``torch.grid_sample``).
Pixel convention: a pixel (column i, row j) of a level at downsample d covers level-0
``[i*d, (i+1)*d) x [j*d, (j+1)*d)`` (QuPath's and ``annotations.geometry``'s corner convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..slides.boxes import TileBox

BLEND_MARGIN = 1 / 8  # of a tile's side: the ramp at inner borders
MIN_WEIGHT = 1e-3  # a tile alone at its inner border still decides there
MAX_OBJECT_PIXELS = 4096 * 4096
BACKGROUND_LOGIT = -20.0  # where no tile of the object reaches


@dataclass(frozen=True)
class TileLogits:
    box: TileBox
    logits: torch.Tensor  # (h, w) at the box's own resolution
    level_size: tuple[int, int]  # (width, height) of the box's (working) level: which borders are inner


@dataclass(frozen=True)
class Blend:
    downsample: float  # level-0 pixels per pixel of ``logits``
    x: int  # top-left of ``logits`` in pixels of that downsample
    y: int
    logits: np.ndarray  # (H, W) float32
    covered: np.ndarray | None = None  # (H, W) bool: some tile of the object reaches the pixel

    def mask(self, threshold: float = 0.0) -> np.ndarray:
        return self.logits > threshold

    def level0_box(self) -> tuple[float, float, float, float]:
        d = self.downsample
        return (self.x * d, self.y * d, self.logits.shape[1] * d, self.logits.shape[0] * d)


def output_grid(tiles: list[TileLogits], max_pixels: int = MAX_OBJECT_PIXELS) -> tuple[float, int, int, int, int]:
    """(downsample, x, y, width, height) of the grid the tiles are blended on."""
    d = min(t.box.downsample for t in tiles)
    x0 = min(t.box.x * t.box.downsample for t in tiles)
    y0 = min(t.box.y * t.box.downsample for t in tiles)
    x1 = max((t.box.x + t.box.width) * t.box.downsample for t in tiles)
    y1 = max((t.box.y + t.box.height) * t.box.downsample for t in tiles)
    area = (x1 - x0) * (y1 - y0) / (d * d)
    if area > max_pixels:
        d *= math.sqrt(area / max_pixels)
    gx, gy = int(math.floor(x0 / d + 1e-6)), int(math.floor(y0 / d + 1e-6))
    width = int(math.ceil(x1 / d - 1e-6)) - gx
    height = int(math.ceil(y1 / d - 1e-6)) - gy
    return d, gx, gy, max(width, 1), max(height, 1)


def _ramp(u: torch.Tensor, length: int, inner_low: bool, inner_high: bool, margin: float) -> torch.Tensor:
    """Weight along one axis at tile coordinates ``u`` (pixel centres at i + 0.5)."""
    weight = torch.ones_like(u)
    if inner_low:
        weight = torch.minimum(weight, u / margin)
    if inner_high:
        weight = torch.minimum(weight, (length - u) / margin)
    return weight.clamp(MIN_WEIGHT, 1.0)


def _sample_grid(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s (1, h, w, 2) grid for normalised x positions ``u`` and y positions ``v``."""
    return torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], dim=-1)[None]


def _place(tile: TileLogits, d: float, gx: int, gy: int, width: int, height: int):
    """The tile's logits and weights on the part of the output grid it covers:
    (rows slice, cols slice, logits, weights)."""
    box, bd = tile.box, tile.box.downsample
    # the output pixels whose centres fall inside the tile
    c0 = max(int(math.ceil(box.x * bd / d - 0.5 - 1e-6)) - gx, 0)
    c1 = min(int(math.floor((box.x + box.width) * bd / d - 0.5 - 1e-6)) - gx + 1, width)
    r0 = max(int(math.ceil(box.y * bd / d - 0.5 - 1e-6)) - gy, 0)
    r1 = min(int(math.floor((box.y + box.height) * bd / d - 0.5 - 1e-6)) - gy + 1, height)
    if c1 <= c0 or r1 <= r0:
        return None
    logits = tile.logits.float()
    # tile coordinates (pixel units, 0 = the tile's left edge) of the output pixel centres
    u = (torch.arange(c0, c1, dtype=torch.float32) + gx + 0.5) * d / bd - box.x
    v = (torch.arange(r0, r1, dtype=torch.float32) + gy + 0.5) * d / bd - box.y
    same = abs(d - bd) < 1e-6 and abs(u[0] - math.floor(u[0]) - 0.5) < 1e-4 and abs(v[0] - math.floor(v[0]) - 0.5) < 1e-4
    if same:  # the same pixel grid: a plain slice
        i0, j0 = int(math.floor(u[0])), int(math.floor(v[0]))
        values = logits[j0: j0 + (r1 - r0), i0: i0 + (c1 - c0)]
    else:
        # grid_sample's normalised coordinates (align_corners=False)
        grid = _sample_grid((u / box.width) * 2 - 1, (v / box.height) * 2 - 1)
        values = F.grid_sample(logits[None, None], grid.to(logits.device), mode="bilinear",
                               padding_mode="border", align_corners=False)[0, 0]
    level_width, level_height = tile.level_size
    margin = BLEND_MARGIN * max(box.width, box.height)
    wx = _ramp(u, box.width, box.x > 0, box.x + box.width < level_width, margin)
    wy = _ramp(v, box.height, box.y > 0, box.y + box.height < level_height, margin)
    weights = wy[:, None] * wx[None, :]
    return slice(r0, r1), slice(c0, c1), values.cpu(), weights


def blend(tiles: list[TileLogits], max_pixels: int = MAX_OBJECT_PIXELS) -> Blend | None:
    """The object's logits over all its tiles (see the module), or None without tiles."""
    if not tiles:
        return None
    d, gx, gy, width, height = output_grid(tiles, max_pixels)
    field = torch.full((height, width), BACKGROUND_LOGIT)
    covered = torch.zeros((height, width), dtype=torch.bool)
    for downsample in sorted({t.box.downsample for t in tiles}, reverse=True):  # coarse first
        total = torch.zeros((height, width))
        weight = torch.zeros((height, width))
        for tile in (t for t in tiles if t.box.downsample == downsample):
            placed = _place(tile, d, gx, gy, width, height)
            if placed is None:
                continue
            rows, cols, values, weights = placed
            total[rows, cols] += values * weights
            weight[rows, cols] += weights
        here = weight > 0
        level_logits = torch.where(here, total / weight.clamp_min(1e-12), field)
        alpha = torch.where(covered, weight.clamp(0, 1), here.float())  # nothing coarser below: take it
        field = torch.where(here, (1 - alpha) * field + alpha * level_logits, field)
        covered |= here
    return Blend(d, gx, gy, field.numpy(), covered.numpy())


def sample_field(result: Blend, box: TileBox, shape: tuple[int, int], frame: tuple[float, float],
                 outside: float = BACKGROUND_LOGIT) -> torch.Tensor:
    """The blended logits resampled onto an (h, w) grid laid over ``box`` scaled by ``frame``:
    grid pixel (i, j) sits at box pixel ((i + 0.5) * frame[0], (j + 0.5) * frame[1]); ``outside``
    where no tile of the object reaches. A new tile's mask prompt (SAM's 256² low-resolution frame)
    is taken this way from the object so far."""
    h, w = shape
    fx, fy = frame
    bd = box.downsample
    u = (torch.arange(w, dtype=torch.float32) + 0.5) * fx  # box pixels
    v = (torch.arange(h, dtype=torch.float32) + 0.5) * fy
    gx = ((box.x + u) * bd / result.downsample - result.x) / result.logits.shape[1] * 2 - 1
    gy = ((box.y + v) * bd / result.downsample - result.y) / result.logits.shape[0] * 2 - 1
    grid = _sample_grid(gx, gy)
    field = torch.from_numpy(result.logits)[None, None]
    sampled = F.grid_sample(field, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    reached = torch.ones_like(field) if result.covered is None else torch.from_numpy(result.covered)[None, None].float()
    inside = F.grid_sample(reached, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    return torch.where(inside > 0, sampled, torch.full_like(sampled, float(outside)))

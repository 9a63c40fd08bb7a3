"""Polygons with holes in level-0 pixel coordinates, and drawing them into a mask for any box.

A ``Polygon`` is one exterior ring and zero or more hole rings, as (N, 2) arrays of (x, y).
Rasterising uses pixel centres: a pixel is inside when its centre is inside the ring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Polygon:
    exterior: np.ndarray  # (N, 2) x, y in level-0 pixels
    holes: list[np.ndarray] = field(default_factory=list)
    name: str = ""  # class / group name
    exclude: bool = False  # an exclusion region (CAMELYON's "_2"): subtracted from the others

    def bounds(self) -> tuple[float, float, float, float]:
        """(min_x, min_y, max_x, max_y)."""
        return (*self.exterior.min(axis=0), *self.exterior.max(axis=0))


def _fill(mask: np.ndarray, ring: np.ndarray, value: bool) -> None:
    from skimage.draw import polygon as draw_polygon

    if len(ring) < 3:
        return
    # Pixel (r, c) has its centre at (c + 0.5, r + 0.5) in the box's own pixel units.
    rows, cols = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=mask.shape)
    mask[rows, cols] = value


def rasterize(polygons: list[Polygon], origin: tuple[float, float], downsample: float,
              shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) bool mask of the box whose level-0 top-left is ``origin``, at ``downsample``."""
    height, width = shape
    x0, y0 = origin
    box = (x0, y0, x0 + width * downsample, y0 + height * downsample)
    mask = np.zeros(shape, bool)
    exclusion = np.zeros(shape, bool)
    for polygon in polygons:
        min_x, min_y, max_x, max_y = polygon.bounds()
        if max_x < box[0] or max_y < box[1] or min_x > box[2] or min_y > box[3]:
            continue
        part = np.zeros(shape, bool)
        _fill(part, (polygon.exterior - (x0, y0)) / downsample, True)
        for hole in polygon.holes:
            _fill(part, (hole - (x0, y0)) / downsample, False)
        (exclusion if polygon.exclude else mask)[part] = True
    return mask & ~exclusion

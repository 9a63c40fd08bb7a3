"""Clean an accepted mask before it becomes vectors: no specks, no pinholes, optionally smoother.

SAM's masks of tissue regions carry many tiny parts and holes (six clicks on one tumour region once
gave 53 specks down to 0.5 px² and 35 holes): QuPath shows each as a part of the annotation and
measurements count them. Parts and holes smaller than ``min_area`` are dropped on the mask, where
it is cheap and exact, before vectorising; the largest part is always kept, so an object that is
small on purpose (a nucleus) survives any threshold. What the dock draws is this cleaned geometry,
and the files get the same.

The minimum area is set in µm² when the slide states its pixel size, in level-0 pixels otherwise.
"""

from __future__ import annotations

import numpy as np

from .geometry import Polygon, mask_to_polygons

DEFAULT_MIN_AREA_UM2 = 10.0  # about a 3.5 µm disc: below any nucleus a pathologist outlines
DEFAULT_MIN_AREA_PX = 40.0  # the same at 0.5 µm/px, for slides without a pixel size
DEFAULT_TOLERANCE = 0.1  # level pixels: marching-squares vertices on straight runs only


def min_area_px(min_area: float, mpp: tuple[float, float] | None) -> float:
    """``min_area`` (µm² when ``mpp`` is known, else level-0 px²) as level-0 px²."""
    return float(min_area) / (mpp[0] * mpp[1]) if mpp else float(min_area)


def clean_mask(mask: np.ndarray, min_area_level_px: float) -> np.ndarray:
    """``mask`` without parts and holes smaller than ``min_area_level_px`` (pixels of the mask's
    own level); the largest part is kept whatever its size."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any() or min_area_level_px <= 1:
        return mask
    labels, count = ndimage.label(mask)  # 4-connected, as the vectoriser separates parts
    sizes = np.bincount(labels.ravel())[1:]
    keep = sizes >= min_area_level_px
    keep[int(np.argmax(sizes))] = True
    cleaned = np.concatenate([[False], keep])[labels]
    holes, _ = ndimage.label(~cleaned, structure=np.ones((3, 3), int))  # background is 8-connected then
    hole_sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = hole_sizes < min_area_level_px
    small[0] = False
    small[border] = False  # background reaching the box's edge is no hole
    return cleaned | small[holes]


def clean_polygons(mask: np.ndarray, origin: tuple[float, float], downsample: float, min_area: float = 0.0,
                   tolerance: float = DEFAULT_TOLERANCE) -> list[Polygon]:
    """The cleaned polygons of a level mask whose level-0 top-left is ``origin``; ``min_area`` is in
    level-0 px², ``tolerance`` (outline simplification) in level pixels."""
    cleaned = clean_mask(mask, min_area / downsample ** 2)
    return mask_to_polygons(cleaned, origin=origin, downsample=downsample, tolerance=max(tolerance, 0.0))

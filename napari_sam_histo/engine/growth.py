"""Where an object reaches a border of its tiles that is not the slide's: the cut points that
continuation (``annotator``) grows the object at, and where the prefetcher computes the tiles the
object's next clicks would open."""

from __future__ import annotations

import numpy as np

from .object_state import combine_tile_masks
from .tiles import TileBox, TileGrid

MAX_CUT_TILES = 4  # continuation tiles prefetched where the current object is cut by a tile border


def cut_points(boxes: list[TileBox], masks: list[np.ndarray], others: list[TileBox],
               grid: TileGrid) -> list[tuple[float, float]]:
    """Points of ``grid``'s level where the masks of the object's tiles there (``boxes``) reach an
    inner border, largest cut first (at most ``MAX_CUT_TILES``; a cut of fewer than 4 pixels is a
    corner). ``others``: the object's tiles at other levels, which cover it too (no growth over them)."""
    from scipy import ndimage

    d = grid.downsample
    (x0, y0), mask = combine_tile_masks(boxes, masks)
    covered = combine_tile_masks(boxes, [np.ones(b.shape, bool) for b in boxes])[1]
    height, width = mask.shape
    for box in others:
        bx0, by0, bw, bh = box.level0_box
        c0, r0 = max(int(np.ceil(bx0 / d)) - x0, 0), max(int(np.ceil(by0 / d)) - y0, 0)
        c1, r1 = min(int(np.floor((bx0 + bw) / d)) - x0, width), min(int(np.floor((by0 + bh) / d)) - y0, height)
        if c1 > c0 and r1 > r0:
            covered[r0:r1, c0:c1] = True
    closed = np.ones((height + 2, width + 2), bool)  # True: covered by a tile, or outside the level
    closed[1:-1, 1:-1] = covered
    closed[0, 1:-1] = y0 <= 0
    closed[-1, 1:-1] = y0 + height >= grid.height
    closed[1:-1, 0] = x0 <= 0
    closed[1:-1, -1] = x0 + width >= grid.width
    open_ = ~closed
    found = []  # (size, level x, level y) of each cut, each border side on its own
    for shift in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
                  (slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
        cut = mask & open_[shift]
        if not cut.any():
            continue
        labels, _ = ndimage.label(cut, structure=np.ones((3, 3), int))
        for index, region in enumerate(ndimage.find_objects(labels), start=1):
            rows, cols = np.nonzero(labels[region] == index)
            middle = len(rows) // 2
            found.append((len(rows), x0 + region[1].start + cols[middle] + 0.5, y0 + region[0].start + rows[middle] + 0.5))
    found.sort(key=lambda item: -item[0])
    return [(x, y) for size, x, y in found[:MAX_CUT_TILES] if size >= 4]

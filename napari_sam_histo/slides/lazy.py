"""A slide as a lazy multiscale image for napari: one dask array per pyramid level, read tile by
tile from the ``ImageSource`` when napari draws it. The full-resolution array is never built.

napari's own readers load plain images whole; for WSIs the levels must stay lazy, and OpenSlide's
``read_region`` is the reader that understands every vendor format, so each dask chunk is one
``read_region`` call (a small ``dask.array.map_blocks`` graph per level).
"""

from __future__ import annotations

import numpy as np

from ..engine.tiles import TileBox
from .reader import ImageSource

CHUNK = 512
MIN_LEVEL_SIDE = 256  # levels smaller than this add nothing to a multiscale view


def level_array(source: ImageSource, level: int, chunk: int = CHUNK):
    """Level ``level`` of ``source`` as a (H, W, 3) uint8 dask array of ``chunk``-sized blocks."""
    import dask.array as da

    width, height = source.level_dimensions[level]
    downsample = source.level_downsamples[level]
    rows = tuple(min(chunk, height - y) for y in range(0, height, chunk))
    cols = tuple(min(chunk, width - x) for x in range(0, width, chunk))

    def read_block(block_info=None):
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        return source.read_region(TileBox(level, x0, y0, x1 - x0, y1 - y0, downsample))

    return da.map_blocks(read_block, dtype=np.uint8, chunks=(rows, cols, (3,)), meta=np.empty((0, 0, 0), np.uint8))


def multiscale(source: ImageSource, chunk: int = CHUNK) -> list:
    """All useful levels, finest first (napari's multiscale order)."""
    levels = [0] + [i for i in range(1, source.level_count) if min(source.level_dimensions[i]) >= MIN_LEVEL_SIDE]
    return [level_array(source, i, chunk) for i in levels]

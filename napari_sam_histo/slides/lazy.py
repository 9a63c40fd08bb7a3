"""A slide as a lazy multiscale image for napari: one dask array per pyramid level, read tile by
tile from the ``ImageSource`` when napari draws it. The full-resolution array is never built.

napari's own readers load plain images whole; for WSIs the levels must stay lazy, so each dask
chunk is one ``read_region`` call on the source (OpenSlide for vendor slides, tifffile for generic
and OME TIFF pyramids; a small ``dask.array.map_blocks`` graph per level).
"""

from __future__ import annotations

import numpy as np

from .boxes import TileBox
from .rgb import MIN_SIDE
from .source import ImageSource

CHUNK = 512
MIN_LEVEL_SIDE = 256  # levels smaller than this add nothing to a multiscale view
# A slide whose coarsest level is larger than this gets virtual levels (powers of two, read from a
# finer level and resized) down to this size: napari draws the whole slide from its coarsest level
# on its GUI thread, and a 3000-px level (a one-level slide) stalled it for seconds (mostly its
# texture upload), where a 740-px one does not.
OVERVIEW_SIDE = 1024
MAX_VIRTUAL_FACTOR = 4  # a virtual level's chunk reads at most 4 x 4 chunks of the level under it


def level_geometry(source: ImageSource, level: int, downsample: float | None = None) -> tuple[float, bool, int, int]:
    """(downsample, virtual, width, height) of display level ``level`` of ``source``; with
    ``downsample`` coarser than the level's own, the virtual level read from it and resized."""
    virtual = downsample is not None and abs(downsample / source.level_downsamples[level] - 1) > 1e-6
    if virtual:
        width, height = source.size_at(downsample, level)
        return downsample, True, width, height
    width, height = source.level_dimensions[level]
    return source.level_downsamples[level], False, width, height


def chunk_box(level: int, downsample: float, virtual: bool, y0: int, y1: int, x0: int, x1: int,
              ) -> tuple[TileBox, tuple[int, int]]:
    """The box read for chunk [y0:y1, x0:x1] of a display level, and where the chunk starts in it:
    an edge chunk a few pixels thin is read as a MIN_SIDE-wide box reaching back into the level,
    and cropped (``read_region`` refuses boxes smaller than SAM's minimum input)."""
    ry0, rx0 = max(0, min(y0, y1 - MIN_SIDE)), max(0, min(x0, x1 - MIN_SIDE))
    return TileBox(level, rx0, ry0, x1 - rx0, y1 - ry0, downsample, virtual), (y0 - ry0, x0 - rx0)


def level_array(source: ImageSource, level: int, chunk: int = CHUNK, downsample: float | None = None):
    """Level ``level`` of ``source`` as a (H, W, 3) uint8 dask array of ``chunk``-sized blocks; with
    ``downsample`` (coarser than the level's own), the virtual level read from it and resized."""
    import dask.array as da

    downsample, virtual, width, height = level_geometry(source, level, downsample)
    rows = tuple(min(chunk, height - y) for y in range(0, height, chunk))
    cols = tuple(min(chunk, width - x) for x in range(0, width, chunk))
    tops, lefts = np.cumsum((0,) + rows[:-1]), np.cumsum((0,) + cols[:-1])

    def read_block(block_id=None):
        # block_id, not block_info: dask builds a block_info dict for every chunk of the level up
        # front (~55 MB for the 51k chunks of a 100k x 100k slide); block_id costs nothing
        row, col, _ = block_id
        y0, x0 = int(tops[row]), int(lefts[col])
        box, (dy, dx) = chunk_box(level, downsample, virtual, y0, y0 + rows[row], x0, x0 + cols[col])
        return source.read_region(box)[dy:, dx:]

    return da.map_blocks(read_block, dtype=np.uint8, chunks=(rows, cols, (3,)), meta=np.empty((0, 0, 0), np.uint8))


def level_plan(source: ImageSource) -> list[tuple[int, float | None]]:
    """The display levels as (pyramid level read, downsample or None for the level's own): all
    useful levels, finest first (napari's multiscale order), then virtual levels down to
    ``OVERVIEW_SIDE`` when the coarsest is larger."""
    levels = [0] + [i for i in range(1, source.level_count) if min(source.level_dimensions[i]) >= MIN_LEVEL_SIDE]
    plan: list[tuple[int, float | None]] = [(i, None) for i in levels]
    downsample = source.level_downsamples[levels[-1]]
    width, height = source.level_dimensions[levels[-1]]
    while max(width, height) > OVERVIEW_SIDE:
        downsample *= 2
        read = source.reading_level(downsample)
        if downsample / source.level_downsamples[read] > MAX_VIRTUAL_FACTOR + 1e-6:
            break  # each chunk would read too much: napari reads the coarsest level as it is
        width, height = source.size_at(downsample, read)
        plan.append((read, downsample))
    return plan


def multiscale(source: ImageSource, chunk: int = CHUNK) -> list:
    """The display levels of ``level_plan`` as dask arrays."""
    return [level_array(source, level, chunk, downsample) for level, downsample in level_plan(source)]

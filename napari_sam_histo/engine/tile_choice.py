"""Where an object's new tile goes, and the working levels it is on. Clicks are given in level-0
pixels; the model works on tiles of a working level (``working_levels``: the pyramid's levels and
virtual ones), fixed (``level=N``) or following the view (``level="auto"``: a UI passes each
click's level, chosen by ``level_for_view``).

The first click of an object gets a tile **centred on it** (shifted inward at the slide's edges so
it stays full-size): half a tile of context on every side, so an object near a grid line is not cut
there. Exception, to save the encoder (about 2 s per tile for MobileSAM on a CPU): a tile whose
embedding is already computed or being computed (prefetched, or used by an earlier object) or is in
the cache's disk store (a half-tile lattice tile around the click, as ``napari-sam-histo embed``
precomputes them) is reused when the click lies at least ``reuse_margin`` of a tile (a quarter by
default) from each of its inner borders. With the default margin some lattice tile always
qualifies, so on a precomputed slide no click waits for the encoder. ``reuse_margin=0.5`` always
centres.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..slides.boxes import TileBox
from ..slides.source import ImageSource
from .protocols import TilePredictor
from .tiles import TileGrid
from .working_levels import WorkingLevel, auto_level, level_with_downsample, working_levels

REUSE_MARGIN = 0.25  # a reused tile must hold the click at least a quarter tile from its inner borders


class TileChoice:
    def __init__(self, predictor: TilePredictor, source: ImageSource, level: int | str, tile_size: int,
                 reuse_margin: float, in_use: Callable[[str], bool]) -> None:
        """``in_use(key)``: the tile's embedding costs nothing more (the object clicks on it, or it
        is being computed now)."""
        self.auto = level == "auto"
        if not self.auto and not (isinstance(level, (int, np.integer)) and 0 <= level < source.level_count):
            raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {level!r} was chosen "
                             f"(or 'auto').")
        if not 0 <= reuse_margin <= 0.5:
            raise InputError(f"reuse_margin {reuse_margin} must lie in [0, 0.5] (a fraction of the tile).")
        self.predictor, self.source, self.in_use = predictor, source, in_use
        self.tile_size = int(tile_size)
        self.levels = working_levels(source, self.tile_size)
        self.working = (self.levels[0] if self.auto else
                        WorkingLevel(float(source.level_downsamples[level]), int(level), False))
        self._grids: dict[float, TileGrid] = {}
        self.grid_for(self.working)  # checks the tile size
        self.reuse_margin = float(reuse_margin)
        self.known: dict[str, TileBox] = {}  # every tile clicked on or prefetched (the caller's lock guards it)

    @property
    def level(self) -> int:
        """The pyramid level the current working level reads."""
        return self.working.read_level

    @property
    def grid(self) -> TileGrid:
        """The tile grid of the current working level (the last click's)."""
        return self.grid_for(self.working)

    def grid_for(self, working: WorkingLevel) -> TileGrid:
        grid = self._grids.get(working.downsample)
        if grid is None:
            grid = self._grids[working.downsample] = working.grid(self.source, self.tile_size)
        return grid

    def level_for_view(self, width0: float, height0: float) -> WorkingLevel:
        """The working level a click made in a view ``width0 x height0`` level-0 pixels wide uses:
        ``auto_level`` with ``level="auto"``, the fixed level otherwise."""
        return auto_level(self.levels, width0, height0, self.tile_size) if self.auto else self.working

    def grid_at(self, downsample: float | None) -> TileGrid:
        """The grid of the working level of ``downsample`` (see ``click``)."""
        return self.grid_for(self.working_for(downsample))

    def working_for(self, downsample: float | None) -> WorkingLevel:
        if downsample is None or not self.auto:
            return self.working
        return level_with_downsample(self.levels, downsample)

    def level_point(self, x0: float, y0: float, grid: TileGrid | None = None) -> tuple[float, float]:
        grid = grid or self.grid
        width0, height0 = self.source.level_dimensions[0]
        x0, y0 = float(x0), float(y0)
        if np.isfinite(x0) and np.isfinite(y0) and 0 <= x0 < width0 and 0 <= y0 < height0:
            # a coarser level keeps whole pixels only: the slide's last level-0 pixels belong to its last
            x0, y0 = min(x0, grid.width * grid.downsample - 1e-3), min(y0, grid.height * grid.downsample - 1e-3)
        x, y = x0 / grid.downsample, y0 / grid.downsample
        grid.check_point(x, y)
        return x, y

    def check_click(self, x0: float, y0: float) -> None:
        """``InputError`` unless level-0 (x0, y0) is a valid click on the slide."""
        self.level_point(x0, y0)

    def available(self, box: TileBox) -> bool:
        """Whether ``box``'s embedding costs nothing more (clicked on, cached in memory, or in the
        cache's disk store: one stat)."""
        key = box.key()
        if self.in_use(key):
            return True
        cache_key = self.predictor.key_for(self.source.identity, key)
        return cache_key in self.predictor.cache or self.predictor.cache.stored(cache_key)

    def box_for(self, x: float, y: float, grid: TileGrid | None = None) -> TileBox:
        """A new tile for point (x, y) of ``grid``'s level: a tile already computed (or being
        computed, or precomputed on disk: the half-tile lattice tiles around the point, which
        ``napari-sam-histo embed`` writes) that holds the point ``reuse_margin`` away from its inner
        borders, nearest centre first; else a tile centred on the point."""
        grid = grid or self.grid
        candidates = {b.key(): b for b in self.known.values() if b.downsample == grid.downsample}
        if self.predictor.cache.store_dir is not None:
            candidates.update((b.key(), b) for b in grid.lattice_around(x, y, 1))
        reusable = [b for b in candidates.values()
                    if grid.holds_well(b, x, y, self.reuse_margin) and self.available(b)]
        if reusable:
            return min(reusable, key=lambda b: max(abs(b.x + b.width / 2 - x), abs(b.y + b.height / 2 - y)))
        return grid.centred_at(x, y)

    def know(self, boxes) -> None:
        """Tiles whose embeddings are (being) computed: a new object's first click may reuse them."""
        for box in boxes:
            self.known[box.key()] = box

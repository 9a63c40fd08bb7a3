"""Working levels: the downsamples at which the annotator can encode tiles, and the one "auto"
picks for what is on screen.

Every pyramid level of the slide is a working level, whether or not the slide states a pixel
size. Between and beyond its levels the annotator offers **virtual levels** at powers of two
(read from the next finer pyramid level and resized, ``TileBox.virtual``), so "auto" works on a
slide with one level or with large gaps (an .svs with levels 1, 4, 16 gets 2 and 8 as well). A
virtual level is at most ``MAX_VIRTUAL_FACTOR`` times coarser than the level it is read from: a
1024-px tile then reads at most 4096² pixels. Levels coarser than the one at which the whole
slide fits one tile add nothing and are left out.

"auto": the tile should hold what the pathologist sees. For a view ``width0 x height0`` level-0
pixels wide, the wanted downsample is ``max(width0, height0) / tile_size`` (the tile spans the
view's longer side), and the working level is the one closest to it on a log scale. A region
that fits the screen then fits about one tile, and SAM sees it at about the resolution on screen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tiles import DEFAULT_TILE_SIZE, TileGrid

MAX_VIRTUAL_FACTOR = 4
MIN_LEVEL_SIDE = 64  # a level smaller than this is no use to SAM (its minimum input is 8 px)


@dataclass(frozen=True)
class WorkingLevel:
    """A downsample the annotator can work at, and where its pixels come from."""

    downsample: float  # level-0 pixels per working pixel
    read_level: int  # the pyramid level its pixels are read from
    virtual: bool  # True: read from ``read_level`` and resized

    def grid(self, source, tile_size: int = DEFAULT_TILE_SIZE) -> TileGrid:
        width, height = source.size_at(self.downsample, self.read_level)
        return TileGrid(self.read_level, width, height, tile_size, self.downsample, self.virtual)

    def describe(self, mpp=None) -> str:
        return describe_downsample(self.downsample, mpp)


def describe_downsample(downsample: float, mpp=None) -> str:
    """A downsample as a user reads it: magnification and µm/px when the pixel size is known, else
    1/downsample."""
    d = downsample
    if mpp:
        return f"~{10 / (mpp[0] * d):.1f}x ({mpp[0] * d:.2f} µm/px)"
    return "full resolution" if d == 1 else f"1/{d:.3g} of full resolution"


def working_levels(source, tile_size: int = DEFAULT_TILE_SIZE) -> list[WorkingLevel]:
    """The slide's pyramid levels plus virtual powers of two, finest first (see the module)."""
    width0, height0 = source.level_dimensions[0]
    levels = {}
    for i, d in enumerate(source.level_downsamples):
        width, height = source.level_dimensions[i]
        if i == 0 or min(width, height) >= MIN_LEVEL_SIDE:
            levels[round(d, 6)] = WorkingLevel(float(d), i, False)
    coarsest_useful = max(width0, height0) / tile_size  # the whole slide fits one tile there
    power = 1.0
    while power < coarsest_useful:
        power *= 2
        read = source.reading_level(power)
        width, height = source.size_at(power, read)
        if min(width, height) < MIN_LEVEL_SIDE:
            break
        if power / source.level_downsamples[read] > MAX_VIRTUAL_FACTOR:
            continue  # too far from the level it would be read from: a coarser real level may follow
        if not any(abs(math.log2(power / d)) < 0.25 for d in levels):  # a real level is (almost) there
            levels[power] = WorkingLevel(power, read, True)
    ordered = sorted(levels.values(), key=lambda level: level.downsample)
    beyond = [level for level in ordered if level.downsample >= coarsest_useful]
    return [level for level in ordered if level.downsample < coarsest_useful] + beyond[:1]


def auto_level(levels: list[WorkingLevel], view_width0: float, view_height0: float,
               tile_size: int = DEFAULT_TILE_SIZE) -> WorkingLevel:
    """The working level for a view ``view_width0 x view_height0`` level-0 pixels wide."""
    wanted = max(float(view_width0), float(view_height0), 1.0) / tile_size
    return min(levels, key=lambda level: (abs(math.log(level.downsample / wanted)), level.downsample))


def level_with_downsample(levels: list[WorkingLevel], downsample: float) -> WorkingLevel:
    """The working level of ``downsample`` (the closest one: a UI's value may be rounded)."""
    return min(levels, key=lambda level: abs(math.log(level.downsample / float(downsample))))

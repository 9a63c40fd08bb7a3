"""Which tiles of a slide to precompute: the ones the annotator will ask for.

The annotator opens a click's tile on the half-tile lattice when one is stored and holds the click
well inside (``object_tiles``), and every point lies in the central half of some lattice tile, so
embedding the whole lattice (origins at multiples of half a tile, edge tiles shifted inward like
``TileGrid``'s, duplicates dropped) means no click on the slide waits for the encoder.

Levels: ``"auto"`` is every working level (``working_levels``: all the view-following level can
pick), an integer is that pyramid level (what a fixed-level annotator uses), a magnification is
the working level nearest to it (the slide must state its pixel size). ``tissue_only`` drops the
tiles ``slides.tissue`` sees as glass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.tiles import DEFAULT_TILE_SIZE, TileGrid
from ..engine.working_levels import WorkingLevel, level_with_downsample, working_levels
from ..errors import InputError
from ..slides.boxes import TileBox
from ..slides.tissue import MIN_TISSUE_FRACTION, tissue_mask


@dataclass(frozen=True)
class SlidePlan:
    """One slide's tiles to embed (``tiles``), out of ``lattice`` on its chosen levels."""

    path: str
    name: str
    identity: str
    levels: tuple[WorkingLevel, ...]
    tiles: tuple[TileBox, ...]
    lattice: int  # tiles on the levels' lattices, before the tissue filter
    tissue_fraction: float | None = None  # of the overview (None: no tissue detection)

    @property
    def background(self) -> int:
        """Lattice tiles skipped as glass."""
        return self.lattice - len(self.tiles)


def lattice_tiles(grid: TileGrid) -> list[TileBox]:
    """Every tile of ``grid``'s half-tile lattice (what ``TileGrid.lattice_around`` can return)."""
    def origins(side: int) -> list[int]:
        last = max(side - grid.tile_size, 0)  # the edge tile, shifted inward
        return sorted({min(o, last) for o in range(0, last + grid.stride, grid.stride)})

    return [grid._box(x, y) for y in origins(grid.height) for x in origins(grid.width)]


def plan_levels(source, level: int | str = "auto", magnification: float | None = None,
                tile_size: int = DEFAULT_TILE_SIZE) -> list[WorkingLevel]:
    """The working levels to embed (see the module)."""
    levels = working_levels(source, tile_size)
    if magnification is not None:
        if not source.mpp:
            raise InputError(f"{source.name} does not state its pixel size, so --magnification "
                             f"{magnification:g} has no level; give --level instead.")
        if magnification <= 0:
            raise InputError(f"--magnification must be positive, not {magnification:g}.")
        return [level_with_downsample(levels, 10.0 / (source.mpp[0] * float(magnification)))]
    if level == "auto":
        return levels
    try:
        n = int(level)
    except (TypeError, ValueError):
        raise InputError(f"--level {level!r}: give 'auto' or a pyramid level number.") from None
    if not 0 <= n < source.level_count:
        raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {n} was asked for.")
    return [WorkingLevel(float(source.level_downsamples[n]), n, False)]


def plan_slide(source, path: str = "", level: int | str = "auto", magnification: float | None = None,
               tile_size: int = DEFAULT_TILE_SIZE, tissue_only: bool = False,
               min_tissue: float = MIN_TISSUE_FRACTION) -> SlidePlan:
    """The tiles to embed on ``source`` (see the module); pure: reads only the tissue overview."""
    levels = plan_levels(source, level, magnification, tile_size)
    boxes: dict[str, TileBox] = {}
    for working in levels:
        for box in lattice_tiles(working.grid(source, tile_size)):
            boxes.setdefault(box.key(), box)
    tiles, fraction = list(boxes.values()), None
    if tissue_only:
        mask = tissue_mask(source)
        tiles, fraction = [box for box in tiles if mask.keeps(box, min_tissue)], mask.tissue_fraction
    return SlidePlan(str(path), source.name, source.identity, tuple(levels), tuple(tiles), len(boxes), fraction)


def describe(plan: SlidePlan, mpp=None) -> str:
    """One line per slide for the command's output."""
    levels = ", ".join(w.describe(mpp) for w in plan.levels)
    text = f"{plan.name}: {len(plan.tiles)} tiles at {levels}"
    if plan.tissue_fraction is not None:
        share = plan.background / plan.lattice if plan.lattice else 0.0
        text += f" ({plan.background} of {plan.lattice} skipped as background, {share:.0%})"
    return text


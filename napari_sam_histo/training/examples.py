"""A training example: one accepted object on one tile (its cached embedding, the accepted mask,
the clicks that drew it). What the online adaptation, the slide refiner and a project's decoder
training all learn from."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..engine.blending import Blend
from ..engine.embedding_cache import Embedding
from .prompted_forward import ImageGeometry

# an earlier object gives an example only with at least this many pixels at its level (a few of
# SAM's 16-px embedding cells); fewer teach nothing but the cost of an encoder run
MIN_RESUMED_PIXELS = 256
RESUMED_FILL = 0.75  # with no recorded level, the finest at which the object spans at most this much of a tile


@dataclass(frozen=True)
class AdaptationExample:
    """One accepted object on one tile."""

    embedding: Embedding  # the tile's (features on the CPU)
    target: np.ndarray  # (h, w) bool at the tile's resolution: the accepted mask there
    clicks: tuple = ()  # the user's clicks on the tile, (x, y, positive) in its pixels (provenance)
    # the tile's (H, W, 3) pixels, or a function that reads them (the slide refiner's colour; the
    # adapter's thread reads them when it comes to the object), or None
    image: object = None
    # a function giving the tile's ``colour_features`` (the annotator keeps them per tile, so the
    # refiner's learning and the next object's clicks on the tile make them once), or None
    colour: object = None

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry(tuple(self.embedding.input_size), tuple(self.embedding.original_size))


def tile_examples(sessions, blended: Blend | None, edited: tuple | None = None,
                  read_tile: Callable | None = None, tile_colour: Callable | None = None) -> list:
    """``AdaptationExample``s of an accepted object: for each of ``sessions`` (the object's tiles
    with clicks) at its finest downsample, the accepted mask (``edited`` when corrected by hand:
    (top-left, mask[, downsample]); else ``blended``) cut to the tile. ``read_tile(box)``: the
    tile's pixels, read later by the adapter's thread (the slide refiner's colour);
    ``tile_colour(box)``: the tile's colour features, where the annotator keeps them."""
    if not sessions or (blended is None and edited is None):
        return []
    finest = min(s.box.downsample for s in sessions)
    if edited is not None:
        (mx, my), mask = edited[0], np.asarray(edited[1], bool)
        d = float(edited[2]) if len(edited) > 2 else (blended.downsample if blended is not None else finest)
    else:
        mx, my, mask, d = blended.x, blended.y, blended.mask(), blended.downsample
    if abs(d - finest) > 1e-6 * finest:
        return []  # the mask is held at another scale (a huge object): no exact per-tile target
    out = []
    for session in sessions:
        box = session.box
        if abs(box.downsample - finest) > 1e-6 * finest:
            continue
        target = np.zeros(box.shape, bool)
        x0, y0 = max(box.x, mx), max(box.y, my)
        x1, y1 = min(box.x + box.width, mx + mask.shape[1]), min(box.y + box.height, my + mask.shape[0])
        if x1 > x0 and y1 > y0:
            target[y0 - box.y:y1 - box.y, x0 - box.x:x1 - box.x] = mask[y0 - my:y1 - my, x0 - mx:x1 - mx]
        if target.any():
            clicks = tuple((c.x, c.y, c.positive) for c in session.clicks)
            image = functools.partial(read_tile, box) if read_tile is not None else None
            colour = functools.partial(tile_colour, box) if tile_colour is not None else None
            out.append(AdaptationExample(session.embedding, target, clicks, image, colour))
    return out


def _recorded_downsample(obj) -> float | None:
    """The downsample an object's properties record (Accept writes it), or None."""
    try:
        d = float(obj.properties.get("downsample"))
    except (TypeError, ValueError):
        return None
    return d if math.isfinite(d) and d > 0 else None


def centred_tile(obj, source, tile_size: int, level_for: Callable | None = None):
    """(tile, the object's mask in it, the clicker's first click) for an object from earlier work:
    a tile centred on it at the level its properties record (else ``level_for(obj)``, else the
    finest level where it spans at most ``RESUMED_FILL`` of a tile); or "too_large" / "too_small"
    when it does not fit a tile there."""
    from ..annotations.geometry import rasterize
    from ..engine.working_levels import level_with_downsample, working_levels
    from ..evaluation.clicker import next_click

    polygons = [p for p in obj.polygons if not p.exclude]
    if not polygons:
        return "too_small"
    x0 = min(float(p.exterior[:, 0].min()) for p in polygons)
    y0 = min(float(p.exterior[:, 1].min()) for p in polygons)
    x1 = max(float(p.exterior[:, 0].max()) for p in polygons)
    y1 = max(float(p.exterior[:, 1].max()) for p in polygons)
    levels = working_levels(source, tile_size)
    d = _recorded_downsample(obj)
    if d is None and level_for is not None:
        d = level_for(obj)
    if d is None:  # the finest level where it spans at most RESUMED_FILL of a tile
        fits = [lv for lv in levels if max(x1 - x0, y1 - y0) / lv.downsample <= RESUMED_FILL * tile_size]
        d = fits[0].downsample if fits else levels[-1].downsample
    level = level_with_downsample(levels, d)
    grid = level.grid(source, tile_size)
    d = level.downsample
    if (x1 - x0) / d > grid.tile_size or (y1 - y0) / d > grid.tile_size:
        return "too_large"
    cx = min(max((x0 + x1) / 2 / d, 0.0), grid.width - 1e-3)
    cy = min(max((y0 + y1) / 2 / d, 0.0), grid.height - 1e-3)
    box = grid.centred_at(cx, cy)
    if x0 / d < box.x - 1 or y0 / d < box.y - 1 or x1 / d > box.x + box.width + 1 or y1 / d > box.y + box.height + 1:
        return "too_large"  # (a slide smaller than a tile there: the tile cannot hold it)
    target = rasterize(obj.polygons, (box.x * d, box.y * d), d, box.shape)
    if int(target.sum()) < MIN_RESUMED_PIXELS:
        return "too_small"
    click = next_click(target, np.zeros_like(target))  # the clicker's first click: the object's deepest pixel
    return box, target, ((click.col, click.row, True),)

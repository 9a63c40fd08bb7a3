"""The one pixel convention of napari-sam-histo, and where napari differs from it.

**Level-0 coordinates** (clicks, tiles, polygons, GeoJSON, the TIFF export) are continuous, with
QuPath's corner convention: pixel (column c, row r) covers ``[c, c+1) x [r, r+1)`` and its centre
is ``(c + 0.5, r + 0.5)``. A pixel (c, r) of a level at downsample d covers level-0
``[c*d, (c+1)*d) x [r*d, (r+1)*d)``; a tile's box ``(x, y, w, h)`` at that level covers level-0
``[x*d, (x+w)*d) x [y*d, (y+h)*d)``. ``engine.tiles``, ``engine.blending``,
``annotations.geometry`` and the slide benchmark all use it.

**napari** puts a layer's pixel centres at integer data coordinates (pixel c of the image spans
``[c - 0.5, c + 0.5)``), so a napari data coordinate of the level-0 image is a level-0 coordinate
minus one half. The dock converts once, where a click or the view enters (``napari_to_level0``),
and the layers that hold level-0 coordinates (annotations, clicks, tile outlines) are translated
by half a level-0 pixel (``corner_translate``), so they store the corner convention and show on the
image. A mask of a level at downsample d whose pixel (0, 0) is level pixel (x, y) is drawn with
scale d and the translate of ``mask_translate``: its pixels then cover exactly the level-0 pixels
they stand for, and an accepted object (vectorised in the corner convention) lies where its live
mask was shown.
"""

from __future__ import annotations

HALF = 0.5


def napari_to_level0(col: float, row: float) -> tuple[float, float]:
    """A napari data position of the level-0 image (column, row) as level-0 (x, y)."""
    return float(col) + HALF, float(row) + HALF


def corner_translate(scale) -> tuple[float, ...]:
    """The translate (world units) of a layer whose data are level-0 corner coordinates, for a
    layer ``scale`` (world units per level-0 pixel)."""
    return tuple(-HALF * float(s) for s in scale)


def mask_translate(x: float, y: float, downsample: float, scale) -> tuple[float, float]:
    """The (row, column) translate in world units of a mask whose pixel (0, 0) is pixel (x, y) of
    the level at ``downsample``, drawn with scale ``downsample * scale``: its pixel centres at the
    level-0 centres ``(x + 0.5) * d`` in the corner convention, i.e. napari's ``(x + 0.5) * d - 0.5``."""
    sy, sx = (float(s) for s in scale)
    d = float(downsample)
    return (((y + HALF) * d - HALF) * sy, ((x + HALF) * d - HALF) * sx)

"""Tiles: which square of which pyramid level a click falls in, and level <-> level-0 coordinates.

All boxes are ``(x, y, width, height)`` in pixels of their own level; ``x`` is the column. A tile
grid covers the level with tiles of ``tile_size``; the last tile of a row or column is shifted
inward to end at the border, overlapping its neighbour, so every tile is full-size: SAM resizes a
tile's longest side to 1024, and a thin edge strip would make a poor, distorted input. Levels
smaller than a tile get one tile of the level's size.

Besides the fixed grid, the annotator uses tiles placed around a click (``centred_at``: the click
gets half a tile of context on every side) and tiles on the half-tile lattice (``lattice_around``:
origins at multiples of half a tile, so every point lies in the central half of one of them; these
are the tiles prefetched around the view). Every box has its own key, so the embedding cache keeps
them apart whatever the placement.

A box may be on a **virtual level** (``virtual=True``): a downsample the slide has no pyramid level
for (a slide with one level, or a gap between levels). Its pixels are read from pyramid level
``level`` (finer) and resized; its coordinates are in pixels of the virtual level (level-0 pixels
divided by ``downsample``), and its key names the downsample, not the level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..slides.boxes import TileBox

DEFAULT_TILE_SIZE = 1024


@dataclass(frozen=True)
class TileGrid:
    """Non-overlapping tiles over one level of size ``(width, height)`` (a virtual level when
    ``virtual``: see the module's docstring)."""

    level: int
    width: int
    height: int
    tile_size: int = DEFAULT_TILE_SIZE
    downsample: float = 1.0
    virtual: bool = False

    def __post_init__(self):
        if self.tile_size < 8:
            raise InputError(f"Tile size {self.tile_size} is too small; use at least 8 pixels.")
        if self.width < 1 or self.height < 1:
            raise InputError(f"Level {self.level} is {self.width}x{self.height} pixels; nothing to tile.")

    @property
    def columns(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    def tile(self, column: int, row: int) -> TileBox:
        if not (0 <= column < self.columns and 0 <= row < self.rows):
            raise InputError(f"Tile ({column}, {row}) is outside the {self.columns}x{self.rows} grid.")
        x = min(column * self.tile_size, max(self.width - self.tile_size, 0))
        y = min(row * self.tile_size, max(self.height - self.tile_size, 0))
        return TileBox(self.level, x, y, min(self.tile_size, self.width), min(self.tile_size, self.height),
                       self.downsample, self.virtual)

    def check_point(self, x: float, y: float) -> None:
        """``InputError`` unless the level point (x, y) is finite and inside the level."""
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"Point ({x}, {y}) is not a finite coordinate.")
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise InputError(f"Point ({x:.1f}, {y:.1f}) is outside level {self.level} "
                             f"({self.width}x{self.height} pixels).")

    def tile_at(self, x: float, y: float) -> TileBox:
        """The grid tile holding the level point (x, y)."""
        self.check_point(x, y)
        return self.tile(int(x // self.tile_size), int(y // self.tile_size))

    def _box(self, x: int, y: int) -> TileBox:
        """The full-size tile starting at (x, y), shifted inward to stay inside the level."""
        x = int(min(max(x, 0), max(self.width - self.tile_size, 0)))
        y = int(min(max(y, 0), max(self.height - self.tile_size, 0)))
        return TileBox(self.level, x, y, min(self.tile_size, self.width), min(self.tile_size, self.height),
                       self.downsample, self.virtual)

    def centred_at(self, x: float, y: float) -> TileBox:
        """The full-size tile centred on the level point (x, y), shifted inward at the level's borders."""
        self.check_point(x, y)
        half = self.tile_size / 2
        return self._box(math.floor(x - half + 0.5), math.floor(y - half + 0.5))

    @property
    def stride(self) -> int:
        """The step of the half-tile lattice."""
        return max(self.tile_size // 2, 1)

    def lattice_around(self, x: float, y: float, radius: int = 1) -> list[TileBox]:
        """Tiles of the half-tile lattice around the level point (x, y): first the one whose central
        half holds the point, then the rings of lattice neighbours out to ``radius`` steps (edge
        tiles shifted inward, duplicates dropped)."""
        self.check_point(x, y)
        step, quarter = self.stride, self.tile_size / 4
        kx, ky = math.floor((x - quarter) / step), math.floor((y - quarter) / step)
        boxes: dict[str, tuple[int, TileBox]] = {}
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                box = self._box((kx + dx) * step, (ky + dy) * step)
                ring = max(abs(dx), abs(dy))
                if box.key() not in boxes or ring < boxes[box.key()][0]:
                    boxes[box.key()] = (ring, box)
        return [box for _, box in sorted(boxes.values(), key=lambda item: item[0])]

    def holds_well(self, box: TileBox, x: float, y: float, margin: float) -> bool:
        """Is the level point (x, y) inside ``box`` and at least ``margin`` (a fraction of the tile's
        size) away from each of its borders that is not a border of the level? SAM sees little
        context near a tile's inner border, and an object there is cut by it."""
        if not box.contains(x, y):
            return False
        mx, my = margin * box.width, margin * box.height
        return ((box.x == 0 or x - box.x >= mx) and (box.x + box.width >= self.width or box.x + box.width - x >= mx)
                and (box.y == 0 or y - box.y >= my)
                and (box.y + box.height >= self.height or box.y + box.height - y >= my))

    def neighbours(self, tile: TileBox) -> list[TileBox]:
        """The up to 8 tiles around ``tile`` (for prefetching)."""
        column, row = -(-tile.x // self.tile_size), -(-tile.y // self.tile_size)  # shifted edge tiles round up
        return [
            self.tile(column + dc, row + dr)
            for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if (dc or dr) and 0 <= column + dc < self.columns and 0 <= row + dr < self.rows
        ]

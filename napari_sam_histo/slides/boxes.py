"""A rectangle of pixels at one pyramid level of a slide (``TileBox``): what a source reads, what
the engine tiles and encodes. It lives with the slides so that ``slides`` imports nothing of
``engine`` (one direction: ``engine`` reads slides). Coordinates: ``coordinates``.

A box may be on a **virtual level** (``virtual=True``): a downsample the slide has no pyramid level
for. Its pixels are read from pyramid level ``level`` (finer) and resized; its coordinates are in
pixels of the virtual level (level-0 pixels divided by ``downsample``), and its key names the
downsample, not the level.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileBox:
    """A rectangle at one pyramid level, and how that level scales to level 0."""

    level: int
    x: int
    y: int
    width: int
    height: int
    downsample: float = 1.0  # level-0 pixels per pixel of this level
    virtual: bool = False  # read from pyramid level ``level`` and resized to ``downsample``

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def contains(self, x: float, y: float) -> bool:
        """Is the level point (x, y) inside the box (pixel centres at integer + 0.5)?"""
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height

    def to_tile(self, x: float, y: float) -> tuple[float, float]:
        """Level coordinates -> coordinates inside the tile."""
        return x - self.x, y - self.y

    def tile_to_level0(self, x: float, y: float) -> tuple[float, float]:
        """Coordinates inside the tile -> level-0 coordinates."""
        return (self.x + x) * self.downsample, (self.y + y) * self.downsample

    @property
    def level0_box(self) -> tuple[float, float, float, float]:
        """The tile's (x, y, width, height) in level-0 pixels."""
        d = self.downsample
        return (self.x * d, self.y * d, self.width * d, self.height * d)

    def key(self) -> str:
        where = f"D{self.downsample:.6g}" if self.virtual else f"L{self.level}"
        return f"{where}:{self.x},{self.y},{self.width}x{self.height}"

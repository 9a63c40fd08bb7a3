"""The tile-source interface every image reader implements: pixels by pyramid level and box,
level 0 at full resolution, virtual levels resized from a finer one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .boxes import TileBox
from .rgb import to_rgb_uint8


@dataclass
class ImageSource:
    """Pixels by pyramid level and box. Level 0 is full resolution."""

    name: str
    identity: str
    level_dimensions: list[tuple[int, int]]  # (width, height) per level
    level_downsamples: list[float]
    mpp: tuple[float, float] | None = None  # microns per level-0 pixel (x, y)
    properties: dict = field(default_factory=dict)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, box: TileBox) -> np.ndarray:
        """The (H, W, 3) uint8 pixels of ``box`` (of a virtual level too: read from the finer
        pyramid level ``box.level`` and resized)."""
        self._check_box(box)
        if box.virtual:
            return self._read_virtual(box)
        return to_rgb_uint8(self._read(box), name=f"{self.name} {box.key()}")

    def reading_level(self, downsample: float) -> int:
        """The pyramid level a tile at ``downsample`` is read from: the coarsest one at least as fine."""
        fine_enough = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(fine_enough, key=lambda i: self.level_downsamples[i]) if fine_enough else 0

    def size_at(self, downsample: float, level: int | None = None) -> tuple[int, int]:
        """(width, height) of the (possibly virtual) level at ``downsample``, read from ``level``
        (default ``reading_level``): whole pixels of that level only, so every box fits inside it."""
        level = self.reading_level(downsample) if level is None else level
        width, height = self.level_dimensions[level]
        factor = downsample / self.level_downsamples[level]
        if abs(factor - 1) < 1e-6:
            return width, height
        return max(int(width / factor + 1e-6), 1), max(int(height / factor + 1e-6), 1)

    def _check_box(self, box: TileBox) -> None:
        if not 0 <= box.level < self.level_count:
            raise InputError(f"{self.name} has levels 0..{self.level_count - 1}; level {box.level} was asked for.")
        if box.virtual and box.downsample < self.level_downsamples[box.level] * (1 - 1e-6):
            raise InputError(f"Box {box.key()} is finer than level {box.level} of {self.name}, which it would "
                             f"be read from.")
        width, height = self.size_at(box.downsample, box.level) if box.virtual else self.level_dimensions[box.level]
        if box.x < 0 or box.y < 0 or box.x + box.width > width or box.y + box.height > height:
            where = f"downsample {box.downsample:g}" if box.virtual else f"level {box.level}"
            raise InputError(f"Box {box.key()} reaches outside {where} of {self.name} ({width}x{height}).")

    def _read_virtual(self, box: TileBox) -> np.ndarray:
        # The finer level's pixels under the box, resized with Pillow's antialiased bilinear filter,
        # whose ``box`` argument takes the exact (fractional) source rectangle.
        from PIL import Image

        factor = box.downsample / self.level_downsamples[box.level]
        x0, y0 = box.x * factor, box.y * factor
        x1, y1 = (box.x + box.width) * factor, (box.y + box.height) * factor
        width, height = self.level_dimensions[box.level]
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        ix1, iy1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        inner = TileBox(box.level, ix0, iy0, ix1 - ix0, iy1 - iy0, self.level_downsamples[box.level])
        pixels = to_rgb_uint8(self._read(inner), name=f"{self.name} {box.key()}")
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
            (box.width, box.height), Image.BILINEAR, box=(x0 - ix0, y0 - iy0, min(x1, ix1) - ix0, min(y1, iy1) - iy0))
        return np.asarray(resized)

    def _read(self, box: TileBox) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


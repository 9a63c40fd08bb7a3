"""A synthetic pyramidal slide as large as a real scan, written in seconds.

A ``size`` x ``size`` RGB pyramidal OME-TIFF (JPEG tiles, reduced levels in SubIFDs: the layout
QuPath and bioformats write, read through ``tiff_source``), mostly background with tissue-like
textures in a centred ellipse.

Encoding 30 GB of pixels with JPEG would take most of an hour on 2 cores, so the file is assembled
from a handful of tiles encoded once (a few tissue-like textures and a background tile): tifffile
writes pre-encoded tile bytes as they are. A 100k x 100k file is written in well under a minute and
is about the size of a real JPEG-compressed 40x scan.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

TISSUE_VARIANTS = 4
BACKGROUND = (242, 240, 244)


def _texture(tile: int, seed: int) -> np.ndarray:
    """An H&E-like texture (pink stroma, purple nuclei-dense patches): JPEG sizes like real tissue."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:tile, 0:tile] / tile
    density = sum(np.sin(2 * np.pi * (fx * x + fy * y) + phase)
                  for fx, fy, phase in rng.uniform((-12, -12, 0), (12, 12, 2 * np.pi), (6, 3)))
    density = (density - density.min()) / np.ptp(density) * 0.8 + rng.random((tile, tile)) * 0.2
    pink, purple = np.array([232.0, 150.0, 200.0]), np.array([105.0, 55.0, 150.0])
    return (pink * (1 - density[..., None]) + purple * density[..., None]).astype(np.uint8)


def encode_tiles(tile: int, quality: int = 80) -> list[bytes]:
    """Tissue variants then a background tile, JPEG-encoded by tifffile itself (so the bytes match the
    tags it writes for ``photometric='rgb', compression='jpeg'``: YCbCr JPEG, no shared tables)."""
    import tifffile

    tiles = [_texture(tile, seed) for seed in range(TISSUE_VARIANTS)]
    tiles.append(np.full((tile, tile, 3), BACKGROUND, np.uint8))
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for pixels in tiles:
            tif.write(pixels, tile=(tile, tile), **_tile_options(quality))
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return [data[p.dataoffsets[0]: p.dataoffsets[0] + p.databytecounts[0]] for p in tif.pages]


def _tile_options(quality: int) -> dict:
    return {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}}


def level_shapes(size: int, tile: int) -> list[tuple[int, int]]:
    """(height, width) per level, halving until a level fits in one tile."""
    levels = 1 + max(0, math.ceil(math.log2(size / tile)))
    return [(math.ceil(size / 2**i), math.ceil(size / 2**i)) for i in range(levels)]


def _tile_bytes(shape: tuple[int, int], tile: int, encoded: list[bytes]):
    """One pre-encoded tile per grid cell: tissue inside a centred ellipse (~40 % of the slide)."""
    rows, cols = math.ceil(shape[0] / tile), math.ceil(shape[1] / tile)
    for r in range(rows):
        for c in range(cols):
            u, v = (c + 0.5) / cols - 0.5, (r + 0.5) / rows - 0.5
            inside = (u / 0.42) ** 2 + (v / 0.32) ** 2 <= 1.0
            yield encoded[(r * 7 + c * 3) % TISSUE_VARIANTS] if inside else encoded[-1]


def write_synthetic_slide(path: str | Path, size: int, tile: int = 512, mpp: float = 0.25,
                          quality: int = 80) -> dict:
    """Write the synthetic OME-TIFF; returns its levels, tile count, bytes and seconds."""
    import tifffile

    check_sizes(size, tile)
    start = time.perf_counter()
    encoded = encode_tiles(tile, quality)
    shapes = level_shapes(size, tile)
    options = dict(tile=(tile, tile), dtype=np.uint8, **_tile_options(quality))
    metadata = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
    with atomic_path(path, overwrite=True) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for i, shape in enumerate(shapes):
                extra = {"subifds": len(shapes) - 1, "metadata": metadata} if i == 0 else {"subfiletype": 1}
                tif.write(_tile_bytes(shape, tile, encoded), shape=(*shape, 3), **extra, **options)
    tiles = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    return {"levels": [list(s) for s in shapes], "tiles": tiles, "bytes": Path(path).stat().st_size,
            "seconds": time.perf_counter() - start}


def check_sizes(size: int, tile: int) -> None:
    if tile < 16 or tile % 16:
        raise InputError(f"--tile {tile}: TIFF tiles must be a multiple of 16 pixels (e.g. 256, 512, 1024).")
    if size < max(256, tile):
        raise InputError(f"--size {size}: the slide must be at least {max(256, tile)} pixels (and one tile) wide.")

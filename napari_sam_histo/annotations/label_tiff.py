"""Export accepted objects as a tiled, compressed, pyramidal OME-TIFF label image.

Pixel values are class ids (0 background, 1.. in the order of ``classes``); the class names are in
the OME metadata (``Description``) and in a JSON sidecar ``<file>.classes.json``. Each pyramid
level is generated tile by tile from the vector annotations (tifffile consumes a tile iterator), so
a level-0 export of a 100k x 100k slide never holds more than one tile in memory. The image and
its sidecar go to temporary files that are renamed at the end, so a failure (a full disk: an
``InputError`` naming the file) leaves the previous export, if any, as it was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .geometry import rasterize
from .objects import AnnotatedObject

TILE = 512


def _tiles(objects: list[AnnotatedObject], class_ids: dict[str, int], shape: tuple[int, int],
           downsample: float, tile: int, dtype) -> Iterator[np.ndarray]:
    height, width = shape
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            labels = np.zeros((tile, tile), dtype)
            origin = (x * downsample, y * downsample)
            for obj in objects:  # later objects paint over earlier ones
                inside = rasterize(obj.polygons, origin, downsample, (h, w))
                labels[:h, :w][inside] = class_ids[obj.class_name]
            yield labels


def write_label_tiff(path: str | Path, objects: list[AnnotatedObject], level0_size: tuple[int, int],
                     downsample: float = 1.0, classes: list[str] | None = None, levels: int | None = None,
                     mpp: tuple[float, float] | None = None, tile: int = TILE, overwrite: bool = False) -> Path:
    """``level0_size`` is the slide's (width, height); ``downsample`` picks the export resolution."""
    import tifffile

    path = Path(path)
    classes = classes or sorted({o.class_name for o in objects})
    missing = {o.class_name for o in objects} - set(classes)
    if missing:
        raise InputError(f"Objects of class {', '.join(sorted(missing))} are not in the class list {classes}.")
    class_ids = {name: i + 1 for i, name in enumerate(classes)}
    dtype = np.uint8 if len(classes) < 255 else np.uint16
    width = max(1, math.ceil(level0_size[0] / downsample))
    height = max(1, math.ceil(level0_size[1] / downsample))
    if levels is None:  # halve until the smallest level fits in one tile
        levels = 1 + max(0, math.ceil(math.log2(max(width, height) / tile)))
    names = {"0": "background", **{str(i): n for n, i in class_ids.items()}}
    description = json.dumps({"classes": names, "downsample": downsample})
    metadata = {"axes": "YX", "Description": description}
    if mpp:
        metadata.update({"PhysicalSizeX": mpp[0] * downsample, "PhysicalSizeXUnit": "µm",
                         "PhysicalSizeY": mpp[1] * downsample, "PhysicalSizeYUnit": "µm"})
    sidecar = path.with_name(path.name + ".classes.json")
    # Both files go to temp files first and are renamed together at the end (the sidecar first): a
    # failure in either (a full disk) leaves the previous pair as it was.
    with atomic_path(path, overwrite=overwrite) as tmp, atomic_path(sidecar, overwrite=True) as tmp_classes:
        with tifffile.TiffWriter(tmp, ome=True, bigtiff=width * height > 2**31) as tif:
            options = dict(tile=(tile, tile), compression="zlib", dtype=dtype, photometric="minisblack")
            tif.write(_tiles(objects, class_ids, (height, width), downsample, tile, dtype), shape=(height, width),
                      subifds=levels - 1, metadata=metadata, **options)
            for level in range(1, levels):
                factor = 2**level
                shape = (max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)))
                tif.write(_tiles(objects, class_ids, shape, downsample * factor, tile, dtype), shape=shape,
                          subfiletype=1, **options)
        tmp_classes.write_text(json.dumps(names, indent=1))
    return path

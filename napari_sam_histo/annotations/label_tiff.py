"""Export accepted objects as a tiled, compressed, pyramidal OME-TIFF label image.

Pixel values are class ids (0 background), given by the caller (``class_ids``: the project's class
table, ``class_table.py``, so a value means the same class in every file). The OME metadata
(``Description``, JSON) holds ``classes`` (id -> name, 0 background), ``class_colours``,
``class_table`` (the table's file), ``downsample`` and ``objects``: per object id its class, class id,
model and provenance (``objects.PROVENANCE_KEYS``). The id -> name map is also in a JSON sidecar
``<file>.classes.json``. Each pyramid
level is generated tile by tile from the vector annotations (tifffile consumes a tile iterator), so
a level-0 export of a 100k x 100k slide never holds more than one tile in memory. The image and
its sidecar go to temporary files that are renamed at the end, so a failure (a full disk: an
``InputError`` naming the file) leaves the previous export, if any, as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .geometry import rasterize
from .objects import PROVENANCE_KEYS, AnnotatedObject

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


def object_metadata(objects: list[AnnotatedObject], class_ids: Mapping[str, int]) -> dict:
    """Per object id: class, class id, model and the provenance the object carries."""
    described = {}
    for obj in objects:
        entry = {"class": obj.class_name, "class_id": int(class_ids[obj.class_name])}
        if obj.model:
            entry["model"] = obj.model
        entry.update({key: str(obj.properties[key]) for key in PROVENANCE_KEYS if obj.properties.get(key)})
        described[obj.id] = entry
    return described


def write_label_tiff(path: str | Path, objects: list[AnnotatedObject], level0_size: tuple[int, int],
                     class_ids: Mapping[str, int], downsample: float = 1.0, levels: int | None = None,
                     mpp: tuple[float, float] | None = None, tile: int = TILE, overwrite: bool = False,
                     class_colours: Mapping[str, tuple[int, int, int]] | None = None,
                     class_table: str | Path | None = None) -> Path:
    """``level0_size`` is the slide's (width, height); ``downsample`` picks the export resolution.
    ``class_ids`` (name -> pixel value 1..65535, e.g. ``ClassTable.ids()``) must hold every object's
    class; ``class_colours`` and ``class_table`` (its file) go into the metadata."""
    import tifffile

    path = Path(path)
    class_ids = {str(name): int(i) for name, i in class_ids.items()}
    missing = {o.class_name for o in objects} - set(class_ids)
    if missing:
        raise InputError(f"Cannot write {path}: objects of class {', '.join(sorted(missing))} have no id in "
                         f"the class table {sorted(class_ids)}.")
    bad = {name: i for name, i in class_ids.items() if not 1 <= i <= 65535}
    if bad or len(set(class_ids.values())) < len(class_ids):
        raise InputError(f"Cannot write {path}: class ids must be distinct integers 1..65535, not {class_ids}.")
    dtype = np.uint8 if max(class_ids.values(), default=0) < 256 else np.uint16
    width = max(1, math.ceil(level0_size[0] / downsample))
    height = max(1, math.ceil(level0_size[1] / downsample))
    if levels is None:  # halve until the smallest level fits in one tile
        levels = 1 + max(0, math.ceil(math.log2(max(width, height) / tile)))
    by_id = sorted(class_ids.items(), key=lambda item: item[1])
    names = {"0": "background", **{str(i): n for n, i in by_id}}
    description = {"classes": names, "downsample": downsample}
    if class_colours:
        description["class_colours"] = {str(class_ids[n]): [int(c) for c in class_colours[n][:3]]
                                        for n, _ in by_id if n in class_colours}
    if class_table is not None:
        description["class_table"] = str(class_table)
    description["objects"] = object_metadata(objects, class_ids)
    metadata = {"axes": "YX", "Description": json.dumps(description)}
    sidecar = path.with_name(path.name + ".classes.json")
    # Both files go to temp files first and are renamed together at the end (the sidecar first): a
    # failure in either (a full disk) leaves the previous pair as it was.
    with atomic_path(path, overwrite=overwrite) as tmp, atomic_path(sidecar, overwrite=True) as tmp_classes:
        with tifffile.TiffWriter(tmp, ome=True, bigtiff=width * height > 2**31) as tif:
            options = {"tile": (tile, tile), "compression": "zlib", "dtype": dtype, "photometric": "minisblack"}
            tif.write(_tiles(objects, class_ids, (height, width), downsample, tile, dtype), shape=(height, width),
                      subifds=levels - 1, metadata=metadata, **options)
            for level in range(1, levels):
                factor = 2**level
                shape = (max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)))
                tif.write(_tiles(objects, class_ids, shape, downsample * factor, tile, dtype), shape=shape,
                          subfiletype=1, **options)
        tmp_classes.write_text(json.dumps(names, indent=1))
    return path


def read_label_tiff_metadata(path: str | Path) -> dict:
    """The metadata ``write_label_tiff`` put in a label image's OME description (``classes``,
    ``class_colours``, ``class_table``, ``downsample``, ``objects``); an ``InputError`` naming the
    file when it holds none."""
    import xml.etree.ElementTree as ET

    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise InputError(f"{path}: not a readable TIFF ({err}).") from err
    try:
        root = ET.fromstring(xml or "")
        texts = [e.text for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Description" and e.text]
        metadata = json.loads(texts[0])
    except (ET.ParseError, IndexError, ValueError) as err:
        raise InputError(f"{path}: holds no napari-sam-histo label metadata (no JSON OME description).") from err
    if not isinstance(metadata, dict) or "classes" not in metadata:
        raise InputError(f"{path}: its OME description is not napari-sam-histo label metadata.")
    return metadata

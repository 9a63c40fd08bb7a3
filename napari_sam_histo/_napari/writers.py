"""napari writers: a Shapes layer of polygons -> QuPath GeoJSON, or -> a tiled OME-TIFF label image.

Shapes data are in the layer's data coordinates, which for a slide opened by our reader are level-0
pixels as (row, col); the class of each shape is its ``class`` feature (``Tumor`` by default).
A shape whose ring walks to a hole and back along a bridge (how the Annotator dock draws holes, see
``annotations/bridged.py``) is written as a polygon with holes.
Files are written atomically; napari asks before overwriting, so these overwrite when called.
"""

from __future__ import annotations

import numpy as np

from ..annotations.bridged import from_bridged_ring
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject


def _objects(data: list, meta: dict) -> list[AnnotatedObject]:
    features = meta.get("features")
    classes = None
    if features is not None and "class" in getattr(features, "columns", []):
        classes = list(features["class"])
    objects = []
    for i, shape in enumerate(data):
        ring = np.asarray(shape, float)[:, -2:][:, ::-1]  # (row, col) -> (x, y)
        name = str(classes[i]) if classes is not None else "Tumor"
        objects.append(AnnotatedObject(from_bridged_ring(ring), name, DEFAULT_CLASSES.get(name, (255, 200, 0))))
    return objects


def write_shapes_geojson(path: str, data: list, meta: dict) -> list[str]:
    from ..annotations.geojson import write_geojson

    mpp = (meta.get("metadata") or {}).get("mpp")
    write_geojson(path, _objects(data, meta), mpp=tuple(mpp) if mpp else None, overwrite=True)
    return [path]


def write_shapes_tiff(path: str, data: list, meta: dict) -> list[str]:
    from ..annotations.label_tiff import write_label_tiff

    objects = _objects(data, meta)
    if not objects:
        return []
    extent = np.concatenate([o.polygons[0].exterior for o in objects]).max(axis=0)
    size = (meta.get("metadata") or {}).get("level0_size") or (int(np.ceil(extent[0])), int(np.ceil(extent[1])))
    write_label_tiff(path, objects, tuple(size), overwrite=True)
    return [path]

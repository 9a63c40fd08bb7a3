"""The *SAM annotations* Shapes layer is the one home of a slide's accepted objects.

Export, autosave, the object list and undo all read and write this layer, never a list of their
own, so what the user sees (shapes deleted, vertices moved, classes changed on the canvas) is what
is saved, and the dock's export equals napari's File > Save Selected Layers (both go through
``layer_data_objects``). One shape per part of an object, holes drawn through bridged rings
(``annotations/bridged.py``); the parts of an object share its ``id`` feature, the other features
(``class``, ``clicks``, ``model`` and the provenance, ``PROVENANCE_KEYS``) are read back by ``objects.group_parts``.

Each slide has its own layer (its metadata names the slide): starting on another slide renames the
old layer to ``SAM annotations (<slide>)`` and keeps it; coming back renames it back.
"""

from __future__ import annotations

import numpy as np

from ..annotations.bridged import to_bridged_ring
from ..annotations.objects import PROVENANCE_KEYS, AnnotatedObject
from ..coordinates import corner_translate

ANNOTATIONS = "SAM annotations"
FACE_ALPHA = 0.3
COLUMNS = ("class", "id", "clicks", "model", *PROVENANCE_KEYS)  # PROVENANCE_KEYS: what drew each object


def rgba(color, alpha: float = 1.0) -> np.ndarray:
    return np.array([*(c / 255 for c in color[:3]), alpha], float)


def _empty_features() -> dict:
    return {"class": np.array([], dtype=object), "id": np.array([], dtype=object),
            "clicks": np.array([], dtype=int), "model": np.array([], dtype=object),
            **{key: np.array([], dtype=object) for key in PROVENANCE_KEYS}}


def _defaults(class_name: str = "", object_id: str = "", clicks: int = 0, model: str = "", properties=None) -> dict:
    """The layer's feature values for the next shapes added (an object's, or a hand-drawn shape's)."""
    properties = properties or {}
    return {"class": class_name, "id": object_id, "clicks": int(clicks), "model": model,
            **{key: str(properties.get(key, "")) for key in PROVENANCE_KEYS}}


def layer_for(viewer, image_layer, identity: str, edge_width: float = 3.0):
    """The annotations layer of the slide shown by ``image_layer`` (named ``ANNOTATIONS``, shown),
    created if needed; another slide's layer of that name is renamed and hidden (its objects are
    not drawn over this slide), never removed."""
    name = image_layer.name
    mine = next((lay for lay in viewer.layers if lay.metadata.get("annotations_of") == identity), None)
    if ANNOTATIONS in viewer.layers and viewer.layers[ANNOTATIONS] is not mine:
        other = viewer.layers[ANNOTATIONS]
        other.name = f"{ANNOTATIONS} ({other.metadata.get('slide_name', 'other image')})"
        other.visible = False
    if mine is not None:
        mine.name, mine.visible = ANNOTATIONS, True
        return mine
    metadata = dict(image_layer.metadata, annotations_of=identity, slide_name=name)
    scale = tuple(image_layer.scale[-2:])
    layer = viewer.add_shapes(name=ANNOTATIONS, scale=scale, translate=corner_translate(scale),  # see coordinates
                              units=tuple(image_layer.units[-2:]), edge_width=edge_width, opacity=1.0,
                              features=_empty_features(), metadata=metadata)
    layer.feature_defaults = _defaults()
    return layer


def add_objects(layer, objects: list[AnnotatedObject], color_of) -> None:
    """Draw ``objects`` (one shape per part) in their class colours, ``color_of(class name)``."""
    for obj in objects:
        if not obj.polygons:
            continue
        color = color_of(obj.class_name)
        layer.feature_defaults = _defaults(obj.class_name, obj.id, obj.clicks, obj.model, obj.properties)
        rings = [to_bridged_ring(polygon)[:, ::-1] for polygon in obj.polygons]
        layer.add_polygons(rings, face_color=rgba(color, FACE_ALPHA), edge_color=rgba(color))
    # a shape drawn by hand next is an object of its own (no id), of the class chosen in the dock
    layer.feature_defaults = _defaults(objects[-1].class_name if objects else "Tumor")


def layer_data_objects(data: list, meta: dict) -> list[AnnotatedObject]:
    """Objects from a Shapes layer's data and attributes, exactly as napari's File > Save hands them
    to our writers (shape types, colours, bridged holes, parts grouped by id)."""
    from .writers import layer_data_objects as convert

    return convert(data, meta)


def layer_objects(layer) -> list[AnnotatedObject]:
    """The accepted objects as the layer holds them now (edits and deletions included)."""
    data, meta, _ = layer.as_layer_data_tuple()
    return layer_data_objects(data, meta)


def objects_in_rows(layer, rows: list[int]) -> list[AnnotatedObject]:
    """The objects (or parts) that shapes ``rows`` make: converting a few shapes, not the whole
    layer, keeps a deletion instant on a slide with many objects."""
    data, meta, _ = layer.as_layer_data_tuple()
    meta = dict(meta)
    meta["shape_type"] = [meta["shape_type"][i] for i in rows]
    for key in ("edge_color", "face_color"):
        meta[key] = np.asarray(meta[key])[rows]
    meta["features"] = meta["features"].iloc[rows].reset_index(drop=True)
    return layer_data_objects([data[i] for i in rows], meta)


def object_count(layer) -> int:
    """Objects in the layer (parts of one object counted once), without converting any shape."""
    if layer is None or not len(layer.data):
        return 0
    ids = [str(v) for v in layer.features["id"]]
    blank = [i in ("", "nan") for i in ids]
    return len({i for i, b in zip(ids, blank) if not b}) + sum(blank)


def rows_of(layer, object_id: str) -> list[int]:
    """The shapes (indices) that are the parts of object ``object_id``."""
    if not len(layer.data) or "id" not in layer.features:
        return []
    return [i for i, v in enumerate(layer.features["id"]) if str(v) == object_id]


def remove_object(layer, object_id: str) -> list[int]:
    rows = rows_of(layer, object_id)
    if rows:
        layer.remove(rows)
    return rows


def remove_parts(layer, parts: list[AnnotatedObject]) -> list[int]:
    """Remove exactly the shapes that ``add_objects(layer, parts)`` draws (redo of a deletion that
    took some parts of an object, not all)."""
    wanted = {}
    for part in parts:
        for polygon in part.polygons:
            wanted.setdefault(part.id, []).append(to_bridged_ring(polygon)[:, ::-1])
    rows = []
    for i, (shape, object_id) in enumerate(zip(layer.data, layer.features["id"] if len(layer.data) else [])):
        rings = wanted.get(str(object_id), [])
        hit = next((k for k, ring in enumerate(rings) if ring.shape == shape[:, -2:].shape
                    and np.allclose(ring, shape[:, -2:])), None)
        if hit is not None:
            rows.append(i)
            rings.pop(hit)
    if rows:
        layer.remove(rows)
    return rows


def set_class(layer, object_id: str, class_name: str, color) -> None:
    """Give one object another class (its parts follow, in the class's colour)."""
    rows = rows_of(layer, object_id)
    if not rows:
        return
    features = layer.features.copy()
    features.loc[rows, "class"] = class_name
    layer.features = features
    face, edge = np.array(layer.face_color), np.array(layer.edge_color)
    face[rows] = rgba(color, FACE_ALPHA)
    edge[rows] = rgba(color)
    layer.face_color, layer.edge_color = face, edge


def recolor(layer, color_of) -> None:
    """Every shape in its class's colour (after the user changed a class's colour)."""
    if not len(layer.data):
        return
    names = [str(n) for n in layer.features["class"]]
    layer.face_color = [rgba(color_of(n), FACE_ALPHA) for n in names]
    layer.edge_color = [rgba(color_of(n)) for n in names]

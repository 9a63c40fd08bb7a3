"""QuPath-compatible GeoJSON: export accepted objects, import them back.

A FeatureCollection of Polygon/MultiPolygon features in level-0 pixel coordinates (holes kept,
rings closed), each with ``properties.objectType = "annotation"``, ``classification {name, color}``
and ``measurements`` (area in px and, when the slide's pixel size is known, µm²) — the layout QuPath
(0.4+) writes and reads. ``offset`` subtracts a slide's ``openslide.bounds-x/y`` for viewers that
count from the scanned area rather than the full image.

Ours go in ``properties["napari-sam-histo"]``, beside QuPath's keys (``classification`` stays
exactly ``{name, color}``): ``model``, ``clicks``, the object's properties (among them the
provenance, ``objects.PROVENANCE_KEYS``) and, given ``class_ids`` (the project's class table,
``class_table.py``), ``class_id``: the class's pixel value in the label images. Reading keeps all
of them but ``class_id`` (the table, not a file, says which id a class has).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .geometry import Polygon, ring_from_coords
from .objects import AnnotatedObject

OURS = "napari-sam-histo"  # our block in a feature's properties
CLASS_ID = "class_id"


def _closed(ring: np.ndarray, offset) -> list[list[float]]:
    points = (np.asarray(ring, float) - np.asarray(offset, float)).round(3).tolist()
    return points + [points[0]] if points and points[0] != points[-1] else points


def object_to_feature(obj: AnnotatedObject, mpp=None, offset=(0.0, 0.0), class_id: int | None = None) -> dict:
    rings = [[_closed(p.exterior, offset)] + [_closed(h, offset) for h in p.holes] for p in obj.polygons]
    geometry = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                else {"type": "MultiPolygon", "coordinates": rings})
    measurements = {"Area px^2": round(obj.area_px, 2)}
    area = obj.area_um2(mpp)
    if area is not None:
        measurements["Area µm^2"] = round(area, 2)
    return {"type": "Feature", "id": obj.id, "geometry": geometry,
            "properties": feature_properties(obj, measurements, class_id)}


def feature_properties(obj: AnnotatedObject, measurements: dict, class_id: int | None = None) -> dict:
    """QuPath's properties of an annotation feature (any geometry): class, colour, measurements,
    and ours (model, clicks, provenance, the class's id when given, …)."""
    ours = {"model": obj.model, "clicks": obj.clicks, **obj.properties}
    ours.pop(CLASS_ID, None)
    if class_id is not None:
        ours[CLASS_ID] = int(class_id)
    return {
        "objectType": "annotation",
        "classification": {"name": obj.class_name, "color": [int(c) for c in obj.color]},
        "measurements": measurements,
        "isLocked": False,
        OURS: ours,
    }


def class_ids_of(objects: list[AnnotatedObject], class_ids: Mapping[str, int] | None, path) -> list[int | None]:
    """Each object's class id from ``class_ids`` (``None`` each without a mapping); an object whose
    class the mapping lacks is an ``InputError`` naming ``path``."""
    if class_ids is None:
        return [None] * len(objects)
    missing = sorted({o.class_name for o in objects} - set(class_ids))
    if missing:
        raise InputError(f"Cannot write {path}: class {', '.join(map(repr, missing))} has no id in the class table.")
    return [int(class_ids[o.class_name]) for o in objects]


def write_geojson(path: str | Path, objects: list[AnnotatedObject], mpp=None, offset=(0.0, 0.0),
                  overwrite: bool = False, class_ids: Mapping[str, int] | None = None) -> Path:
    """Write atomically; refuses to overwrite unless asked; a failure leaves the old file intact.
    ``class_ids`` (name -> id, e.g. ``ClassTable.ids()``) adds each object's ``class_id``."""
    ids = class_ids_of(objects, class_ids, path)
    collection = {"type": "FeatureCollection",
                  "features": [object_to_feature(o, mpp, offset, i) for o, i in zip(objects, ids)]}
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(collection))
    return Path(path)


def read_geojson(path: str | Path, offset=(0.0, 0.0)) -> list[AnnotatedObject]:
    """Objects from a GeoJSON file (ours or QuPath's); ``offset`` is added back."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"GeoJSON file not found: {path}") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path.name}: not valid JSON ({err}).") from err
    features = data.get("features") if isinstance(data, dict) and data.get("type") == "FeatureCollection" else (
        data if isinstance(data, list) else [data] if isinstance(data, dict) and data.get("type") == "Feature" else None)
    if features is None:
        raise InputError(f"{path.name}: expected a GeoJSON FeatureCollection, Feature or list of features.")
    shift = np.asarray(offset, float)
    objects = []
    for feature in features:
        geometry = (feature or {}).get("geometry") or {}
        kind = geometry.get("type")
        coordinates = geometry.get("coordinates")
        parts = [coordinates] if kind == "Polygon" else coordinates if kind == "MultiPolygon" else None
        if not parts:
            continue
        polygons = [Polygon(ring_from_coords(rings[0], path.name) + shift,
                            [ring_from_coords(r, path.name) + shift for r in rings[1:]])
                    for rings in parts if rings]
        props = (feature or {}).get("properties") or {}
        classification = props.get("classification") or {}
        ours = props.get(OURS) if isinstance(props.get(OURS), dict) else {}
        color = tuple(classification.get("color") or (200, 0, 0))[:3]
        extra = {k: v for k, v in ours.items() if k not in ("model", "clicks", CLASS_ID)}
        obj = AnnotatedObject(polygons, classification.get("name") or props.get("name") or "",
                              color, ours.get("model", ""), int(ours.get("clicks", 0)), extra)
        if feature.get("id") is not None:
            obj.id = str(feature["id"])
        objects.append(obj)
    return objects

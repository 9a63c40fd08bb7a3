"""Read annotation polygons: GeoJSON (QuPath's export; level-0 pixels), ASAP XML (CAMELYON) and
binary mask images (PNG, TIFF, JPEG, BMP: non-zero pixels are the annotation, one pixel a level-0 pixel).

GeoJSON: a FeatureCollection, a list of features, or one feature; Polygon and MultiPolygon
geometries (first ring the exterior, the rest holes); the class is ``properties.classification.name``
(QuPath) or ``properties.name``. ASAP XML: ``Annotation`` elements with ``Coordinate`` X/Y; in
CAMELYON's files the groups ``_0`` and ``_1`` are tumor and ``_2`` marks exclusions, which are
subtracted. ``classes`` keeps only the named classes/groups (exclusions are always kept).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import InputError
from .geometry import Polygon

EXCLUSION_GROUPS = ("_2", "Exclusion", "exclusion")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_CLASS = "Tumor"  # the class of a mask image's regions


def read_polygons(path: str | Path, classes: list[str] | None = None) -> list[Polygon]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        polygons = _read_geojson(path)
    elif suffix == ".xml":
        polygons = _read_asap(path)
    elif suffix in MASK_SUFFIXES:
        polygons = _read_mask(path)
    else:
        raise InputError(f"{path.name}: unsupported annotation format {suffix}; expected .geojson/.json, "
                         f".xml (ASAP) or a mask image ({', '.join(MASK_SUFFIXES)}).")
    if classes:
        polygons = [p for p in polygons if p.exclude or p.name in classes]
    if not any(not p.exclude for p in polygons):
        wanted = f" of class {', '.join(classes)}" if classes else ""
        raise InputError(f"{path.name}: no polygon{wanted} found.")
    return polygons


def _read_geojson(path: Path) -> list[Polygon]:
    from .geojson import read_geojson

    return [Polygon(p.exterior, p.holes, obj.class_name) for obj in read_geojson(path) for p in obj.polygons]


def _read_mask(path: Path) -> list[Polygon]:
    import imageio.v3 as iio

    from .geometry import mask_to_polygons

    try:
        mask = np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many kinds for a file it cannot decode
        raise InputError(f"{path.name}: not a readable mask image ({err}).") from err
    if mask.ndim == 3:
        mask = mask[..., 0]  # a grey mask saved as RGB
    if mask.ndim != 2:
        raise InputError(f"{path.name}: a mask image must be one 2-D plane, not shape {mask.shape}.")
    # JPEG masks carry compression noise around 0 and 255: half the range separates them
    threshold = 127 if mask.dtype == np.uint8 and path.suffix.lower() in (".jpg", ".jpeg") else 0
    return mask_to_polygons(mask > threshold, name=MASK_CLASS)


def _read_asap(path: Path) -> list[Polygon]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise InputError(f"{path.name}: not valid XML ({err}).") from err
    polygons = []
    for annotation in root.iter("Annotation"):
        points = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        try:
            ring = np.array([[float(c.get("X")), float(c.get("Y"))] for c in points])
        except (TypeError, ValueError) as err:
            raise InputError(f"{path.name}: a Coordinate lacks a numeric X or Y.") from err
        if len(ring) >= 3:
            group = annotation.get("PartOfGroup", "")
            polygons.append(Polygon(ring, [], group, exclude=group in EXCLUSION_GROUPS))
    return polygons

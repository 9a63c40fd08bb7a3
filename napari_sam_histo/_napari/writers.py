"""napari writers: a Shapes layer -> QuPath GeoJSON, or -> a tiled OME-TIFF label image.

napari calls each writer with ``layer.as_layer_data_tuple()[:2]``: ``data`` is the list of shapes,
each an (N, D) array in the layer's data coordinates, which for a slide opened by our reader are
level-0 pixels as (row, col) (the last two columns are used, so nD layers work too); ``meta`` holds
the layer's attributes, of which these are read:

* ``shape_type`` (one per shape): ``polygon`` shapes are written as they are; a polygon whose ring
  walks to a hole and back along a bridge (how the Annotator dock draws holes, see
  ``annotations/bridged.py``) is written as a polygon with holes. ``rectangle`` shapes are their
  4 corners. ``ellipse`` shapes, which napari stores as the 4 corners of their bounding box
  (possibly rotated), are written as polygons sampled along the ellipse: at least
  ``ELLIPSE_MIN_VERTICES`` vertices, more for large ellipses so that no point of the ellipse is
  more than half a pixel from the polygon. Missing ``shape_type``: every shape is a polygon.
* open shapes (``path``, ``line``, and polygons of fewer than 3 vertices) enclose no region. The
  GeoJSON writer writes them as ``LineString`` annotations, which QuPath imports as line
  (polyline) annotations, with their length; the label-image writer skips them with a warning
  that says how many were skipped (a label image holds regions only), and refuses a layer that
  has nothing else.
* ``features``: the ``class`` column is each shape's class (``Tumor`` when absent or empty).
  Shapes that share a non-empty ``id`` (the parts of one Annotator object) are one object, written
  as one (Multi)Polygon feature with that id; ``clicks``, ``model`` and the provenance are kept.
* the classification colour of each shape (RGB 0..255): a colour feature (column ``color``,
  ``colour``, ``class_color`` or ``classification_color``: a hex string or colour name, an RGB(A)
  sequence of 0..1 floats or 0..255 integers, or a packed 0xRRGGBB integer) when present and
  readable, else the shape's ``edge_color`` (RGBA floats 0..1; the Annotator dock draws each shape's
  edge in its class colour), else the class's default colour.
* ``metadata``: ``mpp`` (µm per level-0 pixel, for areas, lengths and the OME pixel size),
  ``level0_size`` ((width, height) of the slide, the label image's size) and ``class_table`` (the
  path of the project's class table, ``annotations/class_table.py``). Without ``level0_size``
  the label image is sized to hold every region shape (all their polygons; holes do not matter).
  Without ``class_table`` the table of the folder written to is used, so a class keeps its pixel
  value (and its GeoJSON ``class_id``) in every file written there; classes new to the table are
  added to it.
* features named as ``objects.PROVENANCE_KEYS`` (``decoder``, ``decoder_kind``, ``decoder_hash``,
  ``model_hash``) are each object's provenance, written per object in both formats.

Files are written atomically; napari asks before overwriting, so these overwrite when called.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..annotations.bridged import from_bridged_ring
from ..annotations.class_table import ClassTable
from ..annotations.geometry import Polygon
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject, group_parts
from ..errors import DiskFullError, InputError

DEFAULT_CLASS = "Tumor"
FALLBACK_COLOR = (255, 200, 0)
ELLIPSE_MIN_VERTICES = 64
ELLIPSE_MAX_VERTICES = 4096
COLOR_FEATURES = ("color", "colour", "class_color", "classification_color")
OPEN_SHAPES = ("path", "line")


def ellipse_ring(corners, min_vertices: int = ELLIPSE_MIN_VERTICES) -> np.ndarray:
    """Points along the ellipse inscribed in napari's 4 bounding-box ``corners`` (consecutive, any
    rotation), in the corners' own coordinate order; a 2-D (N, 2) array."""
    corners = np.asarray(corners, float)[:, -2:]
    centre = corners.mean(axis=0)
    u = (corners[1] + corners[2]) / 2 - centre  # centre of one side: one semi-axis
    v = (corners[2] + corners[3]) / 2 - centre  # centre of the next side: the other
    radius = max(float(np.linalg.norm(u)), float(np.linalg.norm(v)))
    # sagitta r * (1 - cos(pi / n)) <= 0.5 px
    needed = math.pi / math.acos(1 - 0.5 / radius) if radius > 0.5 else 0
    count = int(min(ELLIPSE_MAX_VERTICES, max(min_vertices, math.ceil(needed))))
    t = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
    return centre + np.cos(t)[:, None] * u + np.sin(t)[:, None] * v


def _xy(shape) -> np.ndarray:
    return np.asarray(shape, float)[:, -2:][:, ::-1]  # (row, col) -> (x, y)


def _column(features, names) -> list | None:
    columns = list(getattr(features, "columns", []))
    for wanted in names:
        for column in columns:
            if str(column).lower() == wanted:
                return list(features[column])
    return None


def _blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_color(value) -> tuple[int, int, int] | None:
    """An RGB 0..255 colour from a feature value, or ``None`` when it is not one."""
    if _blank(value):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        packed = int(value) & 0xFFFFFF  # QuPath's packed (A)RGB integer
        return (packed >> 16 & 255, packed >> 8 & 255, packed & 255)
    if isinstance(value, str):
        try:
            from napari.utils.colormaps.standardize_color import transform_color

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rgba = np.asarray(transform_color(value.strip()), float).reshape(-1)[:3]
        except Exception:  # noqa: BLE001 - napari raises ValueError (or warns) for an unknown colour name
            return None
        return tuple(int(round(c * 255)) for c in rgba)
    try:
        numbers = np.asarray(value, float).reshape(-1)
    except (TypeError, ValueError):
        return None
    if numbers.size not in (3, 4) or not np.all(np.isfinite(numbers)) or numbers.min() < 0:
        return None
    rgb = numbers[:3]
    if numbers.max() <= 1.0 and not np.issubdtype(np.asarray(value).dtype, np.integer):
        rgb = rgb * 255
    return tuple(int(round(min(255.0, c))) for c in rgb)


def _shape_colors(meta: dict, count: int, classes: list[str]) -> list[tuple[int, int, int]]:
    """Per shape: the colour feature, else the edge colour, else the class's default colour."""
    from_feature = _column(meta.get("features"), COLOR_FEATURES)
    edges = meta.get("edge_color")
    edges = np.asarray(edges, float) if edges is not None else None
    if edges is not None and edges.ndim == 1 and edges.size in (3, 4):
        edges = np.broadcast_to(edges, (count, edges.size))  # one colour for all
    colors = []
    for i in range(count):
        color = parse_color(from_feature[i]) if from_feature is not None and i < len(from_feature) else None
        if color is None and edges is not None and edges.ndim == 2 and i < len(edges):
            color = parse_color(edges[i])
        colors.append(color or DEFAULT_CLASSES.get(classes[i], FALLBACK_COLOR))
    return colors


def _shape_types(meta: dict, count: int) -> list[str]:
    types = meta.get("shape_type")
    if types is None:
        return ["polygon"] * count
    if isinstance(types, str):
        return [types] * count
    return [str(t) for t in types]


def _split(data: list, meta: dict) -> tuple[list[AnnotatedObject], list[AnnotatedObject]]:
    """(regions, open shapes): objects whose polygons are closed regions, and path/line shapes
    whose single 'polygon' exterior is the open polyline."""
    count = len(data)
    names = _column(meta.get("features"), ("class",))
    classes = [DEFAULT_CLASS if names is None or i >= len(names) or _blank(names[i]) else str(names[i])
               for i in range(count)]
    colors = _shape_colors(meta, count, classes)
    types = _shape_types(meta, count)
    regions, lines, rows = [], [], []
    for i, shape in enumerate(data):
        kind = types[i] if i < len(types) else "polygon"
        xy = _xy(shape)
        if kind == "ellipse":
            polygons = [Polygon(ellipse_ring(xy))]
        elif kind == "rectangle":
            polygons = [Polygon(xy)]
        elif kind in OPEN_SHAPES or len(np.unique(xy, axis=0)) < 3:
            lines.append(AnnotatedObject([Polygon(xy)], classes[i], colors[i], properties={"shape_type": kind}))
            continue
        else:
            polygons = from_bridged_ring(xy)
        regions.append(AnnotatedObject(polygons, classes[i], colors[i], properties={"shape_type": kind}))
        rows.append(i)
    return group_parts(regions, _rows(meta.get("features"), rows)), lines


def _rows(features, rows: list[int]) -> dict | None:
    """The features table's columns restricted to ``rows`` (for ``group_parts``)."""
    if features is None or not len(getattr(features, "columns", [])):
        return None
    columns = {str(c): list(features[c]) for c in features.columns}
    return {name: [values[i] for i in rows] for name, values in columns.items()}


def _objects(data: list, meta: dict) -> list[AnnotatedObject]:
    """The region shapes (polygons, rectangles, ellipses) as objects; shapes that share an ``id``
    feature (the parts of one Annotator object) are one object, written as one MultiPolygon."""
    return _split(data, meta)[0]


layer_data_objects = _objects


def _line_feature(obj: AnnotatedObject, mpp, class_id: int | None = None) -> dict:
    from ..annotations.geojson import feature_properties

    points = obj.polygons[0].exterior
    steps = np.diff(points, axis=0)
    measurements = {"Length px": round(float(np.hypot(steps[:, 0], steps[:, 1]).sum()), 2)}
    if mpp:
        measurements["Length µm"] = round(float(np.hypot(steps[:, 0] * mpp[0], steps[:, 1] * mpp[1]).sum()), 2)
    geometry = {"type": "LineString", "coordinates": np.round(points, 3).tolist()}
    return {"type": "Feature", "id": obj.id, "geometry": geometry,
            "properties": feature_properties(obj, measurements, class_id)}


def _mpp(meta: dict):
    mpp = (meta.get("metadata") or {}).get("mpp")
    return tuple(float(m) for m in mpp) if mpp else None


def class_table_for(path: str, meta: dict) -> ClassTable:
    """The class table named in the layer's metadata (``class_table``), else the table of the
    folder ``path`` is written to. A table that cannot be read is an ``InputError`` naming it."""
    named = (meta.get("metadata") or {}).get("class_table")
    return ClassTable.load(named) if named else ClassTable.for_slide(Path(path))


def _class_ids(table: ClassTable, objects: list[AnnotatedObject], path: str) -> dict[str, int]:
    """Every class's id after adding the classes of ``objects``; a full disk while adding them is
    reported for the file being written (which is then not written). A fallback of the table to the
    user cache is a warning naming the file."""
    try:
        ids = table.ids_for(objects)
    except DiskFullError as err:
        kept = f"the existing {Path(path).name} was left as it was" if Path(path).exists() else "nothing was written"
        raise DiskFullError(f"Cannot write {path}: the disk is full (no space left to add its new classes to the "
                            f"class table {table.path}). Free some space and try again; {kept}.", err.errno) from err
    if table.notice:
        warnings.warn(f"{path}: {table.notice}", UserWarning, stacklevel=3)
    return ids


def write_shapes_geojson(path: str, data: list, meta: dict) -> list[str]:
    from ..annotations.geojson import object_to_feature
    from ..atomic import atomic_path

    regions, lines = _split(data, meta)
    mpp = _mpp(meta)
    table = class_table_for(path, meta)
    ids = _class_ids(table, regions + lines, path)
    features = ([object_to_feature(o, mpp=mpp, class_id=ids[o.class_name]) for o in regions]
                + [_line_feature(o, mpp, ids[o.class_name]) for o in lines])
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return [path]


def label_image_size(objects: list[AnnotatedObject]) -> tuple[int, int]:
    """(width, height) that holds every polygon of every object (holes lie inside their exterior)."""
    exteriors = [p.exterior for o in objects for p in o.polygons if len(p.exterior)]
    if not exteriors:
        return (1, 1)
    extent = np.concatenate(exteriors).max(axis=0)
    return (max(1, int(np.ceil(extent[0]))), max(1, int(np.ceil(extent[1]))))


def write_shapes_tiff(path: str, data: list, meta: dict) -> list[str]:
    from ..annotations.label_tiff import write_label_tiff

    regions, lines = _split(data, meta)
    size = (meta.get("metadata") or {}).get("level0_size")
    if lines:
        what = f"{len(lines)} line/path shape{'s' if len(lines) > 1 else ''}"
        if not regions and not size:
            raise InputError(f"Nothing to write to {path}: the layer holds only {what}, which enclose no "
                             "region; a label image holds polygons, rectangles and ellipses.")
        warnings.warn(f"{path}: {what} skipped (open shapes enclose no region; a label image holds "
                      "polygons, rectangles and ellipses only).", UserWarning, stacklevel=2)
    if not regions and not size:
        raise InputError(f"Nothing to write to {path}: the layer has no shapes, and its metadata gives "
                         "no level0_size for an empty label image.")
    size = tuple(int(s) for s in size) if size else label_image_size(regions)
    table = class_table_for(path, meta)
    ids = _class_ids(table, regions, path)
    write_label_tiff(path, regions, size, ids, mpp=_mpp(meta), overwrite=True, class_colours=table.colours(),
                     class_table=table.path)
    return [path]

"""Existing annotations into a project's training set: a QuPath GeoJSON (ours or QuPath's own) or a
label image (our OME-TIFF export, with its class table) for a slide becomes stored objects, so a lab
with annotated slides has training data without clicking.

Each object gets one tile centred on it at the level it was accepted at (its ``downsample``
property) or else the finest working level where it spans at most ``examples.RESUMED_FILL`` of a tile (as
``examples.centred_tile`` places it), its polygons drawn into the tile, the benchmark
clicker's first click (its deepest pixel) and the tile's embedding (from the project's store when it
is there, else through the predictor, then kept in the store). Objects larger than a tile there or
with fewer than ``examples.MIN_RESUMED_PIXELS`` pixels are skipped and counted.

Everything is checked before anything is written, and bad input changes nothing: an unreadable or
empty file, objects outside the slide's bounds, a GeoJSON whose objects name another slide (the
``slide_identity`` our exports carry), a project folder that cannot be written. A failure while
writing (a full disk) removes the objects this import had added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.geometry import mask_to_polygons
from ..annotations.objects import PROVENANCE_KEYS, AnnotatedObject, signature
from ..engine.predictor import Predictor
from ..engine.tiles import DEFAULT_TILE_SIZE
from ..errors import InputError
from .examples import centred_tile
from .project_objects import SlideRef, TileExample
from .project_store import ProjectStore

GEOJSON_SUFFIXES = (".geojson", ".json")
LABEL_SUFFIXES = (".tif", ".tiff")
# the slide an object was accepted on, as the annotator records it in its properties (and so in the
# ``napari-sam-histo`` block of every GeoJSON export): an import for another slide is refused
SLIDE_IDENTITY = "slide_identity"
SLIDE_NAME = "slide"
BOUNDS_SLACK = 1.0  # level-0 pixels an outline may reach past the slide's edge (rounding of exports)
MAX_LABEL_PIXELS = 8192 * 8192  # a label image is read at its finest pyramid level at most this large
UNCLASSIFIED = "Unclassified"  # the class of an object whose file names none (QuPath's unclassified)


@dataclass(frozen=True)
class ImportReport:
    """What an import did: objects added, already in the project (same id or same region), and
    skipped because they do not fit a tile at their level or have too few pixels there."""

    file: str
    slide: str
    added: int
    already_there: int
    too_large: int
    too_small: int

    def text(self) -> str:
        skipped = self.too_large + self.too_small
        return (f"{self.file}: {self.added} object(s) of {self.slide} added to the project"
                + (f", {self.already_there} already there" if self.already_there else "")
                + (f", {skipped} skipped ({self.too_large} larger than a tile, {self.too_small} too small)"
                   if skipped else "") + ".")


def read_annotation_objects(path: str | Path) -> list[AnnotatedObject]:
    """The objects of a GeoJSON or of our label image; ``InputError`` naming the file when it is
    missing, unreadable, of another kind, or holds no object."""
    from ..annotations.geojson import read_geojson

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty (0 bytes): no annotations to import.")
        objects = read_geojson(path)
    elif suffix in LABEL_SUFFIXES:
        objects = read_label_objects(path)
    else:
        raise InputError(f"{path.name}: unsupported annotation file {suffix or '(no suffix)'}; expected a "
                         f"GeoJSON ({', '.join(GEOJSON_SUFFIXES)}) or a label image ({', '.join(LABEL_SUFFIXES)}).")
    objects = [o for o in objects if any(not p.exclude for p in o.polygons)]
    if not objects:
        raise InputError(f"{path} holds no annotated region to import.")
    return objects


def read_label_objects(path: str | Path) -> list[AnnotatedObject]:
    """The objects of a label image written by ``annotations.label_tiff``: each connected region of
    one class is an object (touching objects of one class become one). A label image larger than
    ``MAX_LABEL_PIXELS`` is read at its finest pyramid level under that size."""
    import tifffile
    from scipy import ndimage

    from ..annotations.label_tiff import read_label_tiff_metadata

    path = Path(path)
    metadata = read_label_tiff_metadata(path)
    try:
        names = {int(i): str(n) for i, n in metadata["classes"].items() if int(i) != 0}
        colours = {int(i): tuple(int(c) for c in rgb[:3]) for i, rgb in (metadata.get("class_colours") or {}).items()}
        downsample0 = float(metadata.get("downsample", 1.0))
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            width0 = levels[0].shape[-1]
            level = next((lv for lv in levels if lv.shape[-1] * lv.shape[-2] <= MAX_LABEL_PIXELS), levels[-1])
            labels = level.asarray()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, tifffile.TiffFileError) as err:
        raise InputError(f"{path}: cannot read the label image ({type(err).__name__}: {err}).") from err
    if labels.ndim != 2:
        raise InputError(f"{path}: a label image has one channel; this one has shape {labels.shape}.")
    d = downsample0 * width0 / labels.shape[1]
    unknown = sorted(set(np.unique(labels).tolist()) - set(names) - {0})
    if unknown:
        raise InputError(f"{path}: pixel value(s) {unknown} are not in its class table ({names}).")
    # the slides its objects were accepted on, where the export recorded them (see ``check_objects_fit``)
    described = [v for v in (metadata.get("objects") or {}).values() if isinstance(v, dict)]
    recorded = sorted({str(v[SLIDE_IDENTITY]) for v in described if v.get(SLIDE_IDENTITY)})
    slide_names = sorted({str(v[SLIDE_NAME]) for v in described if v.get(SLIDE_NAME)})
    made_on = {SLIDE_IDENTITY: recorded[0], SLIDE_NAME: ", ".join(slide_names)} if len(recorded) == 1 else {}
    objects = []
    for class_id, name in sorted(names.items()):
        regions, _ = ndimage.label(labels == class_id)  # 4-connected, as the vectoriser separates parts
        for i, found in enumerate(ndimage.find_objects(regions), start=1):
            if found is None:
                continue
            rows, cols = found
            crop = regions[rows, cols] == i
            polygons = mask_to_polygons(crop, origin=(cols.start * d, rows.start * d), downsample=d, name=name)
            if polygons:
                box = (cols.start, rows.start, cols.stop, rows.stop)
                objects.append(AnnotatedObject(polygons, name, colours.get(class_id, (200, 0, 0)),
                                               properties={**made_on, **({"downsample": d} if d > 1 else {})},
                                               id=f"{path.name}:{name}:{box[0]},{box[1]},{box[2]},{box[3]}"))
    return objects


def check_objects_fit(objects: list[AnnotatedObject], source, path: str | Path) -> None:
    """``InputError`` naming ``path`` when its objects were made for another slide than ``source``
    (the slide identity they record), or reach outside its level-0 bounds."""
    def made_elsewhere(properties) -> bool:
        """A slide's own content hash (OpenSlide's quickhash, "slide:...") survives copying and
        renaming, so a different one is another slide; a file identity (path, size, time) changes
        when a slide is copied, so it counts only together with another file name."""
        recorded = str(properties.get(SLIDE_IDENTITY) or "")
        if not recorded or recorded == source.identity:
            return False
        if recorded.startswith("slide:") and source.identity.startswith("slide:"):
            return True
        return str(properties.get(SLIDE_NAME) or source.name) != source.name

    others = {str(o.properties[SLIDE_IDENTITY]) for o in objects if made_elsewhere(o.properties)}
    if others:
        named = sorted({str(o.properties.get(SLIDE_NAME) or "") for o in objects} - {""})
        made_for = f"slide {', '.join(named)}" if named else f"another slide (identity {sorted(others)[0]})"
        raise InputError(f"{path} was made for {made_for}, not for {source.name}; choose the annotations of "
                         f"{source.name}. Nothing was imported.")
    width, height = source.level_dimensions[0]
    outside = []
    for obj in objects:
        for polygon in obj.polygons:
            x0, y0, x1, y1 = polygon.bounds()
            if x0 < -BOUNDS_SLACK or y0 < -BOUNDS_SLACK or x1 > width + BOUNDS_SLACK or y1 > height + BOUNDS_SLACK:
                outside.append((obj, (x0, y0, x1, y1)))
                break
    if outside:
        obj, (x0, y0, x1, y1) = outside[0]
        raise InputError(f"{path}: {len(outside)} of its {len(objects)} object(s) reach outside {source.name} "
                         f"({width}x{height} level-0 pixels), e.g. object {obj.id} spans x {x0:.0f}..{x1:.0f}, "
                         f"y {y0:.0f}..{y1:.0f}; the file was made for another slide or another scan. Nothing was "
                         "imported.")


def import_annotations(store: ProjectStore, slide_path: str | Path, annotations_path: str | Path,
                       predictor: Predictor, tile_size: int = DEFAULT_TILE_SIZE,
                       classes: list[str] | None = None) -> ImportReport:
    """Add the objects of ``annotations_path`` (GeoJSON or our label image) for the slide at
    ``slide_path`` to ``store`` (see the module); ``classes`` keeps only those. Objects already in
    the project (same id, or same class and region) are not added again. Encodes the tiles whose
    embedding the store lacks (seconds each on a CPU)."""
    from ..slides.reader import open_image

    annotations_path = Path(annotations_path)
    source = open_image(slide_path)
    try:
        objects = read_annotation_objects(annotations_path)
        check_objects_fit(objects, source, annotations_path)
        if classes is not None:
            objects = [o for o in objects if (o.class_name or UNCLASSIFIED) in set(classes)]
            if not objects:
                raise InputError(f"{annotations_path} holds no object of class {', '.join(classes)}.")
        store.check_writable()  # (after the checks: a refused file does not even create the store)
        slide = SlideRef.of(source, slide_path)
        fresh, already = [], 0
        for obj in objects:
            if store.find(slide.identity, obj.id, signature(obj)) is not None:
                already += 1
            else:
                fresh.append(obj)
        counts = {"too_large": 0, "too_small": 0}
        added = []
        try:
            for obj in fresh:
                placed = centred_tile(obj, source, tile_size)
                if isinstance(placed, str):
                    counts[placed] += 1
                    continue
                box, target, clicks = placed
                key = predictor.key_for(slide.identity, box.key())
                embedding = store.embedding(key) or predictor.embedding_for(source, box)
                decoder = {k: str(obj.properties[k]) for k in PROVENANCE_KEYS if obj.properties.get(k)}
                stored = store.add_object(obj.id, obj.class_name or UNCLASSIFIED, slide,
                                          [TileExample(box, embedding, target, clicks)], predictor, "imported",
                                          decoder, signature(obj))
                if stored is not None:
                    added.append(stored)
        except BaseException:
            for stored in added:  # a failure half-way (a full disk): the import leaves nothing behind
                store.remove_object(stored.object_id, slide.identity)
            raise
        return ImportReport(str(annotations_path), source.name, len(added), already, counts["too_large"],
                            counts["too_small"])
    finally:
        source.close()

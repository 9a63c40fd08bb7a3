"""An accepted annotation: its region in level-0 pixels and what QuPath and the user need to know."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from .geometry import Polygon, polygon_area

DEFAULT_CLASSES = {"Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Necrosis": (50, 50, 50),
                   "Other": (255, 200, 0)}


# What drew an object, kept in ``AnnotatedObject.properties`` (from ``Predictor.provenance.properties()``),
# in the annotations layer's features and in every export: the decoder as the user chose it ("sam",
# "md", "modified", "residual" or a checkpoint's file name), its architecture, the short sha256 of its
# file (empty for SAM's own decoder) and the short hash of the model's weights; and the slide it was
# drawn on: its file name and identity (``slides.identity``), so a file imported for another slide
# can be refused.
PROVENANCE_KEYS = ("decoder", "decoder_kind", "decoder_hash", "model_hash", "slide", "slide_identity")


# Colours given to new classes, in order (QuPath-like, distinct from the defaults).
CLASS_PALETTE = [(0, 120, 255), (160, 0, 200), (0, 180, 180), (255, 120, 0), (120, 80, 40), (255, 0, 160),
                 (0, 150, 0), (120, 120, 255)]


def next_class_color(used) -> tuple[int, int, int]:
    """A colour for a new class: the first palette colour not in ``used``."""
    used = {tuple(c) for c in used}
    return next((c for c in CLASS_PALETTE if c not in used), CLASS_PALETTE[len(used) % len(CLASS_PALETTE)])


@dataclass
class AnnotatedObject:
    polygons: list[Polygon]  # level-0 pixels; several when the region has separate parts
    class_name: str = "Tumor"
    color: tuple[int, int, int] = (200, 0, 0)
    model: str = ""
    clicks: int = 0
    properties: dict = field(default_factory=dict)
    # Stable across export and import (the GeoJSON feature id): re-importing a file that is already
    # loaded is recognised, and the shapes of one object (its parts) are grouped by it in napari.
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def area_px(self) -> float:
        """Area in level-0 pixels."""
        return sum(polygon_area(p) for p in self.polygons)

    def area_um2(self, mpp: tuple[float, float] | None) -> float | None:
        return self.area_px * mpp[0] * mpp[1] if mpp else None


def group_parts(parts: list[AnnotatedObject], features=None) -> list[AnnotatedObject]:
    """One object per id from per-shape objects (a napari Shapes layer holds one shape per part).

    ``features`` is the layer's table (columns ``id``, ``clicks``, ``model`` and the
    ``PROVENANCE_KEYS``; any may be missing): shapes that share a non-empty id are the parts of one
    object, in first-seen order; a shape without an id (drawn by hand) is an object of its own."""

    def column(name):
        if features is None or name not in getattr(features, "columns", features):
            return [None] * len(parts)
        return list(features[name])

    def given(value) -> bool:
        return value is not None and str(value) not in ("", "nan")

    ids, clicks, models = (column(n) for n in ("id", "clicks", "model"))
    provenance = {key: column(key) for key in PROVENANCE_KEYS}
    grouped: dict[str, AnnotatedObject] = {}
    for i, (part, key, n, model) in enumerate(zip(parts, ids, clicks, models)):
        key = str(key) if given(key) else str(uuid.uuid4())
        if key in grouped:
            grouped[key].polygons.extend(part.polygons)
            continue
        obj = AnnotatedObject(list(part.polygons), part.class_name, tuple(part.color), part.model, part.clicks,
                              dict(part.properties), id=key)
        if given(model):
            obj.model = str(model)
        if given(n):
            obj.clicks = int(n)
        for name, values in provenance.items():
            if given(values[i]):
                obj.properties[name] = str(values[i])
        grouped[key] = obj
    return list(grouped.values())


def signature(obj: AnnotatedObject) -> tuple:
    """What makes two objects the same region whatever their ids (a file exported by another tool
    and imported twice): class, area and bounds to the pixel."""
    import numpy as np

    bounds = np.array([p.bounds() for p in obj.polygons]) if obj.polygons else np.zeros((1, 4))
    return (obj.class_name, round(obj.area_px), *np.round([bounds[:, 0].min(), bounds[:, 1].min(),
                                                            bounds[:, 2].max(), bounds[:, 3].max()]).astype(int))


def not_yet_in(objects: list[AnnotatedObject], here: list[AnnotatedObject]) -> list[AnnotatedObject]:
    """The ``objects`` that are not already ``here`` (same id, or same ``signature``): importing a
    file twice adds nothing."""
    ids, same = {o.id for o in here}, {signature(o) for o in here}
    return [o for o in objects if o.id not in ids and signature(o) not in same]

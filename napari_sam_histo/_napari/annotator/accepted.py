"""The accepted objects: they live only in the slide's *SAM annotations* Shapes layer
(``annotation_layer``), so export, the object list, undo and autosave read what the user sees
(deleted shapes and moved vertices included). The dock's own edits are told apart from the user's
(``changing``); a shape deleted on the canvas is undoable, one drawn by hand gets an id of its own,
and every change refreshes the object list (once per burst, converted off the GUI thread) and asks
for an autosave."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
from qtpy.QtCore import QTimer

from .. import annotation_layer
from .history import DeleteStep, History


class AcceptedObjects:
    def __init__(self, threads, history: History, object_list, mpp: Callable[[], object],
                 changed: Callable[[], None], parent=None) -> None:
        """``object_list``: the ``ObjectList`` showing them; ``mpp()``: the slide's µm per pixel (or
        None); ``changed()``: after every change (the dock autosaves)."""
        self.threads, self.history, self.list, self.mpp, self.on_changed = threads, history, object_list, mpp, changed
        self.layer = None  # the slide's annotations (Shapes) layer
        self._internal = 0  # >0 while the dock itself changes the layer
        self._generation = 0  # of list refreshes: an older one that comes back late is dropped
        self._refresh_timer = QTimer(parent)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)

    @contextmanager
    def changing(self):
        """While the dock itself edits the layer, its events are not taken for the user's edits."""
        self._internal += 1
        try:
            yield
        finally:
            self._internal -= 1

    def connect(self, connect: Callable) -> None:
        """Hear the layer's edits (``connect(emitter, callback)``: the dock's, taken back on stop)."""
        connect(self.layer.events.data, self._on_data)
        connect(self.layer.events.features, lambda event=None: self.changed())

    def _on_data(self, event) -> None:
        action = str(event.action)
        if action == "removing" and not self._internal:  # deleted on the canvas: undoable
            removed = annotation_layer.objects_in_rows(self.layer, list(event.data_indices))
            if removed:
                self.history.record(DeleteStep(removed))
        if action == "added" and not self._internal:
            give_ids(self.layer)
        if action in ("added", "removed", "changed"):
            self.changed()

    def changed(self) -> None:
        """The objects changed: refresh the list (once per burst) and autosave soon."""
        self._refresh_timer.start()
        self.on_changed()

    def objects(self):
        """The accepted objects, as the layer holds them now."""
        return annotation_layer.layer_objects(self.layer) if self.layer is not None else []

    def count_text(self) -> str:
        n = annotation_layer.object_count(self.layer)
        return f"{n} object{'s' * (n != 1)} on this slide."

    def add(self, objects, color: Callable) -> None:
        with self.changing():
            annotation_layer.add_objects(self.layer, objects, color)

    def remove(self, object_id: str) -> None:
        with self.changing():
            annotation_layer.remove_object(self.layer, object_id)

    def remove_parts(self, objects) -> None:
        """Only the shapes of ``objects`` (one part of an object may have gone, not all)."""
        with self.changing():
            annotation_layer.remove_parts(self.layer, objects)

    def by_id(self, ids) -> list:
        """The objects with these ids, as the layer holds them."""
        rows = sorted({r for object_id in ids for r in annotation_layer.rows_of(self.layer, object_id)})
        return annotation_layer.objects_in_rows(self.layer, rows) if rows else []

    def extent(self, object_id: str) -> tuple[float, float, float, float] | None:
        """The level-0 box (x0, y0, x1, y1) of one object, or None."""
        if self.layer is None:
            return None
        obj = next(iter(self.by_id([object_id])), None)
        if obj is None or not obj.polygons:
            return None
        bounds = np.array([p.bounds() for p in obj.polygons])
        (x0, y0), (x1, y1) = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
        return x0, y0, x1, y1

    def refresh(self) -> None:
        """Show the layer's objects in the list; the shapes are converted on a worker thread (a
        slide with hundreds of objects would stall napari otherwise)."""
        self._generation += 1
        generation, mpp = self._generation, self.mpp()
        if self.layer is None:
            self.list.set_objects([], mpp)
            return
        data, meta, _ = self.layer.as_layer_data_tuple()

        def show(objects):
            if generation == self._generation:
                self.list.set_objects(objects, mpp)

        self.threads.run(lambda: annotation_layer.layer_data_objects(data, meta), show, lambda err: None)

    def set_class(self, ids, name: str, color) -> None:
        with self.changing():
            for object_id in ids:
                annotation_layer.set_class(self.layer, object_id, name, color)
        self.changed()

    def recolor(self, color: Callable) -> None:
        """Every object in its class's colour (``color(name)``)."""
        if self.layer is not None:
            with self.changing():
                annotation_layer.recolor(self.layer, color)
            self.changed()

    def teach(self, annotator) -> None:
        """``annotator``'s slide learning takes the objects in the layer (resumed, imported, or
        accepted before this Start) as examples, in the background (objects it has are left out);
        nothing while learning is off (switching it on later hands them over then)."""
        if (annotator is None or annotator.adaptation is None or not annotator.adaptation.enabled
                or self.layer is None or not len(self.layer.data)):
            return
        objects = self.snapshot()
        adaptation, source, tile = annotator.adaptation, annotator.source, annotator.tile_size
        self.threads.run(lambda: adaptation.add_resumed(objects(), source, tile, tile_colour=annotator.tile_colour),
                         lambda result: None, lambda err: None)

    def snapshot(self):
        """A function that converts the layer as it is now (copied here, on the GUI thread) into
        objects, to run off it; None without a layer."""
        if self.layer is None:
            return None
        data, meta, _ = self.layer.as_layer_data_tuple()
        return lambda: annotation_layer.layer_data_objects(data, meta)


def give_ids(layer) -> None:
    """A shape drawn by hand with napari's tools is an object of its own, with a stable id (the
    list's Delete and Set class find it by that id)."""
    if not len(layer.data) or "id" not in layer.features:
        return
    features = layer.features  # napari's own table: changed in place, no event
    for i, value in enumerate(list(features["id"])):
        if str(value) in ("", "nan"):
            features.loc[i, "id"] = str(uuid.uuid4())

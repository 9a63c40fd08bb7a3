"""Objects in and out of the annotations layer: export as GeoJSON or a label OME-TIFF (napari's
own writers, on a worker thread), import GeoJSON (read and compared off the GUI thread, objects
already here left out), and drawing loaded objects (imported, resumed) a few per event-loop turn so
napari stays responsive. File names are suggested beside the slide, named after it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ...annotations.objects import not_yet_in
from ...errors import InputError, SamHistoError
from .. import annotation_layer
from ..slide_layer_data import slide_stem
from ..wording import count
from .accepted import AcceptedObjects
from .classes import ClassPicker
from .session import NOT_STARTED

STEP_BUDGET_S = 0.04  # GUI-thread work per event-loop turn when drawing many objects


def with_suffix(path: str, suffix: str) -> str:
    """The user's file name, with ``suffix`` added when they typed no extension."""
    return path if Path(path).suffix else path + suffix


class Transfer:
    def __init__(self, parent, threads, accepted: AcceptedObjects, classes: ClassPicker, slide: Callable[[], tuple],
                 started: Callable[[], bool], say: Callable[[str], None], on_error: Callable[[Exception], None],
                 learn: Callable[[], None]) -> None:
        """``parent``: the file dialogs'; ``slide()``: (the image layer, the open source), either may
        be None before a Start; ``started()``: an annotator runs; ``learn()``: hand the layer's objects
        to the slide's learning (after an import)."""
        self.parent, self.threads, self.accepted, self.classes, self.slide = parent, threads, accepted, classes, slide
        self.started = started
        self.say, self.on_error, self.learn = say, on_error, learn

    # -- export ------------------------------------------------------------------------------------
    def _layer_tuple(self):
        source = self.slide()[1]
        data, meta, _ = self.accepted.layer.as_layer_data_tuple()
        meta = dict(meta)
        meta["metadata"] = dict(meta.get("metadata") or {}, mpp=source.mpp, level0_size=tuple(source.level_dimensions[0]))
        table = self.classes.table
        if table is not None and table.path is not None:
            meta["metadata"]["class_table"] = str(table.path)
        return data, meta

    def export_geojson(self, path: str | Path, overwrite: bool = False) -> Future:
        """Write the layer as napari's File > Save Selected Layers does (same writer); returns a future."""
        from ..writers import write_shapes_geojson

        return self._export(write_shapes_geojson, path, overwrite, "GeoJSON")

    def export_tiff(self, path: str | Path, overwrite: bool = False) -> Future:
        from ..writers import write_shapes_tiff

        return self._export(write_shapes_tiff, path, overwrite, "TIFF", empty_ok=False)

    def _export(self, writer, path, overwrite: bool, kind: str, empty_ok: bool = True) -> Future:
        """The layer as it is now, written by ``writer`` on a worker thread."""
        from ...atomic import refuse_existing

        if not overwrite:
            refuse_existing(path)
        data, meta = self._layer_tuple()
        if not data and not empty_ok:
            raise InputError("There is no accepted object to export yet.")

        def exported(result) -> None:
            n = annotation_layer.object_count(self.accepted.layer)
            self.say(f"Exported {n} object{'s' * (n != 1)} as {kind}: {result}")

        return self.threads.run(lambda: Path(writer(str(path), data, meta)[0]), exported, self.on_error)

    # -- import ------------------------------------------------------------------------------------
    def import_geojson(self, path: str | Path) -> Future:
        """Add the objects of a GeoJSON file (those already in the layer, same id or same class and
        region, are not added again). Returns a future of the number added."""
        from ...annotations.geojson import read_geojson

        added: Future = Future()
        here = self.accepted.snapshot()

        def load():
            objects = read_geojson(path)
            return objects, not_yet_in(objects, here())

        def loaded(result):
            objects, new = result
            again = len(objects) - len(new)
            self.add_loaded(new, f"Imported {count(len(new), 'object')} from {Path(path).name}"
                            + (f" ({again} already here, not added again)." if again else "."), added,
                            then=lambda n: self.learn() if n else None)

        def failed(err):
            self.on_error(err)
            added.set_result(0)

        self.threads.run(load, loaded, failed)
        return added

    def add_loaded(self, objects, message: str, done: Future | None = None, then=None, failed=None) -> None:
        """Draw loaded objects into the current annotations layer, about ``STEP_BUDGET_S`` of work
        per event-loop turn; ``done`` (a future) gets the count, ``then(count)`` runs at the end."""
        layer = self.accepted.layer  # the objects belong to this slide, even if another is started meanwhile
        for obj in objects:  # an imported class keeps its file's colour
            self.classes.keep(obj.class_name, obj.color)

        def steps():
            start = time.perf_counter()
            for obj in objects:
                with self.accepted.changing():
                    annotation_layer.add_objects(layer, [obj], self.classes.color)
                if time.perf_counter() - start > STEP_BUDGET_S:
                    yield
                    start = time.perf_counter()
            if layer is self.accepted.layer:
                self.accepted.changed()
                self.say(f"{message} {self.accepted.count_text()}")
            if done is not None:
                done.set_result(len(objects))
            if then is not None:
                then(len(objects))

        def error(err):
            self.on_error(err)
            if done is not None and not done.done():
                done.set_result(0)
            if failed is not None:
                failed(err)

        self.threads.steps(steps(), error)

    # -- the buttons -------------------------------------------------------------------------------
    def suggested(self, suffix: str) -> str:
        """A file beside the slide named after it: the slide's name without its extensions
        (``slide.ome.tif`` -> ``slide``), then ``suffix``."""
        image_layer, source = self.slide()
        path = image_layer.metadata.get("slide_path") if image_layer is not None else None
        name = slide_stem(Path(path).name if path else (source.name if source else "annotations"))
        return str((Path(path).parent if path else Path.home()) / f"{name}{suffix}")

    # the dock's buttons: ask for the file, then do it
    def export_geojson_clicked(self) -> None:
        self._file_action(self.export_geojson, True, "Export GeoJSON", "GeoJSON (*.geojson)", ".geojson")

    def export_tiff_clicked(self) -> None:  # "-labels": the slide itself may be an .ome.tif of the same name
        self._file_action(self.export_tiff, True, "Export TIFF", "OME-TIFF (*.ome.tif)", ".ome.tif", "-labels.ome.tif")

    def import_clicked(self) -> None:
        self._file_action(self.import_geojson, False, "Import GeoJSON", "GeoJSON (*.geojson *.json)", ".geojson")

    def _file_action(self, action, save: bool, caption: str, filter_: str, suffix: str, name: str | None = None) -> None:
        """Ask for a file and run ``action`` on it (once annotating has started)."""
        if not self.started() or self.accepted.layer is None:
            self.say(NOT_STARTED)
            return
        if save:
            path, _ = QFileDialog.getSaveFileName(self.parent, caption, self.suggested(name or suffix), filter_)
        else:
            path, _ = QFileDialog.getOpenFileName(self.parent, caption, str(Path(self.suggested(suffix)).parent),
                                                  filter_)
        if not path:
            return
        try:
            action(with_suffix(path, suffix), overwrite=True) if save else action(path)
            self.say(f"{caption}: {Path(path).name}…")
        except (SamHistoError, OSError) as err:
            self.on_error(err)

"""The "Annotator" dock: click on a slide, refine, accept, export. Thin over ``engine.annotator``.

Left click = positive point, right click or Alt + left click = negative point; Enter accepts the
object with the chosen class, Ctrl-Z / Ctrl-Shift-Z undo and redo clicks. The model loads and every
click runs on worker threads (clicks made while a tile's embedding computes wait for it), and the
result is drawn from the GUI thread when it arrives, so napari never blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ..annotations.objects import DEFAULT_CLASSES
from ..errors import SamHistoError

CLICKS, CURRENT, ANNOTATIONS = "SAM clicks", "SAM current object", "SAM annotations"


class _Relay(QObject):
    """Carries a worker thread's result to the GUI thread (a queued Qt signal)."""

    done = Signal(object, object)  # (callback, result or exception)


class AnnotatorDock(QWidget):
    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.annotator = None
        self.image_layer = None
        self.pending = 0
        self._relay = _Relay()
        self._relay.done.connect(lambda callback, result: callback(result))
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)  # a model name or a checkpoint path
        self._fill_models()
        self.decoder_combo = QComboBox()
        self.decoder_combo.setEditable(True)
        self.decoder_combo.addItems(["sam", "modified"])
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.level_combo = QComboBox()
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setValue(1024)
        self.class_combo = QComboBox()
        self.class_combo.setEditable(True)
        self.class_combo.addItems(list(DEFAULT_CLASSES))
        for label, widget in (("Image", self.layer_combo), ("Model", self.model_combo),
                              ("Decoder", self.decoder_combo), ("Device", self.device_combo),
                              ("Working level", self.level_combo), ("Tile size", self.tile_spin),
                              ("Class", self.class_combo)):
            form.addRow(label, widget)
        layout.addLayout(form)
        self.start_button = QPushButton("Start annotating")
        self.start_button.clicked.connect(self.start)
        layout.addWidget(self.start_button)
        row = QHBoxLayout()
        buttons = {}
        for name, slot in (("Undo", self.undo), ("Redo", self.redo), ("Clear", self.clear), ("Accept", self.accept)):
            buttons[name] = QPushButton(name)
            buttons[name].clicked.connect(slot)
            row.addWidget(buttons[name])
        layout.addLayout(row)
        row = QHBoxLayout()
        for name, slot in (("Export GeoJSON…", self._export_geojson_clicked), ("Export TIFF…", self._export_tiff_clicked),
                           ("Import GeoJSON…", self._import_clicked)):
            button = QPushButton(name)
            button.clicked.connect(slot)
            row.addWidget(button)
        layout.addLayout(row)
        self.status = QLabel("Open a slide, pick it above and press Start. Left click: positive; right "
                             "or Alt+click: negative; Enter: accept; Ctrl-Z / Ctrl-Shift-Z: undo / redo.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch()
        self.layer_combo.currentTextChanged.connect(self._fill_levels)
        self.viewer.layers.events.inserted.connect(lambda e: self._fill_layers())
        self.viewer.layers.events.removed.connect(lambda e: self._fill_layers())
        self._fill_layers()

    # -- form ---------------------------------------------------------------------------------
    def _fill_models(self) -> None:
        from ..models.registry import list_models
        from ..models.weights import find_weights

        names = []
        for spec in list_models():
            try:
                if find_weights(spec.weights) is not None:
                    names.append(spec.name)
            except SamHistoError:
                pass
        self.model_combo.addItems(names or ["vit_t"])

    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _fill_layers(self) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        self.layer_combo.addItems([layer.name for layer in self._image_layers()])
        if current:
            self.layer_combo.setCurrentText(current)

    def _fill_levels(self, name: str) -> None:
        self.level_combo.clear()
        layer = next((layer for layer in self._image_layers() if layer.name == name), None)
        if layer is None:
            return
        downsamples = layer.metadata.get("level_downsamples") or [1.0]
        mpp = layer.metadata.get("mpp")
        for i, d in enumerate(downsamples):
            text = f"level {i}: 1/{d:g}"
            if mpp:
                text += f" ({mpp[0] * d:.2f} µm/px, ~{10 / (mpp[0] * d):.1f}x)"
            self.level_combo.addItem(text, i)

    def _source_for(self, layer):
        from ..slides.reader import from_array, open_image

        path = layer.metadata.get("slide_path")
        if path:
            return open_image(path)
        data = layer.data[0] if layer.multiscale else layer.data
        return from_array(np.asarray(data), layer.name)

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        self.image_layer = next((lay for lay in self._image_layers() if lay.name == self.layer_combo.currentText()), None)
        if self.image_layer is None:
            self.status.setText("⚠ Open an image or slide first.")
            return
        level = self.level_combo.currentData() or 0
        model, decoder, device, tile = (self.model_combo.currentText(), self.decoder_combo.currentText(),
                                        self.device_combo.currentText(), self.tile_spin.value())
        layer = self.image_layer

        def build():
            from ..engine.annotator import Annotator
            from ..engine.predictor import Predictor
            from ..models.registry import load_model

            predictor = Predictor(load_model(model, device), decoder)
            return Annotator(predictor, self._source_for(layer), level=level, tile_size=tile)

        self.status.setText(f"Loading {model}…")
        self.start_button.setEnabled(False)
        self._run_in_thread(build, self._started)

    def _started(self, result) -> None:
        self.start_button.setEnabled(True)
        if isinstance(result, Exception):
            self._show_error(result)
            return
        if self.annotator is not None:
            self.annotator.close()
        self.annotator = result
        scale = tuple(self.image_layer.scale[-2:])
        units = {"units": tuple(self.image_layer.units[-2:])}  # the same physical units as the slide
        for name in (CLICKS, CURRENT):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        if ANNOTATIONS not in self.viewer.layers:
            self.viewer.add_shapes(name=ANNOTATIONS, scale=scale, edge_width=2, face_color=[1, 0, 0, 0.15], **units,
                                   features={"class": np.array([], dtype=object)},
                                   metadata=dict(self.image_layer.metadata))
        self.viewer.add_labels(np.zeros((1, 1), np.uint8), name=CURRENT, scale=scale, opacity=0.5, **units)
        points = self.viewer.add_points(np.zeros((0, 2)), name=CLICKS, scale=scale, size=12, border_color="white",
                                        **units)
        points.canvas_size_limits = (10, 40)  # visible at any zoom of a large slide
        self.viewer.layers.selection.active = self.image_layer
        if self._on_mouse not in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.viewer.bind_key("Enter", lambda v: self.accept(), overwrite=True)
        self.viewer.bind_key("Control-Z", lambda v: self.undo(), overwrite=True)
        self.viewer.bind_key("Control-Shift-Z", lambda v: self.redo(), overwrite=True)
        level = self.annotator.level
        self.status.setText(f"{self.annotator.predictor.model.name} ready on level {level} "
                            f"({self.annotator.grid.columns}x{self.annotator.grid.rows} tiles). Click on the image.")

    # -- clicks -------------------------------------------------------------------------------
    def _on_mouse(self, viewer, event):
        if self.annotator is None or event.type != "mouse_press":
            return
        row, col = self.image_layer.world_to_data(event.position)[-2:]
        negative = event.button == 2 or "Alt" in {str(m) for m in event.modifiers}
        if event.button in (1, 2):
            self.add_click(float(col), float(row), positive=not negative)

    def add_click(self, x0: float, y0: float, positive: bool = True) -> None:
        """A click at level-0 pixel (x0, y0); the mask is drawn when the decoder has run."""
        if self.annotator is None:
            return
        try:
            self.annotator.tile_for(x0, y0)
        except SamHistoError as err:
            self._show_error(err)
            return
        points = self.viewer.layers[CLICKS]
        points.current_face_color = "green" if positive else "red"
        points.add([[y0, x0]])  # drawn at once; the mask follows when the decoder has run
        self.pending += 1
        self.status.setText("Computing the tile's embedding…" if self.pending == 1 else f"{self.pending} clicks queued…")
        self._relay_future(self.annotator.submit_click(x0, y0, positive), self._show_current)

    def undo(self) -> None:
        self._queue(self._show_current, "undo")

    def redo(self) -> None:
        self._queue(self._show_current, "redo")

    def clear(self) -> None:
        self._queue(self._show_current, "clear")

    def accept(self) -> None:
        self._queue(self._accepted, "accept", self.class_combo.currentText().strip() or "Tumor")

    def _queue(self, callback, action: str, *args) -> None:
        """Run an annotator action behind the queued clicks; ``callback`` gets its result."""
        if self.annotator is not None:
            self.pending += 1
            self._relay_future(self.annotator.submit(action, *args), callback)

    def _show_current(self, result) -> None:
        self.pending = max(self.pending - 1, 0)
        if isinstance(result, Exception):
            self._show_error(result)
        clicks = self.annotator.clicks
        points = self.viewer.layers[CLICKS]
        points.data = np.array([[y, x] for x, y, _ in clicks], float).reshape(-1, 2)
        points.face_color = ["green" if c[2] else "red" for c in clicks] or "green"
        current = self.viewer.layers[CURRENT]
        combined = self.annotator.current_mask()
        if combined is None:
            current.data = np.zeros((1, 1), np.uint8)
        else:
            (x, y), mask = combined
            d = self.annotator.grid.downsample
            sy, sx = self.image_layer.scale[-2:]
            current.data = mask.astype(np.uint8)
            current.scale = (d * sy, d * sx)
            current.translate = (y * d * sy, x * d * sx)
        if not self.pending and not isinstance(result, Exception):
            self.status.setText(f"{len(clicks)} clicks. Enter accepts as {self.class_combo.currentText()}.")

    def _accepted(self, obj) -> None:
        self._show_current(None if not isinstance(obj, Exception) else obj)
        if obj is None or isinstance(obj, Exception):
            return
        self._add_shapes([obj])
        mpp = self.annotator.source.mpp
        area = f"{obj.area_um2(mpp):.0f} µm²" if mpp else f"{obj.area_px:.0f} px²"
        self.status.setText(f"Accepted {obj.class_name}: {area}, {obj.clicks} clicks "
                            f"({len(self.annotator.objects)} objects).")

    def _add_shapes(self, objects) -> None:
        shapes = self.viewer.layers[ANNOTATIONS]
        for obj in objects:
            shapes.feature_defaults = {"class": obj.class_name}  # the class of the shapes added next
            shapes.add_polygons([polygon.exterior[:, ::-1] for polygon in obj.polygons])

    # -- export / import ----------------------------------------------------------------------
    def export_geojson(self, path: str | Path, overwrite: bool = False) -> Path:
        from ..annotations.geojson import write_geojson

        return write_geojson(path, self.annotator.objects, mpp=self.annotator.source.mpp, overwrite=overwrite)

    def export_tiff(self, path: str | Path, overwrite: bool = False) -> Path:
        from ..annotations.label_tiff import write_label_tiff

        source = self.annotator.source
        return write_label_tiff(path, self.annotator.objects, source.level_dimensions[0],
                                downsample=self.annotator.grid.downsample, mpp=source.mpp, overwrite=overwrite)

    def import_geojson(self, path: str | Path) -> int:
        from ..annotations.geojson import read_geojson

        objects = read_geojson(path)
        self.annotator.objects.extend(objects)
        self._add_shapes(objects)
        return len(objects)

    def _file_action(self, action, dialog, caption, filter_):
        if self.annotator is None:
            self.status.setText("⚠ Start annotating first.")
            return
        path, _ = dialog(self, caption, "", filter_)
        if not path:
            return
        try:
            result = action(path) if dialog is QFileDialog.getOpenFileName else action(path, overwrite=True)
            self.status.setText(f"{caption}: {result}")
        except (SamHistoError, OSError) as err:
            self._show_error(err)

    def _export_geojson_clicked(self):
        self._file_action(self.export_geojson, QFileDialog.getSaveFileName, "Export GeoJSON", "GeoJSON (*.geojson)")

    def _export_tiff_clicked(self):
        self._file_action(self.export_tiff, QFileDialog.getSaveFileName, "Export TIFF", "OME-TIFF (*.ome.tif)")

    def _import_clicked(self):
        self._file_action(self.import_geojson, QFileDialog.getOpenFileName, "Import GeoJSON", "GeoJSON (*.geojson *.json)")

    # -- plumbing -----------------------------------------------------------------------------
    def _relay_future(self, future, callback) -> None:
        def done(f):
            try:
                result = f.result()
            except Exception as err:  # shown in the dock, never raised into Qt
                result = err
            self._relay.done.emit(callback, result)

        future.add_done_callback(done)

    def _run_in_thread(self, function, callback) -> None:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=1)
        self._relay_future(executor.submit(function), callback)
        executor.shutdown(wait=False)

    def _show_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")

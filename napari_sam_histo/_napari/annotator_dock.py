"""The "Annotator" dock: click on a slide, refine, accept, export. Thin over ``engine.annotator``.

Bindings (checked against napari's defaults, see ``_bind_keys`` and ``_on_mouse``):

* A click is a press and release without moving (more than a few screen pixels) while the active
  layer is in pan/zoom mode: dragging still pans (left), zooms (right) and draws napari's Alt zoom
  box, and a layer being edited by hand (drawing shapes, painting labels) keeps its clicks.
* Left click: positive point. Right click, or Alt + left click: negative point. The second click of
  a quick double click counts too (vispy reports it only as a double click), and napari's
  double-click zoom is switched off while annotating so two clicks in the same place do not zoom.
* Enter: accept; Ctrl-Z / Ctrl-Shift-Z (Cmd on macOS): undo / redo. They are bound on the viewer
  and again on the dock's own *SAM current object* (Labels) and *SAM clicks* (Points) layers,
  because napari asks the active layer first and Labels binds Ctrl-Z / Ctrl-Shift-Z (paint undo)
  and Enter (finish polygon) itself. On a Shapes layer Enter stays napari's "finish drawing". Keys
  reach napari when the canvas has the focus; the dock's action buttons take no focus, so it
  stays there.

The model loads, clicks run and tiles are prefetched on worker threads; results are drawn from the
GUI thread when they arrive, so napari never blocks. While an embedding is computed a napari
progress bar (indeterminate) shows in the activity area. When no click is pending and the view has
rested for ``PREFETCH_DELAY_MS``, the tiles around the view's centre and those where the current
object is cut by a tile border are prefetched; a click always goes first (``engine.annotator``
explains how). Embeddings can also be kept on disk, one folder per slide (``embedding_store``).
The tiles of the object being clicked are outlined in the *SAM tiles* layer, so a straight cut in
a mask is seen to be a tile border: a positive click beyond it continues the object there.

Accepted objects go to the *SAM annotations* Shapes layer, coloured by class, holes included:
napari (0.5+) draws a polygon with holes when each hole is reached along a bridge edge walked there
and back (``annotations/bridged.py``), so one shape per part keeps the fill out of the holes, the
outline traces them, and the layer stays the editable vector layer the writers export. (Painting
holes over a filled exterior would hide the tissue; a Labels layer would have to be re-rendered
per view and level of a large slide.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox, QColorDialog, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox,
    QVBoxLayout, QWidget,
)

from ..annotations.objects import DEFAULT_CLASSES
from ..errors import SamHistoError

CLICKS, CURRENT, ANNOTATIONS, TILES = "SAM clicks", "SAM current object", "SAM annotations", "SAM tiles"
CLICK_SLOP = 4  # screen pixels a press may move and still be a click, not a drag
PREFETCH_DELAY_MS = 600  # the view must rest this long before tiles around it are prefetched
FACE_ALPHA = 0.3
BINDINGS = ("Left click: positive point · right click or Alt+click: negative · Enter: accept · "
            "Ctrl-Z / Ctrl-Shift-Z: undo / redo (clicks act while the active layer is in pan/zoom mode)")


def embedding_store(identity: str) -> Path:
    """The folder that keeps one slide's embeddings on disk (all models; the keys tell them apart)."""
    import hashlib

    from ..models.weights import cache_dir

    return cache_dir() / "embeddings" / hashlib.sha256(identity.encode()).hexdigest()[:16]


class _Relay(QObject):
    """Carries a worker thread's result to the GUI thread (a queued Qt signal)."""

    done = Signal(object, object)  # (callback, result or exception)


def _rgba(color, alpha: float = 1.0) -> np.ndarray:
    return np.array([*(c / 255 for c in color[:3]), alpha], float)


class AnnotatorDock(QWidget):
    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.annotator = None
        self.image_layer = None
        self.pending = 0
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)
        self.progress_log: list[tuple[str, str, str]] = []  # (started|finished, tile key, click|prefetch)
        self.prefetch_future = None
        self._progress: dict[str, object] = {}  # tile key -> open napari progress
        self._pressing = False
        self._double_click_zoom = None  # napari's, removed while annotating
        self._relay = _Relay()
        self._relay.done.connect(lambda callback, result: callback(result))
        self._prefetch_timer = QTimer(self)
        self._prefetch_timer.setSingleShot(True)
        self._prefetch_timer.setInterval(PREFETCH_DELAY_MS)
        self._prefetch_timer.timeout.connect(self.prefetch_now)
        self._build()
        self.layer_combo.currentTextChanged.connect(self._fill_levels)
        self.viewer.layers.events.inserted.connect(lambda e: self._fill_layers())
        self.viewer.layers.events.removed.connect(lambda e: self._fill_layers())
        self._fill_layers()

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)  # a model name or a checkpoint path
        self._fill_models()
        self.decoder_combo = QComboBox()
        self.decoder_combo.setEditable(True)
        self.decoder_combo.addItems(["sam", "modified", "md"])  # md: fine-tuned SAM decoder
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.level_combo = QComboBox()
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setValue(1024)
        self.prefetch_check = QCheckBox("prefetch tiles around the view when idle")
        self.prefetch_check.setChecked(True)
        self.disk_check = QCheckBox("keep embeddings on disk (per slide)")
        self.disk_check.setToolTip("reopening the slide later skips the encoder; stored in the user cache folder")
        self.class_combo = QComboBox()
        self.class_combo.setEditable(True)  # type a new class and press Enter to add it
        self.class_combo.addItems(list(self.classes))
        self.color_button = QPushButton()
        self.color_button.setFixedWidth(32)
        self.color_button.setToolTip("the class's colour (click to change)")
        self.color_button.clicked.connect(self._pick_color)
        self.class_combo.currentTextChanged.connect(lambda text: self._show_class_color())
        class_row = QHBoxLayout()
        class_row.addWidget(self.class_combo, 1)
        class_row.addWidget(self.color_button)
        for label, widget in (("Image", self.layer_combo), ("Model", self.model_combo),
                              ("Decoder", self.decoder_combo), ("Device", self.device_combo),
                              ("Working level", self.level_combo), ("Tile size", self.tile_spin),
                              ("", self.prefetch_check), ("", self.disk_check), ("Class", class_row)):
            form.addRow(label, widget)
        layout.addLayout(form)
        self.start_button = QPushButton("Start annotating")
        self.start_button.clicked.connect(self.start)
        layout.addWidget(self.start_button)
        row = QHBoxLayout()
        self.buttons = {}
        for name, slot, tip in (("Undo", self.undo, "Ctrl-Z"), ("Redo", self.redo, "Ctrl-Shift-Z"),
                                ("Clear", self.clear, "drop the object being clicked"),
                                ("Accept", self.accept, "Enter")):
            button = QPushButton(name)
            button.setToolTip(tip)
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep going to the canvas
            button.clicked.connect(slot)
            row.addWidget(button)
            self.buttons[name] = button
        layout.addLayout(row)
        row = QHBoxLayout()
        for name, slot in (("Export GeoJSON…", self._export_geojson_clicked), ("Export TIFF…", self._export_tiff_clicked),
                           ("Import GeoJSON…", self._import_clicked)):
            button = QPushButton(name)
            button.clicked.connect(slot)
            row.addWidget(button)
        layout.addLayout(row)
        self.status = QLabel("Open a slide, pick it above and press Start.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        help_label = QLabel(BINDINGS)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: gray")
        layout.addWidget(help_label)
        layout.addStretch()
        self._show_class_color()

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

    # -- classes and colours ------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return self.class_combo.currentText().strip() or "Tumor"

    def class_color(self, name: str) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class to the list if it is new."""
        from ..engine.annotator import next_class_color

        if name not in self.classes:
            self.classes[name] = next_class_color(self.classes.values())
        if self.class_combo.findText(name) < 0:
            self.class_combo.addItem(name)
        return self.classes[name]

    def _show_class_color(self) -> None:
        from ..engine.annotator import next_class_color

        name = self.class_name
        color = self.classes.get(name) or next_class_color(self.classes.values())
        self.color_button.setStyleSheet("background-color: rgb({}, {}, {})".format(*color))
        if self.annotator is not None and CURRENT in self.viewer.layers:
            self._color_current(color)

    def _pick_color(self) -> None:
        name = self.class_name
        initial = QColor(*self.class_color(name))
        chosen = QColorDialog.getColor(initial, self, f"Colour of {name}")
        if chosen.isValid():
            self.set_class_color(name, (chosen.red(), chosen.green(), chosen.blue()))

    def set_class_color(self, name: str, color) -> None:
        """Give class ``name`` a colour: the accepted objects of that class and their shapes follow."""
        self.classes[name] = tuple(int(c) for c in color[:3])
        self.class_color(name)
        if self.annotator is not None:
            for obj in self.annotator.objects:
                if obj.class_name == name:
                    obj.color = self.classes[name]
        self._recolor_annotations()
        self._show_class_color()

    def _recolor_annotations(self) -> None:
        if ANNOTATIONS not in self.viewer.layers:
            return
        shapes = self.viewer.layers[ANNOTATIONS]
        if not len(shapes.data):
            return
        names = [str(n) for n in shapes.features["class"]]
        shapes.face_color = [_rgba(self.class_color(n), FACE_ALPHA) for n in names]
        shapes.edge_color = [_rgba(self.class_color(n)) for n in names]

    def _color_current(self, color) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        self.viewer.layers[CURRENT].colormap = DirectLabelColormap(
            color_dict={None: np.zeros(4), 0: np.zeros(4), 1: _rgba(color)})

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        self.image_layer = next((lay for lay in self._image_layers() if lay.name == self.layer_combo.currentText()), None)
        if self.image_layer is None:
            self.status.setText("⚠ Open an image or slide first.")
            return
        level = self.level_combo.currentData() or 0
        model, decoder, device, tile = (self.model_combo.currentText(), self.decoder_combo.currentText(),
                                        self.device_combo.currentText(), self.tile_spin.value())
        layer, on_disk = self.image_layer, self.disk_check.isChecked()

        def build():
            from ..engine.annotator import Annotator
            from ..engine.embedding_cache import EmbeddingCache
            from ..engine.predictor import Predictor
            from ..models.registry import load_model

            source = self._source_for(layer)
            cache = EmbeddingCache(store_dir=embedding_store(source.identity)) if on_disk else None
            predictor = Predictor(load_model(model, device), decoder, cache=cache)
            return Annotator(predictor, source, level=level, tile_size=tile)

        self.status.setText(f"Loading {model}…")
        self.start_button.setEnabled(False)
        self._run_in_thread(build, self._started)

    def _started(self, result) -> None:
        self.start_button.setEnabled(True)
        if isinstance(result, Exception):
            self._show_error(result)
            return
        self.shutdown()
        self.annotator = result
        self.pending = 0
        self.annotator.classes = self.classes  # one list of classes and colours, shared
        self.annotator.listeners.append(self._embedding_event)
        scale = tuple(self.image_layer.scale[-2:])
        units = {"units": tuple(self.image_layer.units[-2:])}  # the same physical units as the slide
        d = self.annotator.grid.downsample
        for name in (CLICKS, CURRENT, TILES):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        if ANNOTATIONS not in self.viewer.layers:
            self.viewer.add_shapes(name=ANNOTATIONS, scale=scale, edge_width=3 * d, opacity=1.0, **units,
                                   features={"class": np.array([], dtype=object)},
                                   metadata=dict(self.image_layer.metadata))
        current = self.viewer.add_labels(np.zeros((1, 1), np.uint8), name=CURRENT, scale=scale, opacity=0.5,
                                         **units)
        self._color_current(self.class_color(self.class_name))
        self.viewer.add_shapes(name=TILES, scale=scale, edge_width=2 * d, opacity=0.7, **units)
        points = self.viewer.add_points(np.zeros((0, 2)), name=CLICKS, scale=scale, size=12, border_color="white",
                                        **units)
        points.canvas_size_limits = (10, 40)  # visible at any zoom of a large slide
        self.viewer.layers.selection.active = self.image_layer
        if self._on_mouse not in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        if self._on_double_click not in self.viewer.mouse_double_click_callbacks:
            self.viewer.mouse_double_click_callbacks.append(self._on_double_click)
        from napari.components._viewer_mouse_bindings import double_click_to_zoom

        if double_click_to_zoom in self.viewer.mouse_double_click_callbacks:
            self.viewer.mouse_double_click_callbacks.remove(double_click_to_zoom)
            self._double_click_zoom = double_click_to_zoom
        self._bind_keys([self.viewer, current, points])
        self.viewer.camera.events.center.connect(self._schedule_prefetch)
        self.viewer.camera.events.zoom.connect(self._schedule_prefetch)
        level = self.annotator.level
        self.status.setText(f"{self.annotator.predictor.model.name} ready on level {level} "
                            f"({self.annotator.grid.width}x{self.annotator.grid.height} px, "
                            f"{self.annotator.grid.tile_size} px tiles). Click on the image.")
        self._schedule_prefetch()

    def _bind_keys(self, targets) -> None:
        from app_model.types import KeyCode, KeyMod

        bindings = ((KeyCode.Enter, lambda _: self.accept()),
                    (KeyMod.CtrlCmd | KeyCode.KeyZ, lambda _: self.undo()),
                    (KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ, lambda _: self.redo()))
        for target in targets:
            for key, action in bindings:
                target.bind_key(key, action, overwrite=True)

    def shutdown(self, wait: bool = False) -> None:
        """Stop the annotator's threads and close its progress bars (the dock can start again)."""
        self._prefetch_timer.stop()
        if self.annotator is not None:
            self.annotator.close(wait=wait)
            self.annotator = None
        for bar in self._progress.values():
            bar.close()
        self._progress.clear()
        for event in (self.viewer.camera.events.center, self.viewer.camera.events.zoom):
            try:
                event.disconnect(self._schedule_prefetch)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._double_click_zoom is not None:
            if self._double_click_zoom not in self.viewer.mouse_double_click_callbacks:
                self.viewer.mouse_double_click_callbacks.append(self._double_click_zoom)
            self._double_click_zoom = None

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.shutdown()
        super().closeEvent(event)

    # -- clicks -------------------------------------------------------------------------------
    def _clicks_enabled(self) -> bool:
        active = self.viewer.layers.selection.active
        return self.annotator is not None and (active is None or getattr(active, "mode", "pan_zoom") == "pan_zoom")

    @staticmethod
    def _negative(event) -> bool:
        return event.button == 2 or "Alt" in {str(m) for m in event.modifiers}

    def _on_mouse(self, viewer, event):
        """A press and release without moving is a click; anything else is napari's drag."""
        if event.type != "mouse_press" or event.button not in (1, 2) or not self._clicks_enabled():
            return
        press, position, negative = np.asarray(event.pos, float), tuple(event.position), self._negative(event)
        self._pressing = True
        try:
            yield
            while event.type == "mouse_move":
                if np.abs(np.asarray(event.pos, float) - press).max() > CLICK_SLOP:
                    return  # a drag: pan, zoom or napari's Alt zoom box
                yield
        finally:
            self._pressing = False
        if np.abs(np.asarray(event.pos, float) - press).max() <= CLICK_SLOP:
            self._click_at(position, negative)

    def _on_double_click(self, viewer, event):
        """vispy reports the second press of a double click only as a double click."""
        if self._pressing or event.button not in (1, 2) or not self._clicks_enabled():
            return
        self._click_at(tuple(event.position), self._negative(event))

    def _click_at(self, world_position, negative: bool) -> None:
        row, col = self.image_layer.world_to_data(world_position)[-2:]
        self.add_click(float(col), float(row), positive=not negative)

    def add_click(self, x0: float, y0: float, positive: bool = True) -> None:
        """A click at level-0 pixel (x0, y0); the mask is drawn when the decoder has run."""
        if self.annotator is None:
            return
        try:
            self.annotator.check_click(x0, y0)
        except SamHistoError as err:
            self._show_error(err)
            return
        self._prefetch_timer.stop()
        points = self.viewer.layers[CLICKS]
        points.selected_data = set()  # napari recolours the selected points with the current colour
        points.current_face_color = "green" if positive else "red"
        points.add([[y0, x0]])  # drawn at once; the mask follows when the decoder has run
        self.pending += 1
        self.status.setText("Clicked…" if self.pending == 1 else f"{self.pending} clicks queued…")
        self._relay_action(self.annotator.submit_click(x0, y0, positive), self._show_state)

    def undo(self) -> None:
        self._queue(self._show_state, "undo")

    def redo(self) -> None:
        self._queue(self._show_state, "redo")

    def clear(self) -> None:
        self._queue(self._show_state, "clear")

    def accept(self) -> None:
        name = self.class_name
        self.class_color(name)  # a class typed in is added to the list with a colour
        self._queue(self._accepted, "accept", name)

    def _queue(self, callback, action: str, *args) -> None:
        """Run an annotator action behind the queued clicks; ``callback`` gets its result."""
        if self.annotator is not None:
            self._prefetch_timer.stop()
            self.pending += 1
            self._relay_action(self.annotator.submit(action, *args), callback)

    def _relay_action(self, future, callback) -> None:
        """Relay an action's result, unless the dock was restarted with another annotator since."""
        annotator = self.annotator
        self._relay_future(future, lambda result: callback(result) if self.annotator is annotator else None)

    def _show_state(self, state) -> None:
        """Draw an ``AnnotatorState`` (or show an error) when an action has run."""
        from ..engine.annotator import EMPTY_STATE, AnnotatorState

        self.pending = max(self.pending - 1, 0)
        if self.annotator is None:
            return
        if isinstance(state, Exception):
            self._show_error(state)
            state = self.annotator.state()  # what is there now (the failed action changed nothing)
        if not isinstance(state, AnnotatorState):
            state = EMPTY_STATE
        points = self.viewer.layers[CLICKS]
        points.selected_data = set()
        points.data = np.array([[y, x] for x, y, _ in state.clicks], float).reshape(-1, 2)
        points.face_color = ["green" if c[2] else "red" for c in state.clicks] or "green"
        current = self.viewer.layers[CURRENT]
        d = self.annotator.grid.downsample
        if state.mask is None:
            current.data = np.zeros((1, 1), np.uint8)
        else:
            (x, y), mask = state.mask
            sy, sx = self.image_layer.scale[-2:]
            current.data = mask.astype(np.uint8)
            current.scale = (d * sy, d * sx)
            current.translate = (y * d * sy, x * d * sx)
        tiles = self.viewer.layers[TILES]
        tiles.data = []
        if state.boxes:
            tiles.add_rectangles([np.array([[b.y, b.x], [b.y + b.height, b.x + b.width]], float) * d
                                  for b in state.boxes], edge_color="yellow", face_color="transparent")
        if not self.pending and not isinstance(state, Exception):
            if state.clicks:
                clicks, tiles = len(state.clicks), len(state.boxes)
                self.status.setText(f"{clicks} click{'s' * (clicks != 1)} on {tiles} tile{'s' * (tiles != 1)}. "
                                    f"Enter accepts as {self.class_name}.")
            self._schedule_prefetch()

    def _accepted(self, obj) -> None:
        from ..engine.annotator import EMPTY_STATE

        self._show_state(obj if isinstance(obj, Exception) else EMPTY_STATE)
        if obj is None or isinstance(obj, Exception):
            return
        self._add_shapes([obj])
        mpp = self.annotator.source.mpp
        area = f"{obj.area_um2(mpp):.0f} µm²" if mpp else f"{obj.area_px:.0f} px²"
        self.status.setText(f"Accepted {obj.class_name}: {area}, {obj.clicks} clicks, {obj.model} "
                            f"({len(self.annotator.objects)} objects).")

    def _add_shapes(self, objects) -> None:
        from ..annotations.bridged import to_bridged_ring

        shapes = self.viewer.layers[ANNOTATIONS]
        for obj in objects:
            color = self.class_color(obj.class_name) if obj.class_name in self.classes else None
            if color is None:  # an imported class keeps its file's colour
                self.classes[obj.class_name] = tuple(obj.color)
                color = self.class_color(obj.class_name)
            shapes.feature_defaults = {"class": obj.class_name}  # the class of the shapes added next
            rings = [to_bridged_ring(polygon)[:, ::-1] for polygon in obj.polygons]
            shapes.add_polygons(rings, face_color=_rgba(color, FACE_ALPHA), edge_color=_rgba(color))

    # -- progress and prefetching -------------------------------------------------------------
    def _embedding_event(self, event: str, box, purpose: str) -> None:
        """From a worker thread: an embedding started or finished; drawn on the GUI thread."""
        self._relay.done.emit(self._show_embedding, (event, box.key(), purpose))

    def _show_embedding(self, item) -> None:
        from napari.utils import progress

        event, key, purpose = item
        self.progress_log.append(item)
        if event == "started":
            what = "prefetching" if purpose == "prefetch" else "computing"
            self._progress[key] = progress(total=0, desc=f"SAM: {what} the embedding of tile {key}")
            if purpose == "click":
                self.status.setText(f"Computing the embedding of tile {key}…")
        else:
            bar = self._progress.pop(key, None)
            if bar is not None:
                bar.close()

    def _schedule_prefetch(self, *_) -> None:
        if self.annotator is not None and self.prefetch_check.isChecked():
            self._prefetch_timer.start()

    def prefetch_now(self) -> None:
        """Prefetch the tiles around the view's centre (and where the current object is cut) in the
        background; a later call supersedes this one. Only while no click is pending."""
        if self.annotator is None or self.pending or not self.prefetch_check.isChecked():
            return
        center = self.viewer.camera.center[-2:]
        row, col = self.image_layer.world_to_data(center)[-2:]
        self.prefetch_future = self.annotator.prefetch_around(float(col), float(row))

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
            try:
                self._relay.done.emit(callback, result)
            except RuntimeError:  # the dock was deleted meanwhile
                pass

        future.add_done_callback(done)

    def _run_in_thread(self, function, callback) -> None:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=1)
        self._relay_future(executor.submit(function), callback)
        executor.shutdown(wait=False)

    def _show_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")

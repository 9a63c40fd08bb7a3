"""The "Annotator" dock: click on a slide, refine, correct by hand, accept, export. Thin over
``engine.annotator`` (clicks, tiles, embeddings) and ``annotation_layer`` (the accepted objects).

Bindings (checked against napari's defaults, see ``_bind_keys`` and ``_on_mouse``):

* A click is a press and release without moving (more than a few screen pixels) while the active
  layer is in pan/zoom mode: dragging still pans (left), zooms (right) and draws napari's Alt zoom
  box, and a layer being edited by hand (drawing shapes, painting labels) keeps its clicks.
* Left click: positive point. Right click, or Alt + left click: negative point. The second click of
  a quick double click counts too (vispy reports it only as a double click), and napari's
  double-click zoom is switched off while annotating so two clicks in the same place do not zoom.
* Enter: accept; Escape: cancel the object being clicked (as in QuPath); Ctrl-Z / Ctrl-Shift-Z
  (Cmd on macOS): undo / redo of clicks, Accept, Clear/Escape and deleting objects. They are bound
  on the viewer and again on the dock's own *SAM current object* (Labels) and *SAM clicks* (Points)
  layers, because napari asks the active layer first and Labels binds Ctrl-Z / Ctrl-Shift-Z
  (paint undo) and Enter itself. Everything bound is unbound (napari's own restored) on shutdown.

Manual correction: *SAM current object* is an ordinary Labels layer; painting or erasing on it
(napari's brush and eraser) changes the object, and Accept takes the painted mask. A click after
painting starts from SAM's mask again (the status says so).

The accepted objects live only in the *SAM annotations* Shapes layer (``annotation_layer``):
export, the object list, undo and autosave read it, so deleted shapes and moved vertices are what
is saved. Pressing *Start* again (other model, decoder, level…) keeps them, and never drops the
object being clicked without asking. After each change they are autosaved atomically to a sidecar
(``annotations.autosave``); opening the slide again offers to resume them.

Everything slow runs on worker threads (loading the model, opening the slide, clicks, embeddings,
export, import, autosave); results are drawn from the GUI thread when they arrive, so napari never
blocks. While an embedding is computed a napari progress bar (indeterminate) shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ..annotations.cleaning import min_area_px
from ..annotations.objects import DEFAULT_CLASSES, next_class_color, not_yet_in
from ..assembly.annotating import AnnotatorConfig, assemble, carry_learning
from ..coordinates import corner_translate, mask_translate, napari_to_level0
from ..errors import InputError, SamHistoError
from . import annotation_layer
from .adaptation_panel import AdaptationPanel
from .annotation_layer import ANNOTATIONS, FACE_ALPHA, rgba  # noqa: F401 (the tests import them from here)
from .annotator_settings import AnnotatorSettings, source_spec, warm_up
from .gui_threads import GuiThreads
from .live_object import LiveObjectKeeper
from .object_list import ObjectList, area_text
from .ordered_writes import OrderedWrites
from .project_panel import ProjectPanel
from .reader import slide_stem
from .wording import count

CLICKS, CURRENT, TILES = "SAM clicks", "SAM current object", "SAM tiles"
CLICK_SLOP = 4  # screen pixels a press may move and still be a click, not a drag
PREFETCH_DELAY_MS = 600  # the view must rest this long before tiles around it are prefetched
AUTOSAVE_DELAY_MS = 400  # edits within this time are saved together
WARM_UP_DELAY_MS = 300
STEP_BUDGET_S = 0.04  # GUI-thread work per event-loop turn when drawing many objects
BINDINGS = ("Left click: positive point · right click or Alt+click: negative · Enter: accept · Escape: cancel "
            "the object · Ctrl-Z / Ctrl-Shift-Z: undo / redo (clicks act while the active layer is in pan/zoom "
            "mode) · paint on 'SAM current object' to correct by hand")
NOT_STARTED = "⚠ Press Start annotating first (pick the slide under Image)."

def _with_suffix(path: str, suffix: str) -> str:
    """The user's file name, with ``suffix`` added when they typed no extension."""
    return path if Path(path).suffix else path + suffix


class AnnotatorDock(QWidget):
    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.annotator = None
        self.image_layer = None
        self.layer = None  # the slide's annotations (Shapes) layer, the one home of accepted objects
        self.source = None  # the open slide, reused by every Start on the same image
        self._source_of = None  # the image layer ``source`` was opened for
        self.pending = 0
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)
        self.class_table = None  # the slide folder's class table (``annotations.class_table``): ids and colours
        self.progress_log: list[tuple[str, str, str]] = []  # (started|finished, tile key, click|prefetch)
        self.prefetch_future = None
        self.autosave_path: Path | None = None
        self._starting = False  # between Start and the end of set-up
        self._resuming = False  # while the slide's earlier autosave is being read
        self._closed = self._closing = False
        self._was_docked = False
        self._stopped = None  # the last annotator stopped: its threads may still read the slide
        self._closed_source = None
        self._made_working_layers = False
        self._undo: list[tuple] = []  # ("click",) | ("accept", obj, snapshot) | ("clear", snapshot) | ("delete", objs)
        self._redo: list[tuple] = []
        self._internal = 0  # >0 while the dock itself changes the annotations layer
        self._drawn: tuple[tuple[int, int], np.ndarray, float] | None = None  # SAM's mask as last drawn, its downsample
        self._drawn_boxes: tuple = ()  # the tiles outlined in the tiles layer
        self._progress: dict[str, object] = {}  # tile key -> open napari progress
        self._pressing = False
        self._double_click_zoom = None  # napari's, removed while annotating
        self._bound: list[tuple[object, object, object]] = []  # (target, key, napari's own binding)
        self._connections: list[tuple[object, object]] = []  # (event emitter, callback) to disconnect
        self.threads = GuiThreads(self)
        self.live = LiveObjectKeeper(self.threads, self._show_error, self)  # the object being clicked, on disk
        self._live_settings = ("Tumor", (200, 0, 0), 0.0, 0.0, None)  # class, colour, min area, tolerance, mpp
        self._prefetch_timer = self._timer(PREFETCH_DELAY_MS, self.prefetch_now)
        self.autosaves = OrderedWrites(self.threads, AUTOSAVE_DELAY_MS, self._autosave_job, self._show_error,
                                       "autosave", self)
        self._refresh_timer = self._timer(0, self._refresh_objects)  # one list refresh per burst of edits
        self._refresh_generation = 0
        self._build()
        self.viewer.layers.events.inserted.connect(self.settings.fill_layers)
        self.viewer.layers.events.removed.connect(self.settings.fill_layers)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        from qtpy.QtWidgets import QApplication

        QApplication.instance().aboutToQuit.connect(self.close_session)  # save the last edits when napari quits
        self.settings.fill_layers()
        # torch and friends are imported off the GUI thread, once napari has drawn the dock (an import
        # running on a worker meanwhile would hold module locks that the dock's own creation waits on)
        self.warmed_up = False  # the warm-up below has ended (its imports hold the GIL for seconds)
        QTimer.singleShot(WARM_UP_DELAY_MS, lambda: self.threads.run(warm_up, self._warmed_up))

    def _warmed_up(self, models) -> None:
        self.warmed_up = True
        self.settings.fill_models(models)

    def _timer(self, interval: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(interval)
        timer.timeout.connect(slot)
        return timer

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()  # usable beside the benchmark dock on a 1080-px screen
        scroll.setWidgetResizable(True)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        self.settings = AnnotatorSettings(self.viewer)
        layout.addWidget(self.settings)
        for name in ("layer_combo", "model_combo", "decoder_combo", "device_combo", "level_combo", "tile_spin",
                     "min_area_spin", "simplify_spin", "prefetch_check", "grow_check", "disk_check"):
            setattr(self, name, getattr(self.settings, name))  # the dock's own names for its settings
        self.grow_check.toggled.connect(self._set_growing)

        class_row = QHBoxLayout()
        self.class_combo = QComboBox()
        self.class_combo.setEditable(True)  # type a new class and press Enter to add it
        self.class_combo.addItems(list(self.classes))
        self.color_button = QPushButton()
        self.color_button.setFixedWidth(32)
        self.color_button.setToolTip("the class's colour (click to change)")
        self.color_button.clicked.connect(self._pick_color)
        self.class_combo.currentTextChanged.connect(lambda text: self._show_class_color())
        class_row.addWidget(QLabel("Class"))
        class_row.addWidget(self.class_combo, 1)
        class_row.addWidget(self.color_button)
        layout.addLayout(class_row)
        self.start_button = QPushButton("Start annotating")
        self.start_button.clicked.connect(self.start)
        layout.addWidget(self.start_button)
        self.buttons = {}
        row = QHBoxLayout()
        for name, slot, tip in (("Undo", self.undo, "Ctrl-Z"), ("Redo", self.redo, "Ctrl-Shift-Z"),
                                ("Clear", self.clear, "Escape: drop the object being clicked (Ctrl-Z brings it back)"),
                                ("Accept", self.accept, "Enter")):
            row.addWidget(self._button(name, slot, tip))
        layout.addLayout(row)
        row = QHBoxLayout()
        for name, slot in (("Export GeoJSON…", self._export_geojson_clicked), ("Export TIFF…", self._export_tiff_clicked),
                           ("Import GeoJSON…", self._import_clicked)):
            row.addWidget(self._button(name, slot))
        layout.addLayout(row)
        self.status = QLabel("Open a slide, pick it above and press Start.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        objects = QGroupBox("Objects")
        objects_layout = QVBoxLayout(objects)
        self.object_list = ObjectList()
        self.object_list.zoom_requested.connect(self.zoom_to)
        self.object_list.delete_requested.connect(self.delete_objects)
        self.object_list.class_requested.connect(self.set_object_class)
        objects_layout.addWidget(self.object_list)
        layout.addWidget(objects)
        self.adaptation_panel = AdaptationPanel(self.threads)
        self.adaptation_panel.check.toggled.connect(lambda on: self._learn_from_layer() if on else None)
        layout.addWidget(self.adaptation_panel)
        self.project_panel = ProjectPanel(self.threads, self._decoder_trained)
        layout.addWidget(self.project_panel)
        help_label = QLabel(BINDINGS)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: gray")
        layout.addWidget(help_label)
        layout.addStretch()
        self._show_class_color()
        from .dock_tabs import needed_width

        scroll.setMinimumWidth(needed_width(scroll))  # never cut at the right edge (a horizontal scroll bar)

    def _button(self, name: str, slot, tip: str = "") -> QPushButton:
        button = QPushButton(name)
        button.setToolTip(tip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep going to the canvas
        button.clicked.connect(slot)
        self.buttons[name] = button
        return button

    # -- classes and colours ------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return self.class_combo.currentText().strip() or "Tumor"

    def class_color(self, name: str) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class to the list (and to the slide folder's
        class table, which gives it its id in every export) if it is new."""
        if name not in self.classes:
            self.classes[name] = next_class_color(self.classes.values())
        if self.class_combo.findText(name) < 0:
            self.class_combo.addItem(name)
        if self.class_table is not None and name not in self.class_table:
            self._in_class_table(lambda table: table.add(name, self.classes[name]))
        return self.classes[name]

    def _in_class_table(self, change) -> None:
        """Change the class table; a table that cannot be written is said, not raised (the objects
        stay; an export names the problem again)."""
        try:
            change(self.class_table)
        except (SamHistoError, OSError) as err:
            self._show_error(err)
            return
        if self.class_table.notice:
            self.status.setText(self.class_table.notice)
        if self.layer is not None and self.class_table.path is not None:
            self.layer.metadata["class_table"] = str(self.class_table.path)

    def _load_class_table(self, image_layer) -> None:
        """The class table of the slide's folder: its classes, with their colours, join the list."""
        from ..annotations.class_table import ClassTable

        path = image_layer.metadata.get("slide_path")
        try:
            self.class_table = ClassTable.for_slide(path) if path else ClassTable()
        except SamHistoError as err:  # unreadable: said now; exports into that folder refuse too
            self.class_table = None
            self._show_error(err)
            return
        for name, color in self.class_table.colours().items():
            self.classes[name] = color
            if self.class_combo.findText(name) < 0:
                self.class_combo.addItem(name)
        for name, color in list(self.classes.items()):  # the dock's own classes get their ids too
            if name not in self.class_table:
                self._in_class_table(lambda table, name=name, color=color: table.add(name, color))
        if self.class_table.path is not None:
            self.layer.metadata["class_table"] = str(self.class_table.path)
        self._show_class_color()

    def _show_class_color(self) -> None:
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
        """Give class ``name`` a colour: the accepted objects of that class follow."""
        self.classes[name] = tuple(int(c) for c in color[:3])
        self.class_color(name)
        if self.class_table is not None:
            self._in_class_table(lambda table: table.set_colour(name, self.classes[name]))
        if self.layer is not None:
            with self._changing():
                annotation_layer.recolor(self.layer, self.class_color)
            self._changed()
        self._show_class_color()

    def _color_current(self, color) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        self.viewer.layers[CURRENT].colormap = DirectLabelColormap(
            color_dict={None: np.zeros(4), 0: np.zeros(4), 1: rgba(color)})

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart with other settings). Accepted objects stay in their layer; the object
        being clicked is dropped only when the user confirms."""
        layer = self.settings.chosen_layer()
        if layer is None:
            self.status.setText("⚠ Open an image or slide first (File > Open, or File > Open Sample).")
            return
        if self._starting:
            return
        if self.pending:
            self.status.setText(f"⚠ Wait until the {count(self.pending, 'click or action', 'clicks and actions')} under way "
                                f"{'has' if self.pending == 1 else 'have'} run, then press "
                                "Start again.")
            return
        if self.annotator is not None and self.annotator.clicks and not self.confirm(
                f"Starting again drops the object being clicked ({count(len(self.annotator.clicks), 'click')}). Drop it?"):
            self.status.setText("Start cancelled: the object being clicked is kept. Press Enter to accept it first.")
            return
        try:
            spec = None if layer is self._source_of else source_spec(layer)
        except SamHistoError as err:
            self._show_error(err)
            return
        config = AnnotatorConfig(self.model_combo.currentText(), self.decoder_combo.currentText(),
                                 self.device_combo.currentText(), self.level_combo.currentData() or 0,
                                 self.tile_spin.value(), embeddings_on_disk=self.disk_check.isChecked(),
                                 continuation=self.grow_check.isChecked(), learning=self.adaptation_panel.wanted)
        old = self.annotator or self._stopped
        learnt = old.adaptation if old is not None else None  # what the slide taught so far
        reused, relay = self.source, self.adaptation_panel.relay
        model = config.model

        def build():
            return assemble(config, spec, reused, learnt, relay)

        self.status.setText(f"Loading {model}…")
        self._starting = True  # until set up: clicks and keys wait (the current annotator stays as it is)
        self.start_button.setEnabled(False)
        self.threads.run(build, lambda result: self._started(layer, result))

    def _started(self, layer, result) -> None:
        if isinstance(result, Exception):
            self._starting = False
            self.start_button.setEnabled(True)
            self._show_error(result)
            return
        annotator, source = result
        if self._closed:  # the dock went away while the model loaded
            annotator.close()
            if source is not self._closed_source:
                source.close()
            return
        old = self.annotator or self._stopped
        # the same slide, model and decoder: what was learned goes on
        carry_learning(annotator, old, self.adaptation_panel.wanted, self.adaptation_panel.relay)
        self.shutdown()
        self.threads.steps(self._set_up(layer, annotator, source, old),  # napari repaints between layers
                           lambda err: self._set_up_failed(err, annotator, source))

    def _set_up_failed(self, err, annotator, source) -> None:
        """A set-up step failed (a layer it needs was deleted meanwhile, the dock was closed…): the
        new annotator goes, the dock stays usable, and the status says what happened."""
        annotator.close()
        self.shutdown()
        if not self._closed and source is not self.source:
            source.close()
        self._starting = False
        self.start_button.setEnabled(True)
        if not self._closed:
            self._show_error(err)

    def _still_setting_up(self, layer) -> None:
        """Between set-up steps: ``InputError`` when what it needs is gone."""
        if self._closed:
            raise InputError("The dock was closed while starting.")
        if layer not in self.viewer.layers:
            raise InputError(f"The image '{layer.name}' was removed while starting: open it and press Start again.")
        for name in (CURRENT, TILES, CLICKS):
            if self._made_working_layers and name not in self.viewer.layers:
                raise InputError(f"The layer '{name}' was removed while starting: press Start again.")

    def _ready(self) -> bool:
        """Whether the dock takes a click or an action now; if not, the status says why."""
        if self._starting:
            self.status.setText("Loading the new settings… (clicks and keys are taken once it is ready)")
        elif self.annotator is None:
            self.status.setText(NOT_STARTED)
        return self.annotator is not None and not self._starting

    def _set_up(self, layer, annotator, source, old=None):
        """Layers, callbacks and keys for a new annotator; the dock takes clicks once it is done.
        ``old``: the annotator it replaces, whose threads may still be reading the old slide."""
        new_layer = annotation_layer.layer_for(self.viewer, layer, source.identity,
                                               edge_width=3 * annotator.grid.downsample)
        if new_layer is not self.layer:
            self._flush_autosave()  # the previous slide's last edits, with its own pixel size
            self.layer, self.autosave_path, self._resuming = new_layer, None, False
            self._load_class_table(layer)
        if source is not self.source:
            previous = self.source
            if previous is not None:  # closed once the old annotator's threads have stopped reading it
                self.threads.run(lambda: (old.close(wait=True) if old is not None else None, previous.close()),
                                 lambda result: None)
            self.source, self._source_of = source, layer
        self.image_layer, self.pending = layer, 0
        self._undo, self._redo, self._drawn, self._drawn_boxes = [], [], None, ()
        annotator.classes = self.classes  # one list of classes and colours, shared
        annotator.listeners.append(self._listener(annotator))
        self.settings.show_min_area_unit(source.mpp)
        d = annotator.grid.downsample
        scale, units = tuple(layer.scale[-2:]), {"units": tuple(layer.units[-2:])}
        self._made_working_layers = False
        yield
        self._still_setting_up(layer)
        for _ in self._working_layers(scale, units, d):
            yield
            self._still_setting_up(layer)
        self._made_working_layers = True
        current, points = self.viewer.layers[CURRENT], self.viewer.layers[CLICKS]
        current.selected_label = 1  # napari's brush paints the object, the eraser removes from it
        self._color_current(self.class_color(self.class_name))
        yield
        self._still_setting_up(layer)
        self._connect(self.layer.events.data, self._on_layer_data)
        self._connect(self.layer.events.features, self._on_layer_features)
        self._connect(current.events.paint, self._on_paint)
        self.viewer.layers.selection.active = layer
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        self.viewer.mouse_double_click_callbacks.append(self._on_double_click)
        from napari.components._viewer_mouse_bindings import double_click_to_zoom

        if double_click_to_zoom in self.viewer.mouse_double_click_callbacks:
            self.viewer.mouse_double_click_callbacks.remove(double_click_to_zoom)
            self._double_click_zoom = double_click_to_zoom
        self._bind_keys([self.viewer, current, points])
        self._connect(self._camera().events.center, self._schedule_prefetch)
        self._connect(self._camera().events.zoom, self._schedule_prefetch)
        self._connect(self.viewer.layers.events.inserted, self._image_added)
        self._connect(self._camera().events.center, self._view_moved)
        self._connect(self._camera().events.zoom, self._view_moved)
        self.annotator = annotator
        self._view_moved()
        self.adaptation_panel.attach(annotator.adaptation, source.name, self._suggested("-adapted-decoder.pt"))
        self.project_panel.attach(annotator, self.image_layer.metadata.get("slide_path") if self.image_layer else None)
        self._starting = False
        self.start_button.setEnabled(True)
        level = self._level_text(self._view_level().downsample) + (", following the view" if annotator.auto else "")
        self.status.setText(f"{annotator.predictor.provenance.text} ready at {level}. Click on the image. "
                            f"{self._count_text()}")
        self._refresh_objects()
        if self.autosave_path is None and not self._resuming:
            self._offer_resume()
        self._offer_live_object(annotator)
        self._learn_from_layer()
        self._schedule_prefetch()

    def _working_layers(self, scale, units, d):
        """Create (once, one per step: see ``_in_steps``) and reset the current object (Labels), its
        tiles (Shapes) and its clicks (Points); every Start reuses them."""
        layers = self.viewer.layers
        if CURRENT not in layers:
            self.viewer.add_labels(np.zeros((1, 1), np.uint8), name=CURRENT, opacity=0.5, **units)
            yield
        if TILES not in layers:
            self.viewer.add_shapes(name=TILES, opacity=0.7, **units)
            yield
        if CLICKS not in layers:
            points = self.viewer.add_points(np.zeros((0, 2)), name=CLICKS, size=12, border_color="white", **units)
            points.canvas_size_limits = (10, 40)  # visible at any zoom of a large slide
            yield
        current, tiles, points = layers[CURRENT], layers[TILES], layers[CLICKS]
        current.data = np.zeros((1, 1), np.uint8)
        tiles.data, tiles.edge_width = [], 2 * d
        points.data = np.zeros((0, 2))
        for layer in (tiles, points):  # level-0 corner coordinates (``coordinates``)
            if not np.allclose(layer.scale[-2:], scale):
                layer.scale = scale
            if not np.allclose(layer.translate[-2:], corner_translate(scale)):
                layer.translate = corner_translate(scale)

    def _camera(self):
        scene = getattr(self.viewer, "scene", None)  # napari 0.9 moved the camera to viewer.scene
        return scene.camera if scene is not None else self.viewer.camera

    def _level_text(self, downsample: float | None = None) -> str:
        """A working level as a user reads it: magnification (or downsample) and µm per pixel; with
        "auto", that the level follows the view."""
        from ..engine.working_levels import describe_downsample

        d = self.annotator.grid.downsample if downsample is None else downsample
        text = describe_downsample(d, self.source.mpp)
        return f"{text}, following the view (auto)" if self.annotator.auto and downsample is None else text

    def _tile_text(self, box) -> str:
        mpp, d = self.source.mpp, box.downsample
        size = f"{box.width}×{box.height} px tile at {self._level_text(d)}"
        return size + (f", {box.width * d * mpp[0]:.0f}×{box.height * d * mpp[1]:.0f} µm" if mpp else "")

    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _bind_keys(self, targets) -> None:
        from app_model.types import KeyCode, KeyMod

        bindings = ((KeyCode.Enter, lambda _: self.accept()),
                    (KeyCode.Escape, lambda _: self.clear()),
                    (KeyMod.CtrlCmd | KeyCode.KeyZ, lambda _: self.undo()),
                    (KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ, lambda _: self.redo()))
        for target in targets:
            for key, action in bindings:
                previous = target.bind_key(key, action, overwrite=True)
                self._bound.append((target, key, previous))

    def shutdown(self, wait: bool = False) -> None:
        """Stop the annotator's threads, close its progress bars and take back every callback and
        key binding it added to napari (the dock can start again). The slide stays open for the next
        Start; ``closeEvent`` closes it."""
        self._prefetch_timer.stop()
        self.adaptation_panel.attach(None)
        self.project_panel.detach()
        if self.annotator is not None:
            self.annotator.close(wait=wait)
            self._stopped, self.annotator = self.annotator, None
        elif wait and self._stopped is not None:
            self._stopped.close(wait=True)  # stopped earlier without waiting: its threads end now
        self.pending = 0  # the stopped annotator's results are dropped: nothing is pending any more
        for bar in self._progress.values():
            bar.close()
        self._progress.clear()
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connections.clear()
        for target, key, previous in reversed(self._bound):
            target.bind_key(key, previous if callable(previous) else None, overwrite=True)
        self._bound.clear()
        for callbacks, callback in ((self.viewer.mouse_drag_callbacks, self._on_mouse),
                                    (self.viewer.mouse_double_click_callbacks, self._on_double_click)):
            while callback in callbacks:
                callbacks.remove(callback)
        if self._double_click_zoom is not None:
            if self._double_click_zoom not in self.viewer.mouse_double_click_callbacks:
                self.viewer.mouse_double_click_callbacks.append(self._double_click_zoom)
            self._double_click_zoom = None

    def close_session(self, wait: bool = False) -> None:
        """Everything ``shutdown`` does, then save what is unsaved and close the slide. Runs when
        the dock is closed or removed, or napari quits (napari removes a dock without closing it)."""
        if self._closed or self._closing:
            return
        self._closing = True
        old = self.annotator or self._stopped
        self.live.close()  # the object being clicked stays on disk: the next Start offers it back
        self.shutdown(wait=wait)
        self._flush_autosave()  # the last edits, before autosave stops for good
        self._closed = True
        self.autosaves.close()
        self.project_panel.close()  # the objects being written to the project are written first
        try:
            from qtpy.QtWidgets import QApplication

            QApplication.instance().aboutToQuit.disconnect(self.close_session)
        except (TypeError, RuntimeError, AttributeError):
            pass
        for emitter, callback in ((self.viewer.layers.events.removed, self._on_layer_removed),):
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                emitter.disconnect(self.settings.fill_layers)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self.source is not None:
            source = self._closed_source = self.source
            if old is not None and not wait:  # its threads may still read the slide: close after them
                self.threads.run(lambda: (old.close(wait=True), source.close()), lambda result: None)
            else:
                source.close()
            self.source = self._source_of = None

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.close_session()
        super().closeEvent(event)

    def event(self, event) -> bool:  # noqa: D102
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.ParentChange and self.parent() is None and getattr(self, "_was_docked", False):
            self.close_session()  # napari's remove_dock_widget unparents the dock: it never gets closeEvent
        elif event.type() == QEvent.Type.ParentChange and self.parent() is not None:
            self._was_docked = True
        return super().event(event)

    def confirm(self, question: str) -> bool:
        """Ask before anything is discarded (tests replace this)."""
        answer = QMessageBox.question(self, "SAM Histo", question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

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
        self.add_click(*napari_to_level0(col, row), positive=not negative)

    def add_click(self, x0: float, y0: float, positive: bool = True) -> None:
        """A click at level-0 pixel (x0, y0); the mask is drawn when the decoder has run."""
        if not self._ready():
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
        self._undo.append(("click",))
        self._redo.clear()
        self._view_moved()
        self.status.setText("Clicked…" if self.pending == 1 else f"{self.pending} clicks queued…")
        level = self._view_level()
        self._relay_action(self.annotator.submit_click(x0, y0, positive, level.downsample), self._show_state)

    def _view_extent(self) -> tuple[float, float]:
        """The view's (width, height) in level-0 pixels of the slide being annotated."""
        canvas = getattr(self.viewer, "canvas", None)  # napari 0.9; older: the viewer's _canvas_size
        size = getattr(canvas, "size", None) if canvas is not None else None
        height, width = size if size is not None else getattr(self.viewer, "_canvas_size", (1000, 1000))
        zoom = max(float(self._camera().zoom), 1e-9)  # screen pixels per world unit
        sy, sx = (float(v) for v in self.image_layer.scale[-2:])  # world units per level-0 pixel
        return width / (zoom * sx), height / (zoom * sy)

    def view_box(self) -> tuple[float, float, float, float]:
        """The level-0 box (x0, y0, x1, y1) on screen now."""
        width, height = self._view_extent()
        row, col = self.image_layer.world_to_data(self._camera().center[-2:])[-2:]
        x, y = napari_to_level0(col, row)
        return x - width / 2, y - height / 2, x + width / 2, y + height / 2

    def _image_added(self, event=None) -> None:
        """An image opened while annotating goes below the annotator's layers (after napari has
        inserted it), so the clicks, the object being clicked and the accepted objects stay visible."""
        QTimer.singleShot(0, self.keep_layers_on_top)

    def keep_layers_on_top(self) -> None:
        """Move every image layer that lies above one of the annotator's layers just below them."""
        from napari.layers import Image

        layers = self.viewer.layers
        ours = [layer for layer in (self.layer, *(layers[n] for n in (CURRENT, TILES, CLICKS) if n in layers))
                if layer is not None and layer in layers]
        if self.annotator is None or not ours:
            return
        while True:
            lowest = min(layers.index(layer) for layer in ours)
            above = [i for i, layer in enumerate(layers) if i > lowest and isinstance(layer, Image)]
            if not above:
                return
            layers.move(above[0], lowest)

    def _view_moved(self, *_) -> None:
        """The annotator grows objects only inside what the user sees (``ObjectTiles.view``)."""
        if self.annotator is not None and self.image_layer is not None:
            self.annotator.view = self.view_box()

    def _view_level(self):
        """The working level for what is on screen now (``Annotator.level_for_view``; the fixed level
        when one is pinned)."""
        return self.annotator.level_for_view(*self._view_extent())

    # -- undo, redo, clear, accept ------------------------------------------------------------
    def undo(self) -> None:
        """Undo the last click, Accept, Clear or deletion, whichever came last."""
        if self._ready() and self._undo:
            self._apply(self._undo.pop(), undo=True)
        elif self.annotator is not None and not self._starting:
            self.status.setText("Nothing to undo.")

    def redo(self) -> None:
        if self._ready() and self._redo:
            self._apply(self._redo.pop(), undo=False)
        elif self.annotator is not None and not self._starting:
            self.status.setText("Nothing to redo.")

    def _apply(self, entry: tuple, undo: bool) -> None:
        """Undo (or redo) one entry and move it to the other stack."""
        kind = entry[0]
        (self._redo if undo else self._undo).append(entry)
        if kind == "click":
            self._queue(self._show_state, "undo" if undo else "redo")
        elif kind in ("accept", "clear"):
            obj, snapshot = (entry[1], entry[2]) if kind == "accept" else (None, entry[1])
            if obj is not None:
                with self._changing():
                    if undo:
                        annotation_layer.remove_object(self.layer, obj.id)
                        self._unlearn([obj.id])  # an undone Accept teaches nothing
                    else:
                        annotation_layer.add_objects(self.layer, [obj], self.class_color)
                self._changed()
            self._queue(lambda state: self._after_history(state, kind, undo), *(("restore", snapshot) if undo else ("clear",)))
        elif kind == "delete":
            with self._changing():
                if undo:
                    annotation_layer.add_objects(self.layer, entry[1], self.class_color)
                else:  # only the shapes deleted then: one part of an object may have gone, not all
                    annotation_layer.remove_parts(self.layer, entry[1])
            self._changed()
            n = len(entry[1])
            self.status.setText(f"{'Restored' if undo else 'Deleted'} {n} object{'s' * (n != 1)}. {self._count_text()}")

    def _after_history(self, state, kind: str, undo: bool) -> None:
        self._show_state(state)
        what = {"accept": "Accept", "clear": "Clear"}[kind]
        self.status.setText(f"{'Undid' if undo else 'Redid'} {what}. {self._count_text()}")

    def clear(self) -> None:
        """Drop the object being clicked (Ctrl-Z brings it back)."""
        if not self._ready():
            return
        if not self.annotator.clicks and not self.pending:
            self.status.setText(f"No object is being clicked. {self._count_text()}")
            return
        self._queue(self._cleared, "clear_undoable")

    def _cleared(self, result) -> None:
        if isinstance(result, Exception):
            self._show_state(result)
            return
        state, snapshot = result
        if not snapshot.empty:
            self._undo.append(("clear", snapshot))
            self._redo.clear()
        self._show_state(state)
        self.status.setText(f"Cleared the object being clicked (Ctrl-Z brings it back). {self._count_text()}")

    def accept(self) -> None:
        """Accept the object being clicked (or its hand-corrected mask) as the current class."""
        if not self._ready():
            return
        name = self.class_name
        self.class_color(name)  # a class typed in is added to the list with a colour
        edited = self._edited_mask()
        min_area = min_area_px(self.min_area_spin.value(), self.source.mpp)

        def accepted(result):
            from ..engine.annotator import BeyondView

            obj = result if isinstance(result, Exception) else result[0]
            if isinstance(obj, BeyondView):
                self._show_beyond_view(obj)
                return
            if obj is not None and not isinstance(obj, Exception):
                self._undo.append(("accept", obj, result[1]))  # the snapshot taken on the worker
                self._redo.clear()
            self._accepted(obj)

        self._queue(accepted, "accept_undoable", name, min_area, self.simplify_spin.value(), edited, self.view_box())

    def _show_beyond_view(self, beyond) -> None:
        """Accept found the object reaching beyond the view: show it whole; the user accepts again."""
        self.pending = max(self.pending - 1, 0)
        self.fit_view(*beyond.extent)
        self.status.setText("Not accepted yet: the object reaches beyond the view. The view now shows all of it; "
                            "check it (a negative click removes what does not belong) and press Enter again.")

    def _edited_mask(self):
        """The *SAM current object* labels when painted by hand since SAM drew them, else None."""
        current = self.viewer.layers[CURRENT] if CURRENT in self.viewer.layers else None
        if current is None or self._drawn is None:
            return None
        (x, y), drawn, d = self._drawn
        data = np.asarray(current.data)
        if data.shape != drawn.shape or np.array_equal(data > 0, drawn):
            return None
        return (x, y), data > 0, d

    def _accepted(self, obj) -> None:
        """Draw an accepted object in steps (clear the current object, add the shapes, say so), one
        per event-loop turn, so napari repaints between them."""
        self.threads.steps(self._accept_steps(obj))

    def _accept_steps(self, obj):
        from ..engine.annotator import EMPTY_STATE

        self._show_state(obj if isinstance(obj, Exception) else EMPTY_STATE)
        if isinstance(obj, Exception):
            return
        if obj is None:
            self.status.setText(f"Nothing to accept: the object is empty. {self._count_text()}")
            return
        yield
        with self._changing():
            annotation_layer.add_objects(self.layer, [obj], self.class_color)
        self._changed()
        self.status.setText(f"Accepted {obj.class_name}{' (corrected by hand)' * bool(obj.properties.get('edited'))}: "
                            f"{area_text(obj, self.source.mpp)}, {count(obj.clicks, 'click')}, {obj.model}. {self._count_text()}")

    def _queue(self, callback, action: str, *args) -> None:
        """Run an annotator action behind the queued clicks; ``callback`` gets its result."""
        if self.annotator is not None:
            self._prefetch_timer.stop()
            self.pending += 1
            self._relay_action(self.annotator.submit(action, *args), callback)

    def _relay_action(self, future, callback) -> None:
        """Relay an action's result, unless the dock was restarted with another annotator since."""
        annotator = self.annotator
        self.threads.relay(future, lambda result: callback(result) if self.annotator is annotator else None)

    def _show_state(self, state, action: bool = True) -> None:
        """Draw an ``AnnotatorState`` (or show an error) when an action has run (``action=False``:
        a state the annotator reached by itself, such as continuation)."""
        from ..engine.annotator import EMPTY_STATE, AnnotatorState

        if action:
            self.pending = max(self.pending - 1, 0)
        if self.annotator is None:
            return
        if isinstance(state, Exception):
            self._show_error(state)
            state = self.annotator.state()  # what is there now (the failed action changed nothing)
        if not isinstance(state, AnnotatorState):
            state = EMPTY_STATE
        self._draw_clicks(state.clicks)
        current = self.viewer.layers[CURRENT]
        d = state.downsample  # the object's finest level (its tiles may be at several)
        if state.mask is None:
            if current.data.shape != (1, 1) or current.data.any():
                current.data = np.zeros((1, 1), np.uint8)
            self._drawn = None
        else:
            (x, y), mask = state.mask
            sy, sx = self.image_layer.scale[-2:]
            scale, translate = (d * sy, d * sx), mask_translate(x, y, d, (sy, sx))
            if not np.allclose(current.scale, scale):  # each transform change redraws the layer
                current.scale = scale
            if not np.allclose(current.translate, translate):
                current.translate = translate
            current.data = mask.astype(np.uint8)
            self._drawn = ((x, y), mask.copy(), d)
        if state.boxes != self._drawn_boxes:
            self._drawn_boxes = state.boxes
            QTimer.singleShot(0, lambda: self._draw_tiles(state.boxes))  # in the next turn: napari repaints first
        if not self.pending and not isinstance(state, Exception):
            self._live_changed(state)
            if state.clicks:
                clicks, n = len(state.clicks), len(state.boxes)
                levels = sorted({b.downsample for b in state.boxes}, reverse=True)
                where = " and ".join(self._level_text(d) for d in levels)  # coarse to fine
                self.status.setText(f"{clicks} click{'s' * (clicks != 1)}" + (f" across {n} tiles" if n > 1 else "")
                                    + (f" at {where}" if where else "")
                                    + (", border refined as on this slide's accepted objects" if state.refined else "")
                                    + f". Enter accepts as {self.class_name}, Escape cancels.")
            self._schedule_prefetch()

    def _draw_tiles(self, boxes) -> None:
        if self.annotator is None or boxes != self._drawn_boxes:
            return  # stopped, or other tiles were drawn meanwhile
        tiles = self.viewer.layers[TILES]
        tiles.data = []
        if boxes:
            tiles.add_rectangles([np.array([[b.y, b.x], [b.y + b.height, b.x + b.width]], float) * b.downsample
                                  for b in boxes], edge_color="yellow", face_color="transparent",
                                 edge_width=2 * min(b.downsample for b in boxes))

    def _draw_clicks(self, clicks) -> None:
        """The clicks layer shows ``clicks`` (already drawn at click time: only fix what differs)."""
        points = self.viewer.layers[CLICKS]
        data = np.array([[y, x] for x, y, _ in clicks], float).reshape(-1, 2)
        colors = ["green" if c[2] else "red" for c in clicks]
        if len(points.data) == len(data) and np.allclose(points.data, data):
            return
        points.selected_data = set()
        points.data = data
        if colors:  # each property set is one more napari event (and repaint)
            points.face_color = colors

    def _on_paint(self, event=None) -> None:
        if self._drawn is not None:
            self.status.setText("Corrected by hand: Enter accepts the painted object; a new click starts again "
                                "from SAM's mask.")

    # -- the annotations layer ------------------------------------------------------------------
    def _changing(self):
        """While the dock itself edits the layer, its events are not taken for the user's edits."""
        from contextlib import contextmanager

        @contextmanager
        def changing():
            self._internal += 1
            try:
                yield
            finally:
                self._internal -= 1

        return changing()

    def _on_layer_data(self, event) -> None:
        action = str(getattr(event, "action", ""))
        if action == "removing" and not self._internal:
            removed = annotation_layer.objects_in_rows(self.layer, list(event.data_indices))  # deleted on the canvas: undoable
            if removed:
                self._undo.append(("delete", removed))
                self._redo.clear()
        if action == "added" and not self._internal:
            self._give_ids(self.layer)
        if action in ("added", "removed", "changed"):
            self._changed()

    def _on_layer_removed(self, event) -> None:
        """A layer the annotator draws on was deleted by the user: stop annotating and say so (the
        accepted objects are in the autosave; Start offers them back)."""
        removed = getattr(event, "value", None)
        if self.annotator is None or removed is None or self._closed:
            return
        if removed is self.layer or removed is self.image_layer or getattr(removed, "name", "") in (CLICKS, CURRENT, TILES):
            if removed is self.layer:
                self._flush_autosave()
            self.shutdown()
            self.status.setText(f"⚠ The layer '{removed.name}' was deleted, so annotating stopped. Press Start "
                                "to go on (accepted objects are autosaved, and Start offers them back).")

    @staticmethod
    def _give_ids(layer) -> None:
        """A shape drawn by hand with napari's tools is an object of its own, with a stable id (the
        list's Delete and Set class find it by that id)."""
        import uuid

        if not len(layer.data) or "id" not in layer.features:
            return
        features = layer.features  # napari's own table: changed in place, no event
        for i, value in enumerate(list(features["id"])):
            if str(value) in ("", "nan"):
                features.loc[i, "id"] = str(uuid.uuid4())

    def _on_layer_features(self, event=None) -> None:
        self._changed()

    def _changed(self) -> None:
        """The accepted objects changed: refresh the list (once per burst) and autosave soon."""
        self._refresh_timer.start()
        if self.autosave_path is not None:
            self.autosaves.schedule()

    def objects(self):
        """The accepted objects, as the annotations layer holds them now."""
        return annotation_layer.layer_objects(self.layer) if self.layer is not None else []

    def _count_text(self) -> str:
        n = annotation_layer.object_count(self.layer)
        return f"{n} object{'s' * (n != 1)} on this slide."

    def _refresh_objects(self) -> None:
        """Show the layer's objects in the list; the shapes are converted on a worker thread (a
        slide with hundreds of objects would stall napari otherwise)."""
        self._refresh_generation += 1
        generation, mpp = self._refresh_generation, self.source.mpp if self.source is not None else None
        if self.layer is None:
            self.object_list.set_objects([], mpp)
            return
        data, meta, _ = self.layer.as_layer_data_tuple()

        def show(objects):
            if generation == self._refresh_generation and not isinstance(objects, Exception):
                self.object_list.set_objects(objects, mpp)

        self.threads.run(lambda: annotation_layer.layer_data_objects(data, meta), show)

    def zoom_to(self, object_id: str) -> None:
        """Centre the view on one object and zoom so that it fills most of the canvas."""
        rows = annotation_layer.rows_of(self.layer, object_id) if self.layer is not None else []
        obj = next(iter(annotation_layer.objects_in_rows(self.layer, rows)), None) if rows else None
        if obj is None or not obj.polygons:
            return
        bounds = np.array([p.bounds() for p in obj.polygons])
        (x0, y0), (x1, y1) = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
        self.fit_view(x0, y0, x1, y1)

    def fit_view(self, x0: float, y0: float, x1: float, y1: float, fill: float = 0.8) -> None:
        """Centre the view on a level-0 box and zoom so that it fills ``fill`` of the canvas."""
        sy, sx = self.image_layer.scale[-2:]
        self._camera().center = ((y0 + y1) / 2 * sy, (x0 + x1) / 2 * sx)
        extent = np.array([max((y1 - y0) * sy, 1e-6), max((x1 - x0) * sx, 1e-6)])  # (rows, cols), as napari
        canvas = getattr(self.viewer, "canvas", None)
        if canvas is not None and hasattr(canvas, "viewbox_size"):
            view = np.asarray(canvas.viewbox_size(self.viewer.layers), float)[-2:]
        else:  # napari < 0.9
            view = np.asarray(self.viewer.window._qt_viewer.canvas.size, float)[::-1]
        self._camera().zoom = fill * float(np.min(view / extent))

    def delete_objects(self, ids: list[str]) -> None:
        """Delete objects (from the list's Delete button); Ctrl-Z brings them back."""
        if self.layer is None:
            return
        rows = sorted({r for object_id in ids for r in annotation_layer.rows_of(self.layer, object_id)})
        removed = annotation_layer.objects_in_rows(self.layer, rows) if rows else []
        with self._changing():
            for obj in removed:
                annotation_layer.remove_object(self.layer, obj.id)
        self._unlearn([obj.id for obj in removed])
        if removed:
            self._undo.append(("delete", removed))
            self._redo.clear()
        self._changed()
        self.status.setText(f"Deleted {len(removed)} object{'s' * (len(removed) != 1)} (Ctrl-Z brings "
                            f"{'them' if len(removed) != 1 else 'it'} back). {self._count_text()}")

    def _unlearn(self, ids) -> None:
        """The slide's adaptation and the project forget these objects (queued for their threads:
        returns at once)."""
        adaptation = getattr(self.annotator, "adaptation", None)
        if adaptation is not None:
            for object_id in ids:
                adaptation.forget(object_id)
        self.project_panel.forget(ids)

    def set_object_class(self, ids: list[str]) -> None:
        name = self.class_name
        with self._changing():
            for object_id in ids:
                annotation_layer.set_class(self.layer, object_id, name, self.class_color(name))
        self._changed()
        self.status.setText(f"{len(ids)} object{'s' * (len(ids) != 1)} set to {name}. {self._count_text()}")

    # -- autosave and resume --------------------------------------------------------------------
    def _sidecar(self) -> Path:
        from ..annotations.autosave import sidecar_path

        return sidecar_path(self.image_layer.metadata.get("slide_path"), self.source.identity, self.source.name)

    def _offer_resume(self) -> None:
        """Autosave from now on; first offer the objects an earlier session saved for this slide.
        Until they are in the layer (or set aside), nothing is autosaved: the sidecar stays whole."""
        from ..annotations import autosave

        path, layer = self._sidecar(), self.layer
        if not path.exists() or len(layer.data):
            self.autosave_path = path
            return
        self._resuming = True

        def resumed(count):
            if self.layer is layer:  # else another slide was started meanwhile: its sidecar is untouched
                self._resuming, self.autosave_path = False, path
                self._changed()
                if count:
                    self._learn_from_layer()

        def autosave_off(err) -> None:  # the sidecar stays as it is; nothing overwrites it
            self._resuming = False
            self._show_error(InputError(f"Autosave is off for this slide: {path} could not be set aside ({err}). "
                                        "Export your objects by hand."))

        def loaded(objects):
            if self.layer is not layer:
                return
            try:
                if isinstance(objects, Exception):
                    aside = autosave.set_aside(path)
                    self._show_error(InputError(f"The autosave {path} could not be read ({objects}); it was kept "
                                                f"as {aside.name}."))
                elif objects and self.confirm(f"{count(len(objects), 'object')} {'was' if len(objects) == 1 else 'were'} "
                                              f"saved for this slide in {path.name} "
                                              f"({path.parent}). Resume them?"):
                    self._add_loaded(objects, f"Resumed {count(len(objects), 'object')} from {path.name}.", then=resumed,
                                     failed=autosave_off)
                    return
                elif objects:
                    aside = autosave.set_aside(path)
                    self.status.setText(f"Not resumed: the earlier objects were kept in {aside}. {self._count_text()}")
            except OSError as err:
                autosave_off(err)
                return
            resumed(0)

        self.threads.run(lambda: autosave.load(path), loaded)

    def _decoder_trained(self, path, result) -> None:
        """A decoder trained on the project: in the picker, with its tissue and held-out verdict."""
        held = result.held_out
        self.settings.add_decoder_file(path, f"{result.provenance['tissue']}: {result.verdict.split(':')[0]}",
                                       f"{result.provenance['training_data']}. On {held['objects']} held-out objects "
                                       f"NoC@85 {held['decoder_noc']:.2f} against zero-shot SAM's "
                                       f"{held['sam_noc']:.2f}: {result.verdict}.")

    def _learn_from_layer(self) -> None:
        """The slide's learning takes the objects already in the layer (resumed, imported, or
        accepted before this Start) as examples, in the background (objects it has are left out)."""
        annotator = self.annotator
        if (annotator is None or annotator.adaptation is None or not annotator.adaptation.enabled
                or self.layer is None or not len(self.layer.data)):
            return  # (switching learning on later hands them over then)
        data, meta, _ = self.layer.as_layer_data_tuple()
        adaptation, source, tile = annotator.adaptation, annotator.source, annotator.tile_size
        self.threads.run(lambda: adaptation.add_resumed(annotation_layer.layer_data_objects(data, meta), source, tile,
                                                        tile_colour=annotator.tile_colour), lambda result: None)

    def _offer_live_object(self, annotator) -> None:
        """Keep the object being clicked on disk from now on; first offer back the one an earlier
        session left unaccepted (a crash, or napari closed while clicking)."""
        from ..annotations import autosave

        path, layer = autosave.live_path(self._sidecar()), self.layer

        def snapshot():  # on the writer's thread; the settings were read on the GUI thread
            class_name, color, min_area, tolerance, mpp = self._live_settings
            return (annotator.current_polygons(min_area, tolerance), class_name, color,
                    annotator.predictor.model.name, len(annotator.clicks), mpp)

        def loaded(objects):
            if self.annotator is not annotator or self.layer is not layer:
                return  # started again meanwhile: that Start asks
            try:
                if isinstance(objects, Exception):
                    aside = autosave.set_aside(path)
                    self._show_error(InputError(f"The object kept in {path} could not be read ({objects}); it was "
                                                f"kept as {aside.name}."))
                elif objects and self.confirm(
                        f"An object you had not accepted yet ({objects[0].class_name}, "
                        f"{count(objects[0].clicks, 'click')}) was kept when annotating stopped. Add it to the "
                        "accepted objects?"):
                    for obj in objects:
                        obj.properties.pop("unaccepted", None)
                        obj.properties["recovered"] = True
                    self._add_loaded(objects, "Added the object kept from before (Ctrl-Z does not remove it: "
                                              "delete it in the list if it is not wanted).")
                    autosave.remove(path)
                elif objects:
                    aside = autosave.set_aside(path)
                    self.status.setText(f"Not added: the object kept from before is in {aside}. {self._count_text()}")
            except OSError as err:
                self._show_error(InputError(f"The object kept in {path} could not be set aside ({err})."))
                return  # never overwritten: not kept from now on
            self.live.attach(path, snapshot)

        self.live.attach(None)
        if not path.exists():
            self.live.attach(path, snapshot)
            return
        self.threads.run(lambda: autosave.load(path), loaded)

    def _live_changed(self, state) -> None:
        if self.source is not None:
            name = self.class_name
            self._live_settings = (name, self.classes.get(name, (200, 0, 0)),
                                   min_area_px(self.min_area_spin.value(), self.source.mpp),
                                   self.simplify_spin.value(), self.source.mpp)
        self.live.changed(bool(state.clicks))

    @property
    def last_autosave(self):
        """A future: the latest autosave being written (None before the first)."""
        return self.autosaves.last

    def autosave_now(self) -> None:
        """Write the layer's objects to the sidecar in the background (atomically)."""
        self.autosaves.write_now()

    def _autosave_job(self):
        """What the autosave writer runs: the layer as it is now (copied here, on the GUI thread),
        converted and written off it; None when nothing is to be saved."""
        if self.autosave_path is None or self.layer is None or self._closed:
            return None
        from ..annotations import autosave

        data, meta, _ = self.layer.as_layer_data_tuple()
        path, mpp = self.autosave_path, self.layer.metadata.get("mpp")

        def save():
            try:
                autosave.save(path, annotation_layer.layer_data_objects(data, meta), mpp)
            except Exception as err:
                raise InputError(f"Autosave to {path} failed: {err}. Export your objects now.") from err

        return save

    def _flush_autosave(self) -> None:
        self.autosaves.flush()

    # -- progress and prefetching -------------------------------------------------------------
    def _listener(self, annotator):
        """Hears, on a worker thread, when ``annotator`` starts or finishes an embedding."""
        return lambda event, box, purpose: self.threads.emit(self._show_embedding, (event, box, purpose, annotator))

    def _show_embedding(self, item) -> None:
        from napari.utils import progress

        event, box, purpose, annotator = item
        key = box.key()
        self.progress_log.append((event, key, purpose))
        if event == "extended":  # the object grew into a tile by itself: draw it (unless clicks are queued)
            if annotator is self.annotator and annotator is not None:
                self.threads.run(annotator.state, lambda state: self._show_grown(annotator, state))
            return
        if event == "started" and annotator is self.annotator and annotator is not None:  # not a stopped one
            what = {"prefetch": "prefetching", "continuation": "continuing the object into"}.get(purpose, "computing")
            self._progress[key] = progress(total=0, desc=f"SAM: {what} the embedding of a {self._tile_text(box)}")
            if purpose == "click":
                self.status.setText(f"Computing the SAM embedding around the click ({self._tile_text(box)})…")
            elif purpose == "continuation":
                self.status.setText(f"The object reaches a tile border: continuing it in the next tile "
                                    f"({self._tile_text(box)})…")
        else:
            bar = self._progress.pop(key, None)
            if bar is not None:
                bar.close()

    def _set_growing(self, on: bool) -> None:
        """Switch continuation past tile borders on or off for the running annotator (off stops it
        before its next tile)."""
        if self.annotator is not None:
            self.annotator.continuation = bool(on)
            if not on:
                self.annotator.stop_continuation()

    def _show_grown(self, annotator, state) -> None:
        if annotator is not self.annotator or self.pending or isinstance(state, Exception):
            return  # restarted, or a queued click will draw a newer state
        if self._edited_mask() is not None:  # painted by hand meanwhile: the user's mask stays
            self.status.setText("The object also continues past the tile border; a new click shows it "
                                "(Enter accepts what you painted).")
            return
        self._show_state(state, action=False)
        tiles = len(state.boxes)
        self.status.setText(f"The object continues past the tile border ({count(tiles, 'tile')}). Enter accepts as "
                            f"{self.class_name}, Escape cancels.")

    def _schedule_prefetch(self, *_) -> None:
        if self.annotator is not None and self.prefetch_check.isChecked():
            self._prefetch_timer.start()

    def prefetch_now(self) -> None:
        """Prefetch the tiles around the view's centre (and where the current object is cut) in the
        background; a later call supersedes this one. Only while no click is pending."""
        if self.annotator is None or self.pending or not self.prefetch_check.isChecked():
            return
        center = self._camera().center[-2:]
        row, col = self.image_layer.world_to_data(center)[-2:]
        self.prefetch_future = self.annotator.prefetch_around(*napari_to_level0(col, row),
                                                              self._view_level().downsample)

    # -- export / import ----------------------------------------------------------------------
    def _layer_tuple(self):
        data, meta, _ = self.layer.as_layer_data_tuple()
        meta = dict(meta)
        meta["metadata"] = dict(meta.get("metadata") or {}, mpp=self.source.mpp,
                                level0_size=tuple(self.source.level_dimensions[0]))
        if self.class_table is not None and self.class_table.path is not None:
            meta["metadata"]["class_table"] = str(self.class_table.path)
        return data, meta

    def export_geojson(self, path: str | Path, overwrite: bool = False):
        """Write the layer as napari's File > Save Selected Layers does (same writer); returns a future."""
        from .writers import write_shapes_geojson

        return self._export(write_shapes_geojson, path, overwrite, "GeoJSON")

    def export_tiff(self, path: str | Path, overwrite: bool = False):
        from .writers import write_shapes_tiff

        return self._export(write_shapes_tiff, path, overwrite, "TIFF", empty_ok=False)

    def _export(self, writer, path, overwrite: bool, kind: str, empty_ok: bool = True):
        """The layer as it is now, written by ``writer`` on a worker thread; returns a future."""
        from ..atomic import refuse_existing

        if not overwrite:
            refuse_existing(path)
        data, meta = self._layer_tuple()
        if not data and not empty_ok:
            raise InputError("There is no accepted object to export yet.")
        return self.threads.run(lambda: Path(writer(str(path), data, meta)[0]), lambda r: self._exported(r, kind))

    def _exported(self, result, kind: str) -> None:
        if isinstance(result, Exception):
            self._show_error(result)
        else:
            n = annotation_layer.object_count(self.layer)
            self.status.setText(f"Exported {n} object{'s' * (n != 1)} as {kind}: {result}")

    def import_geojson(self, path: str | Path):
        """Add the objects of a GeoJSON file: read and compared off the GUI thread, then drawn a few
        per event-loop turn. Objects already in the layer (same id, or same class and region) are not
        added again. Returns a future of the number added."""
        from concurrent.futures import Future

        from ..annotations.geojson import read_geojson

        added: Future = Future()
        data, meta, _ = self.layer.as_layer_data_tuple()

        def load():
            objects = read_geojson(path)
            here = annotation_layer.layer_data_objects(data, meta)
            return objects, not_yet_in(objects, here)

        def loaded(result):
            if isinstance(result, Exception):
                self._show_error(result)
                added.set_result(0)
                return
            objects, new = result
            again = len(objects) - len(new)
            self._add_loaded(new, f"Imported {count(len(new), 'object')} from {Path(path).name}"
                             + (f" ({again} already here, not added again)." if again else "."), added,
                             then=lambda n: self._learn_from_layer() if n else None)

        self.threads.run(load, loaded)
        return added

    def _add_loaded(self, objects, message: str, done=None, then=None, failed=None) -> None:
        """Draw loaded objects into the current annotations layer, about ``STEP_BUDGET_S`` of work
        per event-loop turn; ``done`` (a future) gets the count, ``then(count)`` runs at the end."""
        import time

        layer = self.layer  # the objects belong to this slide, even if another is started meanwhile
        for obj in objects:
            if obj.class_name not in self.classes:  # an imported class keeps its file's colour
                self.classes[obj.class_name] = tuple(obj.color)

        def steps():
            start = time.perf_counter()
            for obj in objects:
                with self._changing():
                    annotation_layer.add_objects(layer, [obj], self.class_color)
                if time.perf_counter() - start > STEP_BUDGET_S:
                    yield
                    start = time.perf_counter()
            if layer is self.layer:
                self._changed()
                self.status.setText(f"{message} {self._count_text()}")
            if done is not None:
                done.set_result(len(objects))
            if then is not None:
                then(len(objects))

        def error(err):
            self._show_error(err)
            if done is not None and not done.done():
                done.set_result(0)
            if failed is not None:
                failed(err)

        self.threads.steps(steps(), error)

    def _suggested(self, suffix: str) -> str:
        """A file beside the slide named after it: the slide's name without its extensions
        (``slide.ome.tif`` -> ``slide``), then ``suffix``."""
        path = self.image_layer.metadata.get("slide_path") if self.image_layer is not None else None
        name = slide_stem(Path(path).name if path else (self.source.name if self.source else "annotations"))
        return str((Path(path).parent if path else Path.home()) / f"{name}{suffix}")

    def _file_action(self, action, save: bool, caption: str, filter_: str, suffix: str, name: str | None = None):
        if self.annotator is None or self.layer is None:
            self.status.setText(NOT_STARTED)
            return
        if save:
            path, _ = QFileDialog.getSaveFileName(self, caption, self._suggested(name or suffix), filter_)
        else:
            path, _ = QFileDialog.getOpenFileName(self, caption, str(Path(self._suggested(suffix)).parent), filter_)
        if not path:
            return
        try:
            action(_with_suffix(path, suffix), overwrite=True) if save else action(path)
            self.status.setText(f"{caption}: {Path(path).name}…")
        except (SamHistoError, OSError) as err:
            self._show_error(err)

    def _export_geojson_clicked(self):
        self._file_action(self.export_geojson, True, "Export GeoJSON", "GeoJSON (*.geojson)", ".geojson")

    def _export_tiff_clicked(self):
        # "-labels": the slide itself may be an .ome.tif of the same name
        self._file_action(self.export_tiff, True, "Export TIFF", "OME-TIFF (*.ome.tif)", ".ome.tif", "-labels.ome.tif")

    def _import_clicked(self):
        self._file_action(self.import_geojson, False, "Import GeoJSON", "GeoJSON (*.geojson *.json)", ".geojson")

    # -- plumbing -----------------------------------------------------------------------------
    def _show_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")


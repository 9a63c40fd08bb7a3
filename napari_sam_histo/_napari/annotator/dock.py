"""The "Annotator" dock: click on a slide, refine, correct by hand, accept, export. It lays out
its parts and forwards to them (the annotator's state is drawn by ``clicking``); the session itself
is built outside Qt (``assembly.annotating``) on a worker thread, and every part is a module of this
package (see ``__init__``; the mouse and keys: ``canvas_input``).

Manual correction: *SAM current object* is an ordinary Labels layer; painting or erasing on it
(napari's brush and eraser) changes the object, and Accept takes the painted mask. A click after
painting starts from SAM's mask again (the status says so). Pressing *Start* again (other model,
decoder, level…) keeps the accepted objects, and never drops the object being clicked without
asking. Everything slow runs on worker threads; results are drawn from the GUI thread when they
arrive, so napari never blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QMessageBox, QPushButton, QScrollArea, QVBoxLayout, QWidget

from ...errors import SamHistoError
from ..adaptation_panel import AdaptationPanel
from ..annotator_settings import AnnotatorSettings, warm_up
from ..gui_threads import GuiThreads
from ..object_list import ObjectList
from ..project_panel import ProjectPanel
from .accepted import AcceptedObjects
from .canvas_input import BINDINGS, CanvasInput
from .classes import ClassPicker
from .click_queue import ClickQueue
from .clicking import Clicking
from .edits import Edits
from .history import History
from .progress import EmbeddingProgress, Prefetch
from .resume import Resume
from .session import Session
from .transfer import Transfer
from .view import View, tile_text
from .working_layers import WorkingLayers

WARM_UP_DELAY_MS = 300


def ask(parent: QWidget, question: str) -> bool:
    """A Yes/No dialog over ``parent`` (No unless the user says Yes)."""
    answer = QMessageBox.question(parent, "SAM Histo", question,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class AnnotatorDock(QWidget):
    def __init__(self, napari_viewer, parent=None, confirm: Callable[[str], bool] | None = None) -> None:
        """``confirm(question)``: asked before anything is discarded (None: a Yes/No dialog over the
        dock, ``ask``)."""
        super().__init__(parent)
        self.viewer = napari_viewer
        self.confirm: Callable[[str], bool] = confirm if confirm is not None else lambda question: ask(self, question)
        self.threads = GuiThreads(self)
        self.session = Session(self)  # (the parts below ask it for the annotator and the slide)
        self.edits = Edits(self)
        self.clicking = Clicking(self)
        self.history = History()
        self.view = View(napari_viewer)
        self.layers = WorkingLayers(napari_viewer)
        self.canvas_input = CanvasInput(napari_viewer, lambda position, negative: self._click_at(position, negative))
        self.queue = ClickQueue(self.threads, lambda: self.annotator, lambda: self.prefetch.stop())
        self.prefetch = Prefetch(self, self._start_prefetch)
        self.progress = EmbeddingProgress(self.threads, lambda: self.annotator, self.say,
                                          lambda box: tile_text(self.annotator, self.source, box),
                                          self.clicking.grown)
        self._build()
        self.accepted = AcceptedObjects(self.threads, self.history, self.object_list,
                                        lambda: self.source.mpp if self.source is not None else None,
                                        lambda: self.resume.changed(), self)
        self.transfer = Transfer(self, self.threads, self.accepted, self.class_picker,
                                 lambda: (self.image_layer, self.source), lambda: self.annotator is not None,
                                 self.say, self.show_error, self.learn_from_layer)
        self.resume = Resume(self.threads, self.accepted, lambda question: self.confirm(question), self.say,
                             self.show_error, self.transfer.add_loaded, self.learn_from_layer, self)
        self.viewer.layers.events.inserted.connect(self.settings.fill_layers)
        self.viewer.layers.events.removed.connect(self.settings.fill_layers)
        self.viewer.layers.events.removed.connect(self.session.layer_removed)
        from qtpy.QtWidgets import QApplication

        QApplication.instance().aboutToQuit.connect(self.close_session)  # save the last edits when napari quits
        self.settings.fill_layers()
        # torch and friends are imported off the GUI thread, once napari has drawn the dock (an import
        # running on a worker meanwhile would hold module locks that the dock's own creation waits on)
        self.warmed_up = False  # the warm-up below has ended (its imports hold the GIL for seconds)
        QTimer.singleShot(WARM_UP_DELAY_MS, lambda: self.threads.run(warm_up, self._warmed_up, self._warm_up_failed))

    def _warmed_up(self, models) -> None:
        self.warmed_up = True
        self.settings.fill_models(models)

    def _warm_up_failed(self, err) -> None:
        self.warmed_up = True  # the first Start pays for the imports instead
        self.show_error(err)

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
        self.settings = s = AnnotatorSettings(self.viewer)
        layout.addWidget(s)
        (self.layer_combo, self.model_combo, self.decoder_combo, self.device_combo, self.level_combo, self.tile_spin,
         self.min_area_spin, self.simplify_spin, self.prefetch_check, self.grow_check, self.disk_check) = (
            s.layer_combo, s.model_combo, s.decoder_combo, s.device_combo, s.level_combo, s.tile_spin,
            s.min_area_spin, s.simplify_spin, s.prefetch_check, s.grow_check, s.disk_check)
        self.grow_check.toggled.connect(self._set_growing)
        self.class_picker = ClassPicker(self.show_error, self.say, self._recoloured, lambda: self.accepted.layer,
                                        lambda color: self.layers.colour(color) if self.annotator is not None else None,
                                        lambda name, added: self.clicking.class_chosen(name, added))
        self.class_combo = self.class_picker.combo
        layout.addWidget(self.class_picker)
        self.start_button = QPushButton("Start annotating")
        self.start_button.clicked.connect(self.start)
        layout.addWidget(self.start_button)
        self.buttons = {}
        for buttons in ((("Undo", self.undo, "Ctrl-Z"), ("Redo", self.redo, "Ctrl-Shift-Z"),
                         ("Clear", self.clear, "Escape: drop the object being clicked (Ctrl-Z brings it back)"),
                         ("Accept", self.accept, "Enter")),
                        (("Export GeoJSON…", lambda: self.transfer.export_geojson_clicked(), ""),
                         ("Export TIFF…", lambda: self.transfer.export_tiff_clicked(), ""),
                         ("Import GeoJSON…", lambda: self.transfer.import_clicked(), ""))):
            row = QHBoxLayout()
            for name, slot, tip in buttons:
                row.addWidget(self._button(name, slot, tip))
            layout.addLayout(row)
        self.status = QLabel("Open a slide, pick it above and press Start.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        objects = QGroupBox("Objects")
        self.object_list = ObjectList()
        self.object_list.zoom_requested.connect(self.zoom_to)
        self.object_list.delete_requested.connect(self.delete_objects)
        self.object_list.class_requested.connect(self.set_object_class)
        QVBoxLayout(objects).addWidget(self.object_list)
        layout.addWidget(objects)
        self.adaptation_panel = AdaptationPanel(self.threads)
        self.adaptation_panel.check.toggled.connect(lambda on: self.learn_from_layer() if on else None)
        layout.addWidget(self.adaptation_panel)
        self.project_panel = ProjectPanel(self.threads, self.settings.add_trained_decoder)
        layout.addWidget(self.project_panel)
        help_label = QLabel(BINDINGS)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: gray")
        layout.addWidget(help_label)
        layout.addStretch()
        from ..dock_tabs import needed_width

        scroll.setMinimumWidth(needed_width(scroll))  # never cut at the right edge (a horizontal scroll bar)

    def _button(self, name: str, slot, tip: str = "") -> QPushButton:
        button = QPushButton(name)
        button.setToolTip(tip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep going to the canvas
        button.clicked.connect(slot)
        self.buttons[name] = button
        return button

    # -- what the parts share -----------------------------------------------------------------
    annotator = property(lambda self: self.session.annotator)
    source = property(lambda self: self.session.source)  # the open slide
    image_layer = property(lambda self: self.view.image_layer)
    layer = property(lambda self: self.accepted.layer)  # the slide's annotations (Shapes): the accepted objects
    pending = property(lambda self: self.queue.pending)  # clicks and actions queued, not yet drawn
    progress_log = property(lambda self: self.progress.log)
    autosave_path = property(lambda self: self.resume.path)
    last_autosave = property(lambda self: self.resume.writes.last)  # a future: the latest autosave (None before)
    prefetch_future = property(lambda self: self.prefetch.future)
    classes = property(lambda self: self.class_picker.classes)  # every class's colour (the annotator shares it)
    class_name = property(lambda self: self.class_picker.name)

    def say(self, text: str) -> None:
        self.status.setText(text)

    def show_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")

    def count_text(self) -> str:
        return self.accepted.count_text()

    def ready(self) -> bool:
        """Whether the dock takes a click or an action now; if not, the status says why."""
        return self.session.ready()

    # -- start and stop (``session``) -----------------------------------------------------------
    def start(self) -> None:
        """Start (or restart with other settings). Accepted objects stay in their layer; the object
        being clicked is dropped only when the user confirms."""
        self.session.start()

    def shutdown(self, wait: bool = False) -> None:
        self.session.shutdown(wait)

    def close_session(self, wait: bool = False) -> None:
        self.session.close(wait)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.close_session()
        super().closeEvent(event)

    def event(self, event) -> bool:  # noqa: D102
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.ParentChange:
            self.session.parent_changed(self.parent() is not None)
        return super().event(event)

    # -- clicks and actions ---------------------------------------------------------------------
    def _click_at(self, world_position, negative: bool) -> None:
        self.add_click(*self.view.level0(world_position), positive=not negative)

    def add_click(self, x0: float, y0: float, positive: bool = True) -> None:
        """A click at level-0 pixel (x0, y0); the mask is drawn when the decoder has run."""
        self.clicking.add_click(x0, y0, positive)

    def undo(self) -> None:
        """Undo the last click, Accept, Clear or deletion, whichever came last."""
        self.edits.undo()

    def redo(self) -> None:
        self.edits.redo()

    def clear(self) -> None:
        """Drop the object being clicked (Ctrl-Z brings it back)."""
        self.edits.clear()

    def accept(self) -> None:
        """Accept the object being clicked (or its hand-corrected mask) as the current class."""
        self.clicking.accept()

    def _set_growing(self, on: bool) -> None:
        """Continuation past tile borders on or off for the running annotator (off stops it before
        its next tile)."""
        if self.annotator is not None:
            self.annotator.continuation = bool(on)
            if not on:
                self.annotator.stop_continuation()

    # -- the view -------------------------------------------------------------------------------
    def view_box(self) -> tuple[float, float, float, float]:
        """The level-0 box (x0, y0, x1, y1) on screen now."""
        return self.view.box()

    def view_level(self):
        """The working level for what is on screen now (``Annotator.level_for_view``; the fixed level
        when one is pinned)."""
        return self.annotator.level_for_view(*self.view.extent())

    def view_moved(self, *_) -> None:
        """The annotator grows objects only inside what the user sees (``ObjectTiles.view``)."""
        if self.annotator is not None and self.image_layer is not None:
            self.annotator.view = self.view_box()

    def fit_view(self, x0: float, y0: float, x1: float, y1: float, fill: float = 0.8) -> None:
        self.view.fit(x0, y0, x1, y1, fill)

    def annotator_layers(self) -> list:
        """The layers the annotator draws on: the accepted objects and the working layers there are."""
        return [self.layer, *(self.viewer.layers[n] for n in self.layers.present())]

    def keep_layers_on_top(self) -> None:
        """Every image layer above one of the annotator's layers goes just below them."""
        if self.annotator is not None:
            self.view.keep_on_top(self.annotator_layers())

    def schedule_prefetch(self, *_) -> None:
        if self.annotator is not None and self.prefetch_check.isChecked():
            self.prefetch.schedule()

    def prefetch_now(self) -> None:
        """Prefetch the tiles around the view's centre (and where the current object is cut) in the
        background; a later call supersedes this one. Only while no click is pending."""
        self.prefetch.now()

    def _start_prefetch(self):
        if self.annotator is None or self.pending or not self.prefetch_check.isChecked():
            return None
        return self.annotator.prefetch_around(*self.view.center0(), self.view_level().downsample)

    # -- the accepted objects -------------------------------------------------------------------
    def objects(self):
        """The accepted objects, as the annotations layer holds them now."""
        return self.accepted.objects()

    def zoom_to(self, object_id: str) -> None:
        """Centre the view on one object and zoom so that it fills most of the canvas."""
        extent = self.accepted.extent(object_id)
        if extent is not None:
            self.fit_view(*extent)

    def delete_objects(self, ids: list[str]) -> None:
        """Delete objects (from the list's Delete button); Ctrl-Z brings them back."""
        self.edits.delete_objects(ids)

    def set_object_class(self, ids: list[str]) -> None:
        name = self.class_picker.name
        self.accepted.set_class(ids, name, self.class_picker.color(name))
        self.say(f"{len(ids)} object{'s' * (len(ids) != 1)} set to {name}. {self.count_text()}")

    def set_class_color(self, name: str, color) -> None:
        """Give class ``name`` a colour: the accepted objects of that class follow."""
        self.class_picker.set_color(name, color)

    def _recoloured(self, name: str) -> None:
        self.accepted.recolor(self.class_picker.color)

    def learn_from_layer(self) -> None:
        """The slide's learning takes the objects already in the layer (resumed, imported, or
        accepted before this Start) as examples, in the background (objects it has are left out)."""
        self.accepted.teach(self.annotator)

    # -- export / import (``transfer``) ------------------------------------------------------------
    def autosave_now(self) -> None:
        """Write the layer's objects to the sidecar in the background (atomically)."""
        self.resume.writes.write_now()

    def export_geojson(self, path, overwrite: bool = False):
        """Write the layer as napari's File > Save Selected Layers does (same writer); returns a future."""
        return self.transfer.export_geojson(path, overwrite)

    def export_tiff(self, path, overwrite: bool = False):
        return self.transfer.export_tiff(path, overwrite)

    def import_geojson(self, path):
        """Add the objects of a GeoJSON file; returns a future of the number added."""
        return self.transfer.import_geojson(path)


"""The dock's annotating session through its life: Start (the session built on a worker thread by
``assembly.annotating``, then set up in steps so napari repaints between layers), a Start again
with other settings (the slide stays open, what the slide taught goes on), stopping (every hook
given back to napari) and closing (the last edits saved, the slide closed once the annotator's
threads stop reading it). A layer the annotator needs that the user deletes stops annotating."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qtpy.QtWidgets import QPushButton

from ...assembly.annotating import assemble, carry_learning
from ...errors import InputError, SamHistoError
from .. import annotation_layer
from ..adaptation_panel import AdaptationPanel
from ..annotator_settings import AnnotatorSettings, source_spec
from ..gui_threads import GuiThreads
from ..project_panel import ProjectPanel
from ..wording import count
from .accepted import AcceptedObjects
from .canvas_input import CanvasInput, KeyActions
from .classes import ClassPicker
from .click_queue import ClickQueue
from .history import History
from .progress import EmbeddingProgress, Prefetch
from .resume import Resume
from .view import View, level_text
from .working_layers import NAMES, WorkingLayers

if TYPE_CHECKING:  # (the dock imports torch off the GUI thread, after it is drawn)
    from napari.layers import Image, Shapes
    from napari.viewer import Viewer

    from ...engine.annotator import Annotator
    from ...engine.working_levels import WorkingLevel

NOT_STARTED = "⚠ Press Start annotating first (pick the slide under Image)."


@runtime_checkable
class Painting(Protocol):
    """The dock's ``Clicking``, as a session hooks it to the object's layer."""

    def painted(self, event=None) -> None: ...  # the user painted on the object being clicked


@runtime_checkable
class Suggesting(Protocol):
    """The dock's ``Transfer``, as a session asks it where the slide's files go."""

    def suggested(self, suffix: str) -> str: ...  # a file beside the slide, named after it


@runtime_checkable
class SessionDock(Protocol):
    """What a ``Session`` uses of the dock (``AnnotatorDock``): the parts it sets up for a new
    annotator and takes down again, what it says and asks, and the actions its keys call."""

    viewer: Viewer
    threads: GuiThreads
    settings: AnnotatorSettings  # what Start builds
    start_button: QPushButton
    adaptation_panel: AdaptationPanel
    project_panel: ProjectPanel
    class_picker: ClassPicker
    accepted: AcceptedObjects
    resume: Resume
    transfer: Suggesting
    clicking: Painting
    view: View
    layers: WorkingLayers
    canvas_input: CanvasInput
    queue: ClickQueue
    history: History
    progress: EmbeddingProgress
    prefetch: Prefetch

    @property
    def pending(self) -> int: ...  # clicks and actions queued, not yet drawn

    @property
    def image_layer(self) -> Image | None: ...

    @property
    def layer(self) -> Shapes | None: ...  # the accepted objects

    def say(self, text: str) -> None: ...

    def show_error(self, err: Exception) -> None: ...

    def confirm(self, question: str) -> bool: ...  # asked before anything is discarded

    def count_text(self) -> str: ...

    def accept(self) -> None: ...

    def clear(self) -> None: ...

    def undo(self) -> None: ...

    def redo(self) -> None: ...

    def view_level(self) -> WorkingLevel: ...

    def view_moved(self, *_) -> None: ...

    def schedule_prefetch(self, *_) -> None: ...

    def annotator_layers(self) -> list: ...  # the accepted objects' layer and the working layers

    def keep_layers_on_top(self) -> None: ...

    def learn_from_layer(self) -> None: ...

    def close_session(self, wait: bool = False) -> None: ...


class Session:
    def __init__(self, dock: SessionDock) -> None:
        """``dock``: the ``AnnotatorDock`` whose parts the session sets up and takes down."""
        self.dock = dock
        self.annotator: Annotator | None = None
        self.source = None  # the open slide, reused by every Start on the same image
        self._source_of = None  # the image layer ``source`` was opened for
        self._stopped = None  # the last annotator stopped: its threads may still read the slide
        self._closed_source = None
        self.starting = False  # between Start and the end of set-up
        self.closed = self._closing = False
        self._was_docked = False

    def level_text(self, downsample: float | None = None) -> str:
        return level_text(self.annotator, self.source, downsample)

    def ready(self) -> bool:
        """Whether the dock takes a click or an action now; if not, the status says why."""
        if self.starting:
            self.dock.say("Loading the new settings… (clicks and keys are taken once it is ready)")
        elif self.annotator is None:
            self.dock.say(NOT_STARTED)
        return self.annotator is not None and not self.starting

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        dock = self.dock
        layer = dock.settings.chosen_layer()
        if layer is None:
            dock.say("⚠ Open an image or slide first (File > Open, or File > Open Sample).")
            return
        if self.starting:
            return
        if dock.pending:
            dock.say(f"⚠ Wait until the {count(dock.pending, 'click or action', 'clicks and actions')} under way "
                     f"{'has' if dock.pending == 1 else 'have'} run, then press Start again.")
            return
        if self.annotator is not None and self.annotator.clicks and not dock.confirm(
                f"Starting again drops the object being clicked ({count(len(self.annotator.clicks), 'click')}). "
                "Drop it?"):
            dock.say("Start cancelled: the object being clicked is kept. Press Enter to accept it first.")
            return
        if self.annotator is not None and self.annotator.clicks:  # dropped by the user: not offered back
            dock.resume.live.changed(False)
        try:
            spec = None if layer is self._source_of else source_spec(layer)
        except SamHistoError as err:
            dock.show_error(err)
            return
        config = dock.settings.config(learning=dock.adaptation_panel.wanted)
        old = self.annotator or self._stopped
        learnt = old.adaptation if old is not None else None  # what the slide taught so far
        reused, relay = self.source, dock.adaptation_panel.relay
        dock.say(f"Loading {config.model}…")
        self.starting = True  # until set up: clicks and keys wait (the current annotator stays as it is)
        dock.start_button.setEnabled(False)
        dock.threads.run(lambda: assemble(config, spec, reused, learnt, relay),
                         lambda result: self._built(layer, *result), self._build_failed)

    def _build_failed(self, err) -> None:
        self.starting = False
        self.dock.start_button.setEnabled(True)
        self.dock.show_error(err)

    def _built(self, layer, annotator, source) -> None:
        if self.closed:  # the dock went away while the model loaded
            annotator.close()
            if source is not self._closed_source:
                source.close()
            return
        old = self.annotator or self._stopped
        # the same slide, model and decoder: what was learned goes on
        carry_learning(annotator, old, self.dock.adaptation_panel.wanted, self.dock.adaptation_panel.relay)
        self.shutdown()
        self.dock.threads.steps(self._set_up(layer, annotator, source, old),  # napari repaints between layers
                                lambda err: self._set_up_failed(err, annotator, source))

    def _set_up_failed(self, err, annotator, source) -> None:
        """A set-up step failed (a layer it needs was deleted meanwhile, the dock was closed…): the
        new annotator goes, the dock stays usable, and the status says what happened."""
        annotator.close()
        self.shutdown()
        if not self.closed and source is not self.source:
            source.close()
        self.starting = False
        self.dock.start_button.setEnabled(True)
        if not self.closed:
            self.dock.show_error(err)

    def _still_setting_up(self, layer) -> None:
        """Between set-up steps: ``InputError`` when what it needs is gone."""
        if self.closed:
            raise InputError("The dock was closed while starting.")
        if layer not in self.dock.viewer.layers:
            raise InputError(f"The image '{layer.name}' was removed while starting: open it and press Start again.")
        for name in self.dock.layers.missing():
            raise InputError(f"The layer '{name}' was removed while starting: press Start again.")

    def _set_up(self, layer, annotator, source, old=None):
        """Layers, callbacks and keys for a new annotator; the dock takes clicks once it is done.
        ``old``: the annotator it replaces, whose threads may still be reading the old slide."""
        dock = self.dock
        new_layer = annotation_layer.layer_for(dock.viewer, layer, source.identity,
                                               edge_width=3 * annotator.grid.downsample)
        if new_layer is not dock.accepted.layer:
            dock.resume.new_layer()
            dock.accepted.layer = new_layer
            dock.class_picker.load_table(layer.metadata.get("slide_path"))
        if source is not self.source:
            previous = self.source
            if previous is not None:  # closed once the old annotator's threads have stopped reading it
                dock.threads.run(lambda: (old.close(wait=True) if old is not None else None, previous.close()),
                                 lambda result: None, lambda err: None)
            self.source, self._source_of = source, layer
        dock.view.image_layer = layer
        dock.queue.reset()
        dock.history.reset()
        annotator.classes = dock.class_picker.classes  # one list of classes and colours, shared
        annotator.listeners.append(dock.progress.listener(annotator))
        dock.settings.show_min_area_unit(source.mpp)
        scale, units = tuple(layer.scale[-2:]), {"units": tuple(layer.units[-2:])}
        dock.layers.made = False  # (made, or made again, below: a layer deleted before is no reason to stop)
        yield
        self._still_setting_up(layer)
        for _ in dock.layers.make(scale, units, annotator.grid.downsample):
            yield
            self._still_setting_up(layer)
        dock.layers.finish()
        dock.layers.colour(dock.class_picker.color(dock.class_picker.name))
        yield
        self._still_setting_up(layer)
        hooks, camera = dock.canvas_input, dock.view.camera
        dock.accepted.connect(hooks.connect)
        hooks.connect(dock.layers.current.events.paint, dock.clicking.painted)
        dock.view.show_slide(layer, dock.annotator_layers())
        dock.viewer.layers.selection.active = layer
        hooks.attach([dock.viewer, dock.layers.current, dock.layers.clicks],
                     KeyActions(accept=lambda: dock.accept(), cancel=lambda: dock.clear(), undo=lambda: dock.undo(),
                                redo=lambda: dock.redo()))
        for emitter in (camera.events.center, camera.events.zoom):
            hooks.connect(emitter, dock.schedule_prefetch)
            hooks.connect(emitter, dock.view_moved)
        hooks.connect(dock.viewer.layers.events.inserted, self._image_added)
        self.annotator = annotator
        dock.view_moved()
        dock.adaptation_panel.attach(annotator.adaptation, source.name, dock.transfer.suggested("-adapted-decoder.pt"))
        dock.project_panel.attach(annotator, layer.metadata.get("slide_path"))
        self.starting = False
        dock.start_button.setEnabled(True)
        level = self.level_text(dock.view_level().downsample) + (", following the view" if annotator.auto else "")
        dock.say(f"{annotator.predictor.provenance.text} ready at {level}. Click on the image. {dock.count_text()}")
        dock.accepted.refresh()
        sidecar = self._sidecar()
        if dock.resume.path is None and not dock.resume.resuming:
            dock.resume.offer(sidecar)
        from ...annotations.autosave import live_path

        dock.resume.offer_live(annotator, live_path(sidecar), lambda: (self.annotator, dock.accepted.layer))
        dock.learn_from_layer()
        dock.schedule_prefetch()

    def _sidecar(self):
        from ...annotations.autosave import sidecar_path

        return sidecar_path(self.dock.image_layer.metadata.get("slide_path"), self.source.identity, self.source.name)

    def _image_added(self, event=None) -> None:
        """An image opened while annotating goes below the annotator's layers (after napari has
        inserted it), so the clicks, the object being clicked and the accepted objects stay visible."""
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self.dock.keep_layers_on_top)

    # -- stop -----------------------------------------------------------------------------------
    def shutdown(self, wait: bool = False) -> None:
        """Stop the annotator's threads, close its progress bars and take back every callback and
        key binding it added to napari (the dock can start again). The slide stays open for the next
        Start; ``close`` closes it."""
        dock = self.dock
        dock.prefetch.stop()
        dock.adaptation_panel.attach(None)
        dock.project_panel.detach()
        if self.annotator is not None:
            self.annotator.close(wait=wait)
            self._stopped, self.annotator = self.annotator, None
        elif wait and self._stopped is not None:
            self._stopped.close(wait=True)  # stopped earlier without waiting: its threads end now
        dock.queue.reset()  # the stopped annotator's results are dropped: nothing is pending any more
        dock.layers.forget()
        dock.progress.close()
        dock.canvas_input.release()

    def close(self, wait: bool = False) -> None:
        """Everything ``shutdown`` does, then save what is unsaved and close the slide. Runs when
        the dock is closed or removed, or napari quits (napari removes a dock without closing it)."""
        if self.closed or self._closing:
            return
        dock = self.dock
        self._closing = True
        old = self.annotator or self._stopped
        dock.resume.live.close()  # the object being clicked stays on disk: the next Start offers it back
        self.shutdown(wait=wait)
        dock.resume.close()  # the last edits, before autosave stops for good
        self.closed = True
        dock.project_panel.close()  # the objects being written to the project are written first
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        for emitter, callback in (*(((app.aboutToQuit, dock.close_session),) if app is not None else ()),
                                  (dock.viewer.layers.events.removed, self.layer_removed),
                                  (dock.viewer.layers.events.inserted, dock.settings.fill_layers),
                                  (dock.viewer.layers.events.removed, dock.settings.fill_layers)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        with contextlib.suppress(RuntimeError, KeyError, ValueError):  # napari may be tearing its viewer down
            dock.layers.remove()
        if self.source is not None:
            source = self._closed_source = self.source
            if old is not None and not wait:  # its threads may still read the slide: close after them
                dock.threads.run(lambda: (old.close(wait=True), source.close()), lambda result: None, lambda err: None)
            else:
                source.close()
            self.source = self._source_of = None

    def parent_changed(self, docked: bool) -> None:
        """napari's remove_dock_widget unparents the dock: it never gets closeEvent."""
        if not docked and self._was_docked:
            self.dock.close_session()
        elif docked:
            self._was_docked = True

    def layer_removed(self, event) -> None:
        """A layer the annotator draws on was deleted by the user: stop annotating and say so (the
        accepted objects are in the autosave; Start offers them back)."""
        dock, removed = self.dock, event.value
        if self.annotator is None or removed is None or self.closed:
            return
        if removed is dock.layer or removed is dock.image_layer or removed.name in NAMES:
            if removed is dock.layer:
                dock.resume.writes.flush()
            self.shutdown()
            dock.say(f"⚠ The layer '{removed.name}' was deleted, so annotating stopped. Press Start "
                     "to go on (accepted objects are autosaved, and Start offers them back).")

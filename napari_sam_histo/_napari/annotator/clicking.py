"""The object being clicked, as the dock shows it: a click drawn at once and queued on the
annotator (the mask follows when the decoder has run), Accept queued with the dock's cleaning and
the view, every state the annotator hands back drawn with a status line saying what it is, a failed
action said, and how the live object is kept on disk (``resume``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qtpy.QtWidgets import QDoubleSpinBox

from ...annotations.cleaning import min_area_px
from ...errors import SamHistoError
from .edits import Edits
from .history import ClickStep
from .object_actions_dock import ObjectActionsDock
from .resume import LiveSettings, Resume

if TYPE_CHECKING:  # (the dock imports torch off the GUI thread, after it is drawn)
    from napari.layers import Image

    from ...engine.working_levels import WorkingLevel


@runtime_checkable
class ClickingDock(ObjectActionsDock, Protocol):
    """What ``Clicking`` uses of the dock (``AnnotatorDock``)."""

    resume: Resume
    edits: Edits
    min_area_spin: QDoubleSpinBox  # the cleaning at Accept
    simplify_spin: QDoubleSpinBox

    @property
    def image_layer(self) -> Image | None: ...

    @property
    def classes(self) -> dict[str, tuple[int, int, int]]: ...  # every class's colour

    def show_error(self, err: Exception) -> None: ...

    def view_box(self) -> tuple[float, float, float, float]: ...

    def view_level(self) -> WorkingLevel: ...

    def view_moved(self, *_) -> None: ...

    def schedule_prefetch(self, *_) -> None: ...


class Clicking:
    def __init__(self, dock: ClickingDock) -> None:
        """``dock``: the ``AnnotatorDock`` whose annotator, layers, queue and status the clicks go through."""
        self.dock = dock

    def add_click(self, x0: float, y0: float, positive: bool = True) -> None:
        dock = self.dock
        if not dock.ready():
            return
        try:
            dock.annotator.check_click(x0, y0)
        except SamHistoError as err:
            dock.show_error(err)
            return
        dock.layers.add_click(x0, y0, positive)  # drawn at once; the mask follows when the decoder has run
        dock.history.record(ClickStep())
        dock.view_moved()
        level = dock.view_level()
        dock.queue.submit(lambda a: a.submit_click(x0, y0, positive, level.downsample), self.show_state, self.failed)
        dock.say("Clicked…" if dock.pending == 1 else f"{dock.pending} clicks queued…")

    def accept(self) -> None:
        dock = self.dock
        if not dock.ready():
            return
        if not dock.annotator.clicks and not dock.pending and dock.layers.edited_mask() is None:
            dock.say(f"No object is being clicked: nothing to accept. {dock.count_text()}")
            return
        name = dock.class_picker.name
        dock.class_picker.color(name)  # a class typed in is added to the list with a colour
        min_area = min_area_px(dock.min_area_spin.value(), dock.source.mpp)
        tolerance, edited, view = dock.simplify_spin.value(), dock.layers.edited_mask(), dock.view_box()
        dock.queue.submit(lambda a: a.submit_accept_undoable(name, min_area, tolerance, edited, view),
                          dock.edits.accepted, self.failed)

    def failed(self, err) -> None:
        """An action failed: said, and what the annotator holds now is drawn (it changed nothing)."""
        self.dock.show_error(err)
        self.show_state(self.dock.annotator.state(), said=True)

    def show_state(self, state, said: bool = False) -> None:
        """Draw an ``AnnotatorState`` (after an action, or grown by itself past a tile border);
        ``said``: the status already says what happened."""
        dock = self.dock
        if dock.annotator is None:
            return
        dock.layers.draw(state, dock.image_layer.scale)
        if dock.pending:
            return
        dock.resume.object_changed(state, self.live_settings())
        if not said:
            dock.say(self.state_text(state))
        dock.schedule_prefetch()

    def state_text(self, state) -> str:
        """What the status says of the object being clicked (or that there is none)."""
        dock = self.dock
        if not state.clicks:
            return f"No object is being clicked: click on the slide to start one. {dock.count_text()}"
        clicks, n = len(state.clicks), len(state.boxes)
        levels = sorted({b.downsample for b in state.boxes}, reverse=True)
        where = " and ".join(dock.session.level_text(d) for d in levels)  # coarse to fine
        return (f"{clicks} click{'s' * (clicks != 1)}" + (f" across {n} tiles" if n > 1 else "")
                + (f" at {where}" if where else "")
                + (", border refined as on this slide's accepted objects" if state.refined else "")
                + f". Enter accepts as {dock.class_picker.name}, Escape cancels.")

    def class_chosen(self, name: str, added: bool) -> None:
        """The user chose class ``name`` (``added``: typed in, new): the status says what Enter on
        the slide will do now."""
        dock = self.dock
        first = f"Class {name} added." if added else f"Class {name} chosen."
        if dock.annotator is None or dock.pending or not dock.annotator.clicks:
            dock.say(f"{first} The next object you accept is {name}.")
            return
        dock.say(f"{first} Enter on the slide accepts the object being clicked as {name}, Escape cancels.")

    def live_settings(self) -> LiveSettings:
        """How the object being clicked is kept on disk now."""
        dock = self.dock
        name = dock.class_picker.name
        return LiveSettings(name, dock.classes.get(name, (200, 0, 0)), min_area_px(dock.min_area_spin.value(),
                                                                                   dock.source.mpp),
                            dock.simplify_spin.value(), dock.source.mpp)

    def grown(self, annotator) -> None:
        """The object grew into a tile by itself: draw it (unless clicks are queued)."""
        self.dock.threads.run(annotator.state, lambda state: self.dock.edits.show_grown(annotator, state),
                              lambda err: None)

    def painted(self, event=None) -> None:
        if self.dock.layers.drawn is not None:
            self.dock.say("Corrected by hand: Enter accepts the painted object; a new click starts again from "
                          "SAM's mask.")

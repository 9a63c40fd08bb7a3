"""What the user does to the object being clicked and to the accepted objects, and the undo of it:
Accept (drawn in steps, napari repainting between them), Clear, deleting accepted objects, and
undo / redo of each (``history``). A click and its undo are the annotator's own; undoing an Accept
or a Clear restores the object as it was before (the snapshot the annotator took on its worker,
after every click queued before it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...engine.object_state import EMPTY_STATE, AnnotatorState, BeyondView
from ..project_panel import ProjectPanel
from ..wording import count
from .accepted import AcceptedObjects
from .history import AcceptStep, ClearStep, ClickStep, DeleteStep
from .object_actions_dock import ObjectActionsDock

if TYPE_CHECKING:  # (the dock imports torch off the GUI thread, after it is drawn)
    from napari.layers import Shapes


@runtime_checkable
class Drawing(Protocol):
    """The dock's ``Clicking``, as the edits draw what the annotator hands back."""

    def show_state(self, state: AnnotatorState, said: bool = False) -> None: ...

    def failed(self, err: Exception) -> None: ...  # an action failed: said, and the object drawn as it is


@runtime_checkable
class EditsDock(ObjectActionsDock, Protocol):
    """What ``Edits`` uses of the dock (``AnnotatorDock``)."""

    accepted: AcceptedObjects
    project_panel: ProjectPanel
    clicking: Drawing

    @property
    def layer(self) -> Shapes | None: ...  # the accepted objects

    def count_text(self) -> str: ...

    def fit_view(self, x0: float, y0: float, x1: float, y1: float, fill: float = 0.8) -> None: ...


class Edits:
    def __init__(self, dock: EditsDock) -> None:
        """``dock``: the ``AnnotatorDock`` whose history, queue and layers the edits go through."""
        self.dock = dock

    def undo(self) -> None:
        dock = self.dock
        if dock.ready() and dock.history.can_undo:
            self._apply(dock.history.take_undo(), undo=True)
        elif dock.annotator is not None and not dock.session.starting:
            dock.say("Nothing to undo.")

    def redo(self) -> None:
        dock = self.dock
        if dock.ready() and dock.history.can_redo:
            self._apply(dock.history.take_redo(), undo=False)
        elif dock.annotator is not None and not dock.session.starting:
            dock.say("Nothing to redo.")

    def _apply(self, step, undo: bool) -> None:
        """Undo (or redo) one step."""
        dock = self.dock
        if isinstance(step, ClickStep):
            dock.queue.submit(lambda a: a.submit_undo() if undo else a.submit_redo(), dock.clicking.show_state,
                              dock.clicking.failed)
        elif isinstance(step, (AcceptStep, ClearStep)):
            what = "Accept" if isinstance(step, AcceptStep) else "Clear"
            if isinstance(step, AcceptStep) and step.obj is not None:
                if undo:
                    dock.accepted.remove(step.obj.id)
                    self._unlearn([step.obj.id])  # an undone Accept teaches nothing
                else:
                    dock.accepted.add([step.obj], dock.class_picker.color)
                dock.accepted.changed()

            def done(state) -> None:
                dock.clicking.show_state(state)
                dock.say(f"{'Undid' if undo else 'Redid'} {what}. {dock.count_text()}")

            dock.queue.submit(lambda a: a.submit_restore(step.snapshot) if undo else a.submit_clear(), done,
                              dock.clicking.failed)
        elif isinstance(step, DeleteStep):
            if undo:
                dock.accepted.add(step.objects, dock.class_picker.color)
            else:
                dock.accepted.remove_parts(step.objects)
            dock.accepted.changed()
            n = len(step.objects)
            dock.say(f"{'Restored' if undo else 'Deleted'} {n} object{'s' * (n != 1)}. {dock.count_text()}")

    def clear(self) -> None:
        dock = self.dock
        if not dock.ready():
            return
        if not dock.annotator.clicks and not dock.pending:
            dock.say(f"No object is being clicked. {dock.count_text()}")
            return
        dock.queue.submit(lambda a: a.submit_clear_undoable(), self._cleared, dock.clicking.failed)

    def _cleared(self, cleared) -> None:
        dock = self.dock
        if not cleared.before.empty:
            dock.history.record(ClearStep(cleared.before))
        dock.clicking.show_state(cleared.result)
        dock.say(f"Cleared the object being clicked (Ctrl-Z brings it back). {dock.count_text()}")

    def accepted(self, accepted) -> None:
        """Accept has run (``Undoable`` of the object, ``BeyondView`` or None)."""
        dock, obj = self.dock, accepted.result
        if isinstance(obj, BeyondView):  # shown whole: the user accepts again
            dock.fit_view(*obj.extent)
            dock.say("Not accepted yet: the object reaches beyond the view. The view now shows all of it; "
                     "check it (a negative click removes what does not belong) and press Enter again.")
            return
        if obj is not None:
            dock.history.record(AcceptStep(obj, accepted.before))
        dock.threads.steps(self._accept_steps(obj))  # one per event-loop turn: napari repaints between

    def _accept_steps(self, obj):
        dock = self.dock
        dock.clicking.show_state(EMPTY_STATE)
        if obj is None:
            dock.say(f"Nothing to accept: the object is empty. {dock.count_text()}")
            return
        yield
        dock.accepted.add([obj], dock.class_picker.color)
        dock.accepted.changed()
        from ..object_list import area_text

        dock.say(f"Accepted {obj.class_name}{' (corrected by hand)' * bool(obj.properties.get('edited'))}: "
                 f"{area_text(obj, dock.source.mpp)}, {count(obj.clicks, 'click')}, {obj.model}. {dock.count_text()}")

    def show_grown(self, annotator, state) -> None:
        """The object grew past a tile border by itself: drawn, unless the dock restarted, clicks
        are queued (they draw a newer state) or the user painted the mask."""
        dock = self.dock
        if annotator is not dock.annotator or dock.pending:
            return
        if dock.layers.edited_mask() is not None:  # painted by hand meanwhile: the user's mask stays
            dock.say("The object also continues past the tile border; a new click shows it "
                     "(Enter accepts what you painted).")
            return
        dock.clicking.show_state(state)
        dock.say(f"The object continues past the tile border ({count(len(state.boxes), 'tile')}). Enter accepts as "
                 f"{dock.class_picker.name}, Escape cancels.")

    def delete_objects(self, ids: list[str]) -> None:
        dock = self.dock
        if dock.layer is None:
            return
        removed = dock.accepted.by_id(ids)
        for obj in removed:
            dock.accepted.remove(obj.id)
        self._unlearn([obj.id for obj in removed])
        if removed:
            dock.history.record(DeleteStep(removed))
        dock.accepted.changed()
        dock.say(f"Deleted {len(removed)} object{'s' * (len(removed) != 1)} (Ctrl-Z brings "
                 f"{'them' if len(removed) != 1 else 'it'} back). {dock.count_text()}")

    def _unlearn(self, ids) -> None:
        """The slide's adaptation and the project forget these objects (queued for their threads:
        returns at once)."""
        annotator = self.dock.annotator
        if annotator is not None and annotator.adaptation is not None:
            for object_id in ids:
                annotator.adaptation.forget(object_id)
        self.dock.project_panel.forget(ids)

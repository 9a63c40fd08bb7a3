"""The dock's undo history: what Ctrl-Z and Ctrl-Shift-Z undo and redo, newest last. A click is
undone by the annotator itself (its own undo); an Accept or a Clear by restoring the object as it
was (the snapshot the annotator took before it); a deletion by adding the objects back."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClickStep:
    """A click on the object being clicked."""


@dataclass(frozen=True)
class AcceptStep:
    """``obj`` was accepted; ``snapshot``: the object being clicked before it (``ObjectSnapshot``)."""

    obj: object
    snapshot: object


@dataclass(frozen=True)
class ClearStep:
    """The object being clicked was dropped; ``snapshot`` brings it back."""

    snapshot: object


@dataclass(frozen=True)
class DeleteStep:
    """Accepted objects (``AnnotatedObject``s, or the parts of them deleted) were deleted."""

    objects: list


Step = ClickStep | AcceptStep | ClearStep | DeleteStep


class History:
    def __init__(self) -> None:
        self._done: list[Step] = []
        self._undone: list[Step] = []

    def record(self, step: Step) -> None:
        """A new step: what was undone cannot be redone any more."""
        self._done.append(step)
        self._undone.clear()

    def take_undo(self) -> Step | None:
        """The step to undo now (moved to the redo side), or None."""
        if not self._done:
            return None
        step = self._done.pop()
        self._undone.append(step)
        return step

    def take_redo(self) -> Step | None:
        """The step to redo now (moved back to the undo side), or None."""
        if not self._undone:
            return None
        step = self._undone.pop()
        self._done.append(step)
        return step

    def reset(self) -> None:
        self._done.clear()
        self._undone.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

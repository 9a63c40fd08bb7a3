"""What every part of the dock that acts on the object being clicked (``Clicking``, ``Edits``) uses
of the dock (``AnnotatorDock``): its threads, undo history, action queue, class, layers and session,
the annotator and slide, whether it takes an action now, and its status line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..gui_threads import GuiThreads
from .classes import ClassPicker
from .click_queue import ClickQueue
from .history import History
from .session import Session
from .working_layers import WorkingLayers

if TYPE_CHECKING:  # (the dock imports torch off the GUI thread, after it is drawn)
    from ...engine.annotator import Annotator
    from ...slides.source import ImageSource


@runtime_checkable
class ObjectActionsDock(Protocol):
    threads: GuiThreads
    history: History
    queue: ClickQueue
    class_picker: ClassPicker
    layers: WorkingLayers
    session: Session

    @property
    def annotator(self) -> Annotator | None: ...

    @property
    def source(self) -> ImageSource | None: ...  # the open slide

    @property
    def pending(self) -> int: ...  # clicks and actions queued, not yet drawn

    def ready(self) -> bool: ...  # takes a click or an action now (if not, the status says why)

    def say(self, text: str) -> None: ...

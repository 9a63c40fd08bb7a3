"""Work off napari's GUI thread, results back on it, and GUI work split over event-loop turns.

napari must be touched from the GUI thread only, and anything slow there freezes the window (no
repaint, no keys). ``GuiThreads.run`` runs a function on a worker thread and hands its result to
one callback, or its exception to another, on the GUI thread through a queued Qt signal; ``GuiThreads.steps``
runs a generator one step per event-loop turn, so napari repaints between steps that must touch it
(each napari layer created costs napari a few hundred ms on a software-GL machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal


class _Relay(QObject):
    """Carries a worker thread's result to the GUI thread (a queued Qt signal)."""

    done = Signal(object, object)  # (callback, result or exception)


class GuiThreads:
    def __init__(self, parent: QObject) -> None:
        self._relay = _Relay(parent)
        self._relay.done.connect(self._deliver)

    @staticmethod
    def _deliver(callback, result) -> None:
        try:
            callback(result)
        except RuntimeError as err:  # the widget that asked was deleted while the work ran: drop it
            if "has been deleted" not in str(err):
                raise

    def emit(self, callback, value) -> None:
        """From any thread: call ``callback(value)`` on the GUI thread."""
        with contextlib.suppress(RuntimeError):  # the widget was deleted meanwhile
            self._relay.done.emit(callback, value)

    def relay(self, future: Future, done: Callable[[Any], None], failed: Callable[[Exception], None]) -> None:
        """When ``future`` is done, ``done(result)`` or ``failed(exception)`` on the GUI thread; an
        exception (``CancelledError`` for a cancelled future) is handed over, never raised into Qt."""
        def finished(f):
            try:
                result = f.result()
            except Exception as err:  # noqa: BLE001 - handed to ``failed``, never raised into Qt
                self.emit(failed, err)
                return
            self.emit(done, result)

        future.add_done_callback(finished)

    def run(self, function, done: Callable[[Any], None], failed: Callable[[Exception], None]) -> Future:
        """``function()`` on a worker thread, ``done(result)`` or ``failed(exception)`` on the GUI
        thread. The future is returned for those who must wait (tests, saving before closing)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-dock")
        future = executor.submit(function)
        self.relay(future, done, failed)
        executor.shutdown(wait=False)
        return future

    @staticmethod
    def steps(generator, on_error=None) -> None:
        """Run ``generator`` on the GUI thread, one step (up to its next ``yield``) per event-loop
        turn. An exception ends it and goes to ``on_error`` (never into Qt)."""
        def step():
            try:
                next(generator)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - handed to ``on_error``, never raised into Qt
                if on_error is not None:
                    on_error(err)
                return
            QTimer.singleShot(0, step)

        step()

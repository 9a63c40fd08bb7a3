"""Work off napari's GUI thread, results back on it, and GUI work split over event-loop turns.

napari must be touched from the GUI thread only, and anything slow there freezes the window (no
repaint, no keys). ``GuiThreads.run`` runs a function on a worker thread and hands its result (or
the exception) to a callback on the GUI thread through a queued Qt signal; ``GuiThreads.steps``
runs a generator one step per event-loop turn, so napari repaints between steps that must touch it
(each napari layer created costs napari a few hundred ms on a software-GL machine).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

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
        try:
            self._relay.done.emit(callback, value)
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def relay(self, future: Future, callback) -> None:
        """When ``future`` is done, ``callback(result or exception)`` on the GUI thread; an exception
        is handed over, never raised into Qt."""
        def done(f):
            try:
                result = f.result()
            except Exception as err:
                result = err
            self.emit(callback, result)

        future.add_done_callback(done)

    def run(self, function, callback) -> Future:
        """``function()`` on a worker thread, ``callback(result or exception)`` on the GUI thread.
        The future is returned for those who must wait (tests, saving before closing)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-dock")
        future = executor.submit(function)
        self.relay(future, callback)
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
            except Exception as err:
                if on_error is not None:
                    on_error(err)
                return
            QTimer.singleShot(0, step)

        step()

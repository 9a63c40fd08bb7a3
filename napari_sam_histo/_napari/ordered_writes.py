"""Files the dock keeps up to date in the background (the autosave sidecar, the object being
clicked): written a while after the last change or at once, on one thread of their own so that
they land in the order they were asked for (a removal after an Accept never lands before a save
already under way), and waited for before napari closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from qtpy.QtCore import QObject, QTimer


class OrderedWrites(QObject):
    def __init__(self, threads, delay_ms: int, make_job: Callable[[], Callable | None], on_error, name: str,
                 parent=None) -> None:
        """``make_job()`` runs on the GUI thread when a write is due and returns what the writer
        thread runs (None: nothing to write now); ``on_error(err)`` shows a failed write, on the GUI
        thread (``threads``: the dock's ``GuiThreads``)."""
        super().__init__(parent)
        self.threads, self.make_job, self.on_error, self.name = threads, make_job, on_error, name
        self._writer: ThreadPoolExecutor | None = None
        self.last: Future | None = None  # the latest write
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.write_now)

    def schedule(self) -> None:
        """Write once the changes have rested ``delay_ms``."""
        self._timer.start()

    def cancel(self) -> None:
        self._timer.stop()

    def write_now(self) -> None:
        self._timer.stop()
        job = self.make_job()
        if job is not None:
            self.submit(job)

    def submit(self, job: Callable) -> Future:
        """Run ``job`` on the writer thread after the writes asked for before it."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"napari-sam-histo-{self.name}")
        self.last = self._writer.submit(job)
        self.threads.relay(self.last, lambda result: None, self.on_error)
        return self.last

    def flush(self, timeout: float | None = None) -> None:
        """Write what is pending now, then wait for every write asked for so far."""
        if self._timer.isActive():
            self.write_now()
        if self.last is not None:
            with contextlib.suppress(Exception):  # already shown by the write's callback
                self.last.result(timeout)  # the writes before it ran first, on the same thread

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

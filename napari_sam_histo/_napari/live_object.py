"""The object being clicked, kept on disk while it changes, so a crash or a quit does not lose it
(``annotations.autosave.live_path``): written about a second after the last change, removed when it
is accepted or cancelled, and offered back when the slide is started again.

Writes and removals run in order on one thread of their own: a removal after an Accept never
lands before a save that was already under way.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from qtpy.QtCore import QObject, QTimer

LIVE_DELAY_MS = 800  # the object is written once the clicks rest this long


class LiveObjectKeeper(QObject):
    def __init__(self, threads, on_error, parent=None) -> None:
        """``threads``: the dock's ``GuiThreads``; ``on_error(err)`` shows a failed write."""
        super().__init__(parent)
        self.threads = threads
        self.on_error = on_error
        self.path: Path | None = None
        self._snapshot = None  # () -> (polygons, class name, colour, model, clicks, mpp), on a worker
        self._writer: ThreadPoolExecutor | None = None
        self.last: Future | None = None  # the latest write or removal
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DELAY_MS)
        self._timer.timeout.connect(self.save_now)

    def attach(self, path: Path | None, snapshot=None) -> None:
        """Keep the object being clicked in ``path`` (None: stop keeping it); ``snapshot()`` gives
        what to write and is called on the writer's thread."""
        self._timer.stop()
        self.path, self._snapshot = (Path(path) if path is not None else None), snapshot

    def changed(self, has_clicks: bool) -> None:
        """The object being clicked changed: written soon, or removed when it is gone (accepted,
        cancelled, undone to nothing)."""
        if self.path is None:
            return
        if has_clicks:
            self._timer.start()
        else:
            self._timer.stop()
            path = self.path
            self._submit(lambda: _remove(path))

    def save_now(self) -> None:
        if self.path is None or self._snapshot is None:
            return
        path, snapshot = self.path, self._snapshot
        self._submit(lambda: _write(path, snapshot))

    def flush(self) -> None:
        """Write what is pending now and wait for the writes (napari is closing)."""
        if self._timer.isActive():
            self._timer.stop()
            self.save_now()
        if self.last is not None:
            try:
                self.last.result(timeout=30)
            except Exception:  # already shown by the write's callback
                pass

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self.path = None

    def _submit(self, job) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-live-object")
        self.last = self._writer.submit(job)
        self.threads.relay(self.last, lambda result: self.on_error(result) if isinstance(result, Exception) else None)


def _write(path: Path, snapshot) -> None:
    from ..annotations import autosave
    from ..annotations.objects import AnnotatedObject

    polygons, class_name, colour, model, clicks, mpp = snapshot()
    if not polygons:
        _remove(path)
        return
    autosave.save(path, [AnnotatedObject(polygons, class_name, colour, model, clicks, {"unaccepted": True})], mpp)


def _remove(path: Path) -> None:
    from ..annotations import autosave

    autosave.remove(path)

"""The object being clicked, kept on disk while it changes, so a crash or a quit does not lose it
(``annotations.autosave.live_path``): written about a second after the last change, removed when it
is accepted or cancelled, and offered back when the slide is started again. Writes and removals
land in order (``ordered_writes``).
"""

from __future__ import annotations

from pathlib import Path

from .ordered_writes import OrderedWrites

LIVE_DELAY_MS = 800  # the object is written once the clicks rest this long


class LiveObjectKeeper(OrderedWrites):
    def __init__(self, threads, on_error, parent=None) -> None:
        """``threads``: the dock's ``GuiThreads``; ``on_error(err)`` shows a failed write."""
        super().__init__(threads, LIVE_DELAY_MS, self._job, on_error, "live-object", parent)
        self.path: Path | None = None
        self._snapshot = None  # () -> (polygons, class name, colour, model, clicks, mpp), on the writer

    def attach(self, path: Path | None, snapshot=None) -> None:
        """Keep the object being clicked in ``path`` (None: stop keeping it); ``snapshot()`` gives
        what to write and is called on the writer's thread."""
        self.cancel()
        self.path, self._snapshot = (Path(path) if path is not None else None), snapshot

    def changed(self, has_clicks: bool) -> None:
        """The object being clicked changed: written soon, or removed when it is gone (accepted,
        cancelled, undone to nothing)."""
        if self.path is None:
            return
        if has_clicks:
            self.schedule()
        else:
            self.cancel()
            path = self.path
            self.submit(lambda: _remove(path))

    def _job(self):
        if self.path is None or self._snapshot is None:
            return None
        path, snapshot = self.path, self._snapshot
        return lambda: _write(path, snapshot)

    def close(self) -> None:
        self.flush(timeout=30)  # napari is closing: one object's write, not worth a hang
        super().close()
        self.path = None


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

"""The object growing by itself across tile borders, on a thread of its own (the annotator's
``continue_object``; in the background after each click when it runs with ``continuation=True``,
as the dock runs it).

Where the object reaches a border of its tiles that is not the slide's, the neighbouring tile
(centred on that point, at the last click's level) is computed and decoded from the object's clicks
inside it, a positive point where the object was cut, and the object's logits over the overlap as
mask prompt (unknown beyond it), so the object grows past the border without a click there
(``ObjectTiles.growth_tile`` and ``grow``). It grows only where the cut lies inside the view (the
box the user looks at, set by a UI): never past a border the user has not seen; an object whose
first mask floods its tile does not grow. At most ``MAX_CONTINUATION_TILES`` grown tiles per
object; a new click, Clear or Accept stops it; the tiles it adds belong to the click that caused
them (undo removes them with it), and the next click empties them (in its own undo step) so that
the object grows again from its corrected shape.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from ..slides.boxes import TileBox
from .embedding_cache import Embedding
from .object_tiles import ObjectTiles

MAX_CONTINUATION_TILES = 8  # tiles one object may grow into by itself


class Continuation:
    """Grows ``tiles``' object: ``embedding(box, purpose)`` computes a tile's embedding (outside the
    object's lock), ``notify(event, box, purpose)`` tells listeners of a tile added, ``idle`` is set
    while no click or action is queued or running, ``busy()`` says whether one is queued now, and
    ``closed()`` whether the annotator stopped. ``generation`` counts the requests that supersede
    the one running: the annotator bumps it (``supersede``) when a click or action is queued or the
    object's clicks are replaced."""

    def __init__(self, tiles: ObjectTiles, embedding: Callable[[TileBox, str], Embedding],
                 notify: Callable[[str, TileBox, str], None], idle: threading.Event,
                 busy: Callable[[], int], closed: Callable[[], bool]) -> None:
        self.tiles = tiles
        self._lock = tiles.lock
        self._embedding, self._notify = embedding, notify
        self._idle, self._busy, self._closed = idle, busy, closed
        self.generation = 0  # a newer request (after a newer click) stops an older one
        self._futures: list[Future] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-continuation")

    def supersede(self) -> None:
        """A request made before this call stops before its next tile."""
        self.generation += 1

    def _superseded(self, generation: int | None) -> bool:
        return generation is not None and generation != self.generation

    def grow(self, generation: int | None = None) -> list[TileBox]:
        """Grow the object into the tiles beyond its cut borders (see the module), one at a time,
        until none is left, the budget is spent, or the object changes (a click, undo, Clear,
        Accept, or a newer ``generation`` of background continuation); returns the tiles added."""
        added = []
        while True:
            with self._lock:
                if self._closed() or self.tiles.grown >= MAX_CONTINUATION_TILES or self._superseded(generation):
                    return added
                found = self.tiles.growth_tile()
                if found is None:
                    return added
                revision = self.tiles.revision
            px, py, box = found
            embedding = self._embedding(box, "continuation")  # outside the lock: seconds
            with self._lock:
                if self.tiles.revision != revision or self._closed() or self._busy():
                    return added  # the object changed (or a click is queued) meanwhile: the next click asks again
                if self._superseded(generation):
                    return added
                self.tiles.grow(px, py, box, embedding)
                added.append(box)
            self._notify("extended", box, "continuation")

    def schedule(self) -> None:
        """``grow`` on its own thread (prefetching must not delay it), after the queued clicks; a
        newer click's request supersedes it."""
        with self._lock:
            if self._closed():
                return
            self.stop()  # the previous request gives way
            generation = self.generation

            def run():
                while not self._idle.wait(0.05):  # clicks first
                    if self._superseded(generation) or self._closed():
                        return []
                return self.grow(generation)

            self._futures = [self._thread.submit(run)]

    @property
    def running(self) -> bool:
        """Whether the object is still growing by itself in the background."""
        with self._lock:
            return any(not future.done() for future in self._futures)

    def stop(self) -> None:
        """Stop the background continuation before its next tile."""
        with self._lock:
            self.generation += 1
            for future in self._futures:
                future.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Until the background continuation requested so far is done."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            with contextlib.suppress(CancelledError):
                future.result(timeout)

    def shutdown(self, wait: bool = False) -> None:
        self._thread.shutdown(wait=wait, cancel_futures=True)

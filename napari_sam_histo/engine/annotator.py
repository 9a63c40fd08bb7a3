"""The annotator a UI uses, without Qt: the object being clicked (``object_tiles``: which tiles a
click uses, across levels, and how they make one object) run on a worker thread so that a UI never
blocks on the encoder, with the object growing by itself across tile borders and the tiles around
the view prefetched, both in the background. Accepted objects are handed to the caller (the dock
keeps them in its Shapes layer); the slide source is the caller's too: ``close`` stops the threads
and leaves the source open for reuse.

Continuation (``continue_object``; in the background after each click when ``continuation=True``,
as the dock runs it): the object grows past the borders of its tiles inside the view without a click
there (``continuation``).

Threads: clicks and the other actions run in order on one worker thread (a click made while its
tile's embedding is computing waits for it, later clicks wait their turn), so a UI never blocks.
Prefetching runs on a second thread, one embedding at a time, and yields to clicks: before each
embedding it waits until no click or action is queued, and a new ``prefetch_around`` drops the
queued tiles of the previous one. A click therefore waits behind prefetching for at most the one
embedding already running (the encoder is serialised by the predictor). ``listeners`` hear when
an embedding starts and finishes being computed (a UI shows progress with that).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from ..annotations.cleaning import DEFAULT_TOLERANCE
from ..annotations.geometry import Polygon
from ..slides.boxes import TileBox
from ..slides.source import ImageSource
from .continuation import Continuation
from .embedding_cache import Embedding
from .object_state import AnnotatorState, ObjectSnapshot, Undoable
from .object_tiles import ObjectTiles
from .protocols import AcceptedObjectSink, SlideLearning, TilePredictor
from .tile_choice import REUSE_MARGIN
from .tile_colours import COLOUR_PREFETCH
from .tiles import DEFAULT_TILE_SIZE, TileGrid
from .working_levels import WorkingLevel


class Annotator:
    def __init__(self, predictor: TilePredictor, source: ImageSource, level: int | str = 0,
                 tile_size: int = DEFAULT_TILE_SIZE, reuse_margin: float = REUSE_MARGIN,
                 prefetch_radius: int = 1, continuation: bool = False, first_mask: str = "unflooded",
                 honour_clicks: bool = True) -> None:
        """``level``: a pyramid level (fixed) or ``"auto"`` (each click at the level a UI passes,
        ``level_for_view``; level 0 until one does). ``continuation``: grow the object into
        neighbouring tiles in the background after each click (see the module), inside ``view``."""
        # the object being clicked (no threads of its own); its tiles' embeddings come from ``_Work``
        self.object = ObjectTiles(predictor, source, level, tile_size, reuse_margin, first_mask, honour_clicks,
                                  work=_Work(self))
        self._lock = self.object.lock
        self.prefetch_radius = int(prefetch_radius)
        self.continuation = bool(continuation)
        # Called as listener(event, box, purpose) with event "started"/"finished" and purpose
        # "click"/"prefetch", from worker threads, when an embedding is really being computed.
        self.listeners: list[Callable[[str, TileBox, str], None]] = []
        self._fetching: set[str] = set()  # tiles whose embedding is being fetched or computed now
        self._count_lock = threading.Lock()
        self._queued = 0  # clicks and actions submitted and not finished
        self._idle = threading.Event()
        self._idle.set()
        self._generation = 0  # of prefetch requests; older queued prefetches give way
        self._prefetch_futures: list[Future] = []
        self._closed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-clicks")
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-prefetch")
        self._continuation = Continuation(self.object, self._embedding, self._notify, self._idle,
                                          self._queued_actions, lambda: self._closed)

    # -- the object (``ObjectTiles``), with background work around it ----------------------------
    def click(self, x0: float, y0: float, positive: bool = True, downsample: float | None = None) -> AnnotatorState:
        """``ObjectTiles.click`` (run on the worker; call ``submit_click`` from a UI), then the
        object's continuation in the background when ``continuation`` is on."""
        state = self.object.click(x0, y0, positive, downsample)
        if self.continuation:
            self._continuation.schedule()
        return state

    # What the object is and does (``ObjectTiles``), read and changed from any thread; a UI queues
    # the actions behind the clicks instead (``submit_*``).
    predictor = property(lambda self: self.object.predictor)
    source = property(lambda self: self.object.source)
    tile_size = property(lambda self: self.object.tile_size)
    auto = property(lambda self: self.object.auto)
    levels = property(lambda self: self.object.levels)
    level = property(lambda self: self.object.level)
    grid = property(lambda self: self.object.grid)
    clicks = property(lambda self: self.object.clicks)
    grown = property(lambda self: self.object.grown)

    @property
    def adaptation(self) -> SlideLearning | None:
        """The slide's learning (set by a UI: ``adaptation.slide_adaptation``), or None."""
        return self.object.adaptation

    @adaptation.setter
    def adaptation(self, adaptation: SlideLearning | None) -> None:
        self.object.adaptation = adaptation

    @property
    def recorder(self) -> AcceptedObjectSink | None:
        """Where accepted objects go besides the slide's learning (a project's), or None."""
        return self.object.recorder

    @recorder.setter
    def recorder(self, recorder: AcceptedObjectSink | None) -> None:
        self.object.recorder = recorder

    @property
    def classes(self) -> dict[str, tuple[int, int, int]]:
        return self.object.classes

    @classes.setter
    def classes(self, classes: dict[str, tuple[int, int, int]]) -> None:
        self.object.classes = classes

    @property
    def view(self) -> tuple[float, float, float, float] | None:
        """The level-0 box the user looks at (``ObjectTiles.view``), set by a UI."""
        return self.object.view

    @view.setter
    def view(self, view: tuple[float, float, float, float] | None) -> None:
        self.object.view = view

    def state(self) -> AnnotatorState:
        return self.object.state()

    def undo(self) -> AnnotatorState:
        return self.object.undo()

    def redo(self) -> AnnotatorState:
        return self.object.redo()

    def clear(self) -> AnnotatorState:
        return self.object.clear()

    def snapshot(self) -> ObjectSnapshot:
        return self.object.snapshot()

    def restore(self, snapshot: ObjectSnapshot) -> AnnotatorState:
        return self.object.restore(snapshot)

    def accept(self, *args, **kwargs):
        """``ObjectTiles.accept``: the accepted object, ``BeyondView`` or None."""
        return self.object.accept(*args, **kwargs)

    def accept_undoable(self, *args, **kwargs) -> Undoable:
        return self.object.accept_undoable(*args, **kwargs)

    def clear_undoable(self) -> Undoable:
        return self.object.clear_undoable()

    def current_mask(self):
        return self.object.current_mask()

    def current_polygons(self, min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE) -> list[Polygon]:
        return self.object.current_polygons(min_area, tolerance)

    def cut_points(self) -> list[tuple[float, float]]:
        return self.object.cut_points()

    def check_click(self, x0: float, y0: float) -> None:
        self.object.check_click(x0, y0)

    def level_for_view(self, width0: float, height0: float) -> WorkingLevel:
        return self.object.level_for_view(width0, height0)

    def grid_for(self, working: WorkingLevel) -> TileGrid:
        return self.object.grid_for(working)

    def add_class(self, name: str, color=None) -> tuple[int, int, int]:
        return self.object.add_class(name, color)

    def tile_colour(self, box: TileBox):
        return self.object.tile_colour(box)

    # -- continuation (``continuation``) --------------------------------------------------------
    def continue_object(self, generation: int | None = None) -> list[TileBox]:
        """``Continuation.grow``: the tiles the object grew into."""
        return self._continuation.grow(generation)

    @property
    def continuing(self) -> bool:
        """Whether the object is still growing by itself in the background."""
        return self._continuation.running

    def stop_continuation(self) -> None:
        """Stop the background continuation before its next tile (a UI's switch)."""
        self._continuation.stop()

    def wait_continuation(self, timeout: float | None = None) -> None:
        """Until the background continuation requested so far is done (tests, the benchmark)."""
        self._continuation.wait(timeout)

    # -- background work -----------------------------------------------------------------------
    def _embedding(self, box: TileBox, purpose: str) -> Embedding:
        @contextmanager
        def computing():
            self._notify("started", box, purpose)
            try:
                yield
            finally:
                self._notify("finished", box, purpose)

        with self._lock:
            self._fetching.add(box.key())
        try:
            return self.predictor.embedding_for(self.source, box, computing=computing)
        finally:
            with self._lock:
                self._fetching.discard(box.key())

    def _notify(self, event: str, box: TileBox, purpose: str) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # a listener's failure must not stop the work
                listener(event, box, purpose)

    def _queued_actions(self) -> int:
        with self._count_lock:
            return self._queued

    def _submit(self, function, *args) -> Future:
        with self._count_lock:  # (not self._lock: a UI thread must never wait for a running decode)
            self._queued += 1
            self._idle.clear()
            self._continuation.supersede()  # a queued click or action stops continuation now

        def run():
            try:
                return function(*args)
            finally:
                with self._count_lock:
                    self._queued -= 1
                    if not self._queued:
                        self._idle.set()

        return self._worker.submit(run)

    def submit_click(self, x0: float, y0: float, positive: bool = True, downsample: float | None = None) -> Future:
        """Queue a click (``downsample``: its working level, see ``click``); the future's result is
        the ``AnnotatorState`` after it."""
        return self._submit(self.click, x0, y0, positive, downsample)

    # Each action queued behind the clicks; the future's result is the action's.
    def submit_undo(self) -> Future:
        """``undo``: the ``AnnotatorState`` after it."""
        return self._submit(self.undo)

    def submit_redo(self) -> Future:
        return self._submit(self.redo)

    def submit_clear(self) -> Future:
        return self._submit(self.clear)

    def submit_restore(self, snapshot: ObjectSnapshot) -> Future:
        return self._submit(self.restore, snapshot)

    def submit_accept(self, *args, **kwargs) -> Future:
        """``accept``: the accepted object, ``BeyondView`` or None."""
        return self._submit(lambda: self.accept(*args, **kwargs))

    def submit_accept_undoable(self, *args, **kwargs) -> Future:
        """``accept_undoable``: an ``Undoable`` of the accepted object (or ``BeyondView`` or None)."""
        return self._submit(lambda: self.accept_undoable(*args, **kwargs))

    def submit_clear_undoable(self) -> Future:
        """``clear_undoable``: an ``Undoable`` of the state after it."""
        return self._submit(self.clear_undoable)

    @property
    def idle(self) -> bool:
        """No click or action is queued or running."""
        return self._idle.is_set()

    def quiet(self) -> bool:
        """No click or action is queued or running and no embedding is being computed: when
        background learning (``adaptation``) may take the CPU."""
        # no lock: a click holds it while it decodes, and one read of the set's size is atomic
        return self._idle.is_set() and not self._fetching and not self._closed

    def prefetch_boxes(self, x0: float, y0: float, downsample: float | None = None) -> list[TileBox]:
        """What ``prefetch_around(x0, y0)`` computes, in order: the tiles the current object's next
        clicks would open where a tile border cuts it (at its last click's level), then the half-tile
        lattice around level-0 (x0, y0) (clamped into the slide) at the level of ``downsample``
        (the view's, with ``level="auto"``), where a new object's first click reuses a tile."""
        grid = self.object.grid_at(downsample)
        d = grid.downsample
        x = min(max(float(x0) / d, 0.0), grid.width - 1e-3)
        y = min(max(float(y0) / d, 0.0), grid.height - 1e-3)
        boxes = self.object.cut_boxes() + grid.lattice_around(x, y, self.prefetch_radius)
        return list({box.key(): box for box in reversed(boxes)}.values())[::-1]  # unique, first kept

    def prefetch_around(self, x0: float, y0: float, downsample: float | None = None) -> Future:
        """Compute ``prefetch_boxes(x0, y0)`` in the background, one embedding at a time, each after
        any queued click. A later call supersedes this one: it stops before its next tile. The
        future's result is the list of tiles it computed or found cached."""
        with self._lock:
            if self._closed:
                future = Future()
                future.set_result([])
                return future
            self._generation += 1
            for future in self._prefetch_futures:
                future.cancel()
            future = self._prefetcher.submit(self._prefetch, x0, y0, self._generation, downsample)
            self._prefetch_futures = [future]
            return future

    def _prefetch(self, x0: float, y0: float, generation: int, downsample: float | None = None) -> list[TileBox]:
        boxes = self.prefetch_boxes(x0, y0, downsample)
        self.object.know(boxes)
        done = []
        for i, box in enumerate(boxes):
            while not self._idle.wait(0.05):  # clicks first
                if generation != self._generation or self._closed:
                    return done
            if generation != self._generation or self._closed:
                return done
            if self.adaptation is not None and i:
                # Between two embeddings the annotator is never quiet for long: the slide's learning
                # gets one unit of work here, or it would wait for the whole lattice
                self.adaptation.take_turn()
                if not self._idle.is_set() or generation != self._generation or self._closed:
                    while not self._idle.wait(0.05):  # a click came meanwhile: it goes first
                        if generation != self._generation or self._closed:
                            return done
            self._embedding(box, "prefetch")
            if i < COLOUR_PREFETCH and not self._closed and self.object.refiner_offered():
                # the slide refiner's colour of the tile too (0.2 s beside seconds)
                with contextlib.suppress(Exception):  # its pixels cannot be read now: a click makes them or shows SAM's mask
                    self.tile_colour(box)
            done.append(box)
        return done

    def close(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
            self.object.closed = True
            self._generation += 1
            for future in self._prefetch_futures:
                future.cancel()
            self._continuation.stop()
        self._worker.shutdown(wait=wait, cancel_futures=True)
        self._prefetcher.shutdown(wait=wait, cancel_futures=True)
        self._continuation.shutdown(wait=wait)
        if self.adaptation is not None:
            self.adaptation.close(wait=wait)
        self.object.closed = True  # (``tile_colour`` keeps nothing once closed)
        self.object.colours.clear()
        self.listeners.clear()


class _Work:
    """The annotator as its object's ``TileWork``: embeddings through its listeners and its set of
    tiles being fetched, and a continuation under way stopped when the object's clicks are replaced."""

    def __init__(self, annotator: Annotator) -> None:
        self.annotator = annotator

    def embedding(self, box: TileBox, purpose: str) -> Embedding:
        return self.annotator._embedding(box, purpose)

    def fetching(self, key: str) -> bool:
        return key in self.annotator._fetching

    def changed(self) -> None:
        self.annotator._continuation.supersede()  # a continuation of the object before must not land

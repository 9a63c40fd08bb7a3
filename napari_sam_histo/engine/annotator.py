"""The annotator's state without Qt: one object being clicked (possibly across several tiles),
a worker thread that runs clicks in order, and background prefetching. Accepted objects are
handed to the caller (the dock keeps them in its Shapes layer); the slide source is the caller's
too: ``close`` stops the threads and leaves the source open for reuse.

Clicks are given in level-0 pixels; the model works on tiles of the working level.

Which tile a click uses:

* The first click of an object gets a tile **centred on it** (shifted inward at the slide's edges
  so it stays full-size): half a tile of context on every side, so an object near a grid line is
  not cut there. Exception, to save the encoder (about 2 s per tile for MobileSAM on a CPU): a tile
  whose embedding is already computed or being computed (prefetched, or used by an earlier object)
  is reused when the click lies at least ``reuse_margin`` of a tile (a quarter by default) from
  each of its inner borders. ``reuse_margin=0.5`` always centres.
* Later clicks of the same object go to **every** tile of the object that holds them, so a
  negative click in the overlap of two tiles removes the area from both, and the union below
  honours it.
* A positive click outside the object's tiles, or in none of them as far as ``reuse_margin`` from
  an inner border, also opens a new tile for the object, chosen by the first rule (centred on the
  click, or a reusable one). It starts from the object's earlier clicks that fall inside it (one
  decoder run with all of them), so it agrees with what was already clicked there. A centred tile
  (rather than the grid tile under the click) gives the union the most context on both sides of
  the border the user is crossing, and overlapping tiles are harmless because every tile sees
  every click inside it. A negative click outside the object's tiles is only recorded: nothing of
  the object is there to remove, and it becomes a prompt of any tile opened over it later.

The object's shape is the union of its tiles' masks, vectorised once over their joint extent, so it
is not cut at tile borders and keeps its holes. Undo/redo follow the clicks across tiles.

Threads: clicks and the other actions run in order on one worker thread (a click made while its
tile's embedding is computing waits for it, later clicks wait their turn), so a UI never blocks.
Prefetching runs on a second thread, one embedding at a time, and yields to clicks: before each
embedding it waits until no click or action is queued, and a new ``prefetch_around`` drops the
queued tiles of the previous one. A click therefore waits behind prefetching for at most the one
embedding already running (the encoder is serialised by the predictor). ``listeners`` hear when
an embedding starts and finishes being computed (a UI shows progress with that).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..annotations.cleaning import DEFAULT_TOLERANCE, clean_polygons
from ..annotations.geometry import Polygon
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject, next_class_color  # noqa: F401 (re-exported)
from ..errors import InputError
from ..slides.reader import ImageSource
from .predictor import Predictor
from .session import ClickSession
from .tiles import DEFAULT_TILE_SIZE, TileBox, TileGrid

REUSE_MARGIN = 0.25  # a reused tile must hold the click at least a quarter tile from its inner borders
MAX_CUT_TILES = 4  # continuation tiles prefetched where the current object is cut by a tile border

def combine_tile_masks(boxes: list[TileBox], masks: list[np.ndarray]) -> tuple[tuple[int, int], np.ndarray]:
    """Place tile masks (same level) into one array over their joint extent (OR where tiles
    overlap); returns the extent's top-left (level pixels) and the combined mask."""
    x0, y0 = min(b.x for b in boxes), min(b.y for b in boxes)
    x1, y1 = max(b.x + b.width for b in boxes), max(b.y + b.height for b in boxes)
    joint = np.zeros((y1 - y0, x1 - x0), bool)
    for box, mask in zip(boxes, masks):
        joint[box.y - y0: box.y - y0 + box.height, box.x - x0: box.x - x0 + box.width] |= mask
    return (x0, y0), joint


@dataclass(frozen=True)
class AnnotatorState:
    """The object being clicked, as a snapshot taken on the worker after an action: a UI draws it
    without touching the annotator's live state."""

    clicks: tuple[tuple[float, float, bool], ...]  # level-0 (x, y, positive), in order
    mask: tuple[tuple[int, int], np.ndarray] | None  # (top-left in level pixels, mask over the tiles' extent)
    boxes: tuple[TileBox, ...]  # the tiles the object uses


EMPTY_STATE = AnnotatorState((), None, ())


@dataclass(frozen=True)
class ObjectSnapshot:
    """An object being clicked, as ``Annotator.snapshot`` took it."""

    sessions: dict
    history: list
    redo: list

    @property
    def empty(self) -> bool:
        return not self.history


@dataclass(frozen=True)
class _Step:
    click: tuple[float, float, bool]  # level-0 (x, y, positive)
    keys: tuple[str, ...]  # the tiles whose sessions took the click (one session state each)


class Annotator:
    def __init__(self, predictor: Predictor, source: ImageSource, level: int = 0,
                 tile_size: int = DEFAULT_TILE_SIZE, reuse_margin: float = REUSE_MARGIN,
                 prefetch_radius: int = 1) -> None:
        if not 0 <= level < source.level_count:
            raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {level} was chosen.")
        if not 0 <= reuse_margin <= 0.5:
            raise InputError(f"reuse_margin {reuse_margin} must lie in [0, 0.5] (a fraction of the tile).")
        self.predictor = predictor
        self.source = source
        self.level = level
        width, height = source.level_dimensions[level]
        self.grid = TileGrid(level, width, height, tile_size, source.level_downsamples[level])
        self.reuse_margin = float(reuse_margin)
        self.prefetch_radius = int(prefetch_radius)
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)
        # Called as listener(event, box, purpose) with event "started"/"finished" and purpose
        # "click"/"prefetch", from worker threads, when an embedding is really being computed.
        self.listeners: list[Callable[[str, TileBox, str], None]] = []
        self._lock = threading.RLock()  # guards the state below; held by the worker while it changes it
        self._sessions: dict[str, ClickSession] = {}
        self._history: list[_Step] = []
        self._redo: list[_Step] = []
        self._known: dict[str, TileBox] = {}  # every tile this annotator clicked on or prefetched
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

    # -- where a click goes ----------------------------------------------------------------------
    def _level_point(self, x0: float, y0: float) -> tuple[float, float]:
        d = self.grid.downsample
        x, y = float(x0) / d, float(y0) / d
        self.grid.check_point(x, y)
        return x, y

    def check_click(self, x0: float, y0: float) -> None:
        """``InputError`` unless level-0 (x0, y0) is a valid click on the slide."""
        self._level_point(x0, y0)

    def _available(self, box: TileBox) -> bool:
        key = box.key()
        return key in self._fetching or key in self._sessions or \
            self.predictor.key_for(self.source.identity, key) in self.predictor.cache

    def _box_for_point(self, x: float, y: float) -> TileBox:
        """A new tile for level point (x, y): a tile already computed (or being computed) that holds
        the point ``reuse_margin`` away from its inner borders, nearest centre first; else a tile
        centred on the point."""
        reusable = [b for b in self._known.values()
                    if self.grid.holds_well(b, x, y, self.reuse_margin) and self._available(b)]
        if reusable:
            return min(reusable, key=lambda b: max(abs(b.x + b.width / 2 - x), abs(b.y + b.height / 2 - y)))
        return self.grid.centred_at(x, y)

    def tile_for(self, x0: float, y0: float) -> TileBox:
        """The tile a new object's first click at level-0 (x0, y0) would use now."""
        x, y = self._level_point(x0, y0)
        with self._lock:
            return self._box_for_point(x, y)

    def _route(self, x: float, y: float, positive: bool) -> tuple[list[ClickSession], TileBox | None]:
        """The object's tiles that take the click, and the new tile it opens (or None)."""
        holders = [s for s in self._sessions.values() if s.clicks and s.box.contains(x, y)]
        if not positive or any(self.grid.holds_well(s.box, x, y, self.reuse_margin) for s in holders):
            return holders, None
        box = self._box_for_point(x, y)
        return [s for s in holders if s.box != box], box

    # -- actions (run on the worker; call ``submit_*`` from a UI) --------------------------------
    def click(self, x0: float, y0: float, positive: bool = True) -> AnnotatorState:
        """Add a click at level-0 (x0, y0); returns the new state."""
        x, y = self._level_point(x0, y0)
        with self._lock:
            holders, box = self._route(x, y, positive)
            session = self._sessions.get(box.key()) if box is not None else None
            if box is not None:
                self._known[box.key()] = box
        if box is not None and session is None:
            # Outside the lock: the embedding may take seconds, and readers must not wait for it.
            session = ClickSession(self.predictor, box, self._embedding(box, "click"))
        with self._lock:
            keys = []
            if session is not None:
                d = self.grid.downsample
                earlier = [(cx / d - box.x, cy / d - box.y, p) for cx, cy, p in (s.click for s in self._history)
                           if box.contains(cx / d, cy / d)]
                session.add_clicks(earlier + [(x - box.x, y - box.y, positive)])
                self._sessions[box.key()] = session
                keys.append(box.key())
            for holder in holders:
                holder.add_click(x - holder.box.x, y - holder.box.y, positive)
                keys.append(holder.box.key())
            self._history.append(_Step((float(x0), float(y0), bool(positive)), tuple(keys)))
            self._redo.clear()
            return self._state()

    def undo(self) -> AnnotatorState:
        with self._lock:
            if self._history:
                step = self._history.pop()
                for key in step.keys:
                    self._sessions[key].undo()
                self._redo.append(step)
            return self._state()

    def redo(self) -> AnnotatorState:
        with self._lock:
            if self._redo:
                step = self._redo.pop()
                for key in step.keys:
                    self._sessions[key].redo()
                self._history.append(step)
            return self._state()

    def clear(self) -> AnnotatorState:
        """Forget the object being clicked (its tiles' embeddings stay cached); ``snapshot`` taken
        before brings it back."""
        with self._lock:
            self._sessions, self._history, self._redo = {}, [], []  # new containers: a snapshot keeps the old
            return self._state()

    def snapshot(self) -> "ObjectSnapshot":
        """The object being clicked, whole (its tiles' sessions with their undo, its clicks), so a UI
        can undo an Accept or a Clear: ``restore`` puts it back."""
        with self._lock:
            return ObjectSnapshot(dict(self._sessions), list(self._history), list(self._redo))

    def restore(self, snapshot: "ObjectSnapshot") -> AnnotatorState:
        with self._lock:
            self._sessions, self._history, self._redo = (dict(snapshot.sessions), list(snapshot.history),
                                                         list(snapshot.redo))
            for session in self._sessions.values():
                self._known[session.box.key()] = session.box
            return self._state()

    def add_class(self, name: str, color=None) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class (with ``color`` or a new one) if needed."""
        if name not in self.classes:
            self.classes[name] = tuple(int(c) for c in color) if color is not None else next_class_color(
                self.classes.values())
        return self.classes[name]

    def accept(self, class_name: str = "Tumor", min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE,
               edited: tuple[tuple[int, int], np.ndarray] | None = None) -> AnnotatedObject | None:
        """The current object as an annotation (None when it is empty), and a fresh object to click.

        ``min_area`` (level-0 px²) and ``tolerance`` (level px) clean it (``annotations.cleaning``).
        ``edited`` is a mask corrected by hand, (top-left in level pixels, mask), that replaces
        SAM's. The annotator keeps no list of accepted objects: a UI's layer is their one home."""
        with self._lock:
            (x, y), mask = edited if edited is not None else (self.current_mask() or ((0, 0), None))
            d = self.grid.downsample
            polygons = [] if mask is None else clean_polygons(mask, (x * d, y * d), d, min_area, tolerance)
            if not polygons:
                self.clear()
                return None
            obj = AnnotatedObject(polygons, class_name, self.add_class(class_name), self.predictor.model.name,
                                  len(self._history),
                                  {"decoder": self.predictor.decoder.kind, "level": self.level,
                                   "edited": edited is not None})
            self.clear()
            return obj

    def accept_undoable(self, *args, **kwargs) -> tuple[AnnotatedObject | None, ObjectSnapshot]:
        """``accept``, and the snapshot that brings the object back, taken in the same step on the
        worker, after every click queued before it (a snapshot taken when the user pressed Enter
        would miss those)."""
        with self._lock:
            snapshot = self.snapshot()
            return self.accept(*args, **kwargs), snapshot

    def clear_undoable(self) -> tuple[AnnotatorState, ObjectSnapshot]:
        """``clear``, and the snapshot that brings the object back (see ``accept_undoable``)."""
        with self._lock:
            snapshot = self.snapshot()
            return self.clear(), snapshot

    # -- reading the state (any thread) ----------------------------------------------------------
    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        """The current object's clicks in level-0 pixels, in order."""
        with self._lock:
            return [step.click for step in self._history]

    def _active(self) -> list[ClickSession]:
        return [s for s in self._sessions.values() if s.clicks]

    def current_mask(self) -> tuple[tuple[int, int], np.ndarray] | None:
        """The current object's mask over its tiles' joint extent (level pixels), or None."""
        with self._lock:
            active = self._active()
            if not active:
                return None
            return combine_tile_masks([s.box for s in active], [s.mask() for s in active])

    def _state(self) -> AnnotatorState:
        with self._lock:
            return AnnotatorState(tuple(step.click for step in self._history), self.current_mask(),
                                  tuple(s.box for s in self._active()))

    def state(self) -> AnnotatorState:
        return self._state()

    def current_polygons(self, min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE) -> list[Polygon]:
        """The current object as the polygons ``accept`` would give (level-0 pixels)."""
        combined = self.current_mask()
        if combined is None:
            return []
        (x, y), mask = combined
        d = self.grid.downsample
        return clean_polygons(mask, (x * d, y * d), d, min_area, tolerance)

    def cut_points(self) -> list[tuple[float, float]]:
        """Level points where the current object's mask reaches an inner border of its tiles, largest
        cut first: the object probably goes on there, and its next click lands just beyond."""
        from scipy import ndimage

        with self._lock:
            active = self._active()
            if not active:
                return []
            (x0, y0), mask = combine_tile_masks([s.box for s in active], [s.mask() for s in active])
            covered = combine_tile_masks([s.box for s in active], [np.ones(s.box.shape, bool) for s in active])[1]
        height, width = mask.shape
        closed = np.ones((height + 2, width + 2), bool)  # True: covered by a tile, or outside the level
        closed[1:-1, 1:-1] = covered
        closed[0, 1:-1] = y0 <= 0
        closed[-1, 1:-1] = y0 + height >= self.grid.height
        closed[1:-1, 0] = x0 <= 0
        closed[1:-1, -1] = x0 + width >= self.grid.width
        open_ = ~closed
        found = []  # (size, level x, level y) of each cut, each border side on its own
        for shift in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
                      (slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
            cut = mask & open_[shift]
            if not cut.any():
                continue
            labels, _ = ndimage.label(cut, structure=np.ones((3, 3), int))
            for index, region in enumerate(ndimage.find_objects(labels), start=1):
                rows, cols = np.nonzero(labels[region] == index)
                middle = len(rows) // 2
                found.append((len(rows), x0 + region[1].start + cols[middle] + 0.5,
                              y0 + region[0].start + rows[middle] + 0.5))
        found.sort(key=lambda item: -item[0])
        return [(x, y) for size, x, y in found[:MAX_CUT_TILES] if size >= 4]  # smaller: a corner, not a cut

    # -- background work -----------------------------------------------------------------------
    def _embedding(self, box: TileBox, purpose: str):
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
            try:
                listener(event, box, purpose)
            except Exception:  # a listener's failure must not stop the work
                pass

    def _submit(self, function, *args) -> Future:
        with self._count_lock:
            self._queued += 1
            self._idle.clear()

        def run():
            try:
                return function(*args)
            finally:
                with self._count_lock:
                    self._queued -= 1
                    if not self._queued:
                        self._idle.set()

        return self._worker.submit(run)

    def submit_click(self, x0: float, y0: float, positive: bool = True) -> Future:
        """Queue a click; the future's result is the ``AnnotatorState`` after it."""
        return self._submit(self.click, x0, y0, positive)

    def submit(self, action: str, *args) -> Future:
        """Queue "undo", "redo", "clear", "restore" (result: the state after it), "accept" (result:
        the accepted object or None), or "accept_undoable" / "clear_undoable" (result: that and the
        snapshot that undoes it) behind the queued clicks."""
        if action not in ("undo", "redo", "clear", "accept", "restore", "accept_undoable", "clear_undoable"):
            raise ValueError(f"Unknown action {action!r}.")
        return self._submit(getattr(self, action), *args)

    @property
    def idle(self) -> bool:
        """No click or action is queued or running."""
        return self._idle.is_set()

    def prefetch_boxes(self, x0: float, y0: float) -> list[TileBox]:
        """What ``prefetch_around(x0, y0)`` computes, in order: the tiles the current object's next
        clicks would open where a tile border cuts it, then the half-tile lattice around level-0
        (x0, y0) (clamped into the slide), where a new object's first click reuses a tile."""
        d = self.grid.downsample
        x = min(max(float(x0) / d, 0.0), self.grid.width - 1e-3)
        y = min(max(float(y0) / d, 0.0), self.grid.height - 1e-3)
        with self._lock:
            boxes = [self._box_for_point(px, py) for px, py in self.cut_points()]
        boxes += self.grid.lattice_around(x, y, self.prefetch_radius)
        return list({box.key(): box for box in reversed(boxes)}.values())[::-1]  # unique, first kept

    def prefetch_around(self, x0: float, y0: float) -> Future:
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
            future = self._prefetcher.submit(self._prefetch, x0, y0, self._generation)
            self._prefetch_futures = [future]
            return future

    def _prefetch(self, x0: float, y0: float, generation: int) -> list[TileBox]:
        boxes = self.prefetch_boxes(x0, y0)
        with self._lock:
            for box in boxes:
                self._known[box.key()] = box
        done = []
        for box in boxes:
            while not self._idle.wait(0.05):  # clicks first
                if generation != self._generation or self._closed:
                    return done
            if generation != self._generation or self._closed:
                return done
            self._embedding(box, "prefetch")
            done.append(box)
        return done

    def close(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._generation += 1
            for future in self._prefetch_futures:
                future.cancel()
        self._worker.shutdown(wait=wait, cancel_futures=True)
        self._prefetcher.shutdown(wait=wait, cancel_futures=True)
        self.listeners.clear()

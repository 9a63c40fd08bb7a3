"""The annotator's state without Qt: one object being clicked (possibly across several tiles),
a worker thread that runs clicks in order, and background prefetching. Accepted objects are
handed to the caller (the dock keeps them in its Shapes layer); the slide source is the caller's
too: ``close`` stops the threads and leaves the source open for reuse.

Clicks are given in level-0 pixels; the model works on tiles of a working level
(``working_levels``: the pyramid's levels and virtual ones). The working level is fixed
(``level=N``) or follows the view (``level="auto"``: a UI passes each click's level, chosen by
``level_for_view``), so one object may have tiles at several levels: a coarse outline refined at
a higher magnification.

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

Across levels: a click goes to the object's tiles of its own level that hold it (and opens one
there by the rules above) and to every *finer* tile that holds it; coarser tiles do not take it,
so refining a border at a high magnification changes the object only there. A finer tile opened
over a coarser one starts from the clicks inside it and, as its mask prompt, the object's logits
there (``blending.sample_field``), so the first fine click refines instead of starting again. A
negative click opens a tile too when a coarser tile of the object holds it (removing a bit of a
coarse outline).

Continuation (``continue_object``; in the background after each click when ``continuation=True``,
as the dock runs it): where the object reaches a border of its tiles that is not the slide's, the
neighbouring tile (centred on that point, at the last click's level) is computed and decoded from
the object's clicks inside it, a positive point where the object was cut, and the object's logits
over the overlap as mask prompt (unknown beyond it), so the object grows past the border without a
click there. At most ``MAX_CONTINUATION_TILES`` per object; a new click, Clear or Accept stops it;
the tiles it adds belong to the click that caused them (undo removes them with it).

The object's shape is its tiles' logits blended (``blending``: overlapping tiles averaged with
weights that fall at inner borders, finer levels over coarser), thresholded and vectorised once over
their joint extent, so it is not cut at tile borders and keeps its holes. Undo/redo follow the
clicks across tiles and levels.

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
from .blending import Blend, TileLogits, blend, sample_field
from .predictor import Predictor
from .session import ClickSession
from .tiles import DEFAULT_TILE_SIZE, TileBox, TileGrid
from .working_levels import WorkingLevel, auto_level, level_with_downsample, working_levels

REUSE_MARGIN = 0.25  # a reused tile must hold the click at least a quarter tile from its inner borders
MAX_CUT_TILES = 4  # continuation tiles prefetched where the current object is cut by a tile border
MAX_CONTINUATION_TILES = 8  # tiles one object may grow into by itself
UNKNOWN_LOGIT = 0.0  # a continuation tile's mask prompt beyond the object's tiles: neither in nor out

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
    mask: tuple[tuple[int, int], np.ndarray] | None  # (top-left, mask over the tiles' extent), in pixels of:
    boxes: tuple[TileBox, ...]  # the tiles the object uses
    downsample: float = 1.0  # level-0 pixels per pixel of ``mask`` (the finest level clicked, see blending)


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
    grown: int = 0  # how many of ``keys`` continuation added after the click


class Annotator:
    def __init__(self, predictor: Predictor, source: ImageSource, level: int | str = 0,
                 tile_size: int = DEFAULT_TILE_SIZE, reuse_margin: float = REUSE_MARGIN,
                 prefetch_radius: int = 1, continuation: bool = False) -> None:
        """``level``: a pyramid level (fixed) or ``"auto"`` (each click at the level a UI passes,
        ``level_for_view``; level 0 until one does). ``continuation``: grow the object into
        neighbouring tiles in the background after each click (see the module)."""
        self.auto = level == "auto"
        if not self.auto and not (isinstance(level, (int, np.integer)) and 0 <= level < source.level_count):
            raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {level!r} was chosen "
                             f"(or 'auto').")
        if not 0 <= reuse_margin <= 0.5:
            raise InputError(f"reuse_margin {reuse_margin} must lie in [0, 0.5] (a fraction of the tile).")
        self.predictor = predictor
        self.source = source
        self.tile_size = int(tile_size)
        self.levels = working_levels(source, self.tile_size)
        self.working = (self.levels[0] if self.auto else
                        WorkingLevel(float(source.level_downsamples[level]), int(level), False))
        self._grids: dict[float, TileGrid] = {}
        self.grid_for(self.working)  # checks the tile size
        self.reuse_margin = float(reuse_margin)
        self.prefetch_radius = int(prefetch_radius)
        self.continuation = bool(continuation)
        self._continuation_generation = 0  # a newer request (after a newer click) stops an older one
        self._continuation_futures: list[Future] = []
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
        self._continuer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-continuation")

    # -- working levels --------------------------------------------------------------------------
    @property
    def level(self) -> int:
        """The pyramid level the current working level reads."""
        return self.working.read_level

    @property
    def grid(self) -> TileGrid:
        """The tile grid of the current working level (the last click's)."""
        return self.grid_for(self.working)

    def grid_for(self, working: WorkingLevel) -> TileGrid:
        grid = self._grids.get(working.downsample)
        if grid is None:
            grid = self._grids[working.downsample] = working.grid(self.source, self.tile_size)
        return grid

    def level_for_view(self, width0: float, height0: float) -> WorkingLevel:
        """The working level a click made in a view ``width0 x height0`` level-0 pixels wide uses:
        ``auto_level`` with ``level="auto"``, the fixed level otherwise."""
        return auto_level(self.levels, width0, height0, self.tile_size) if self.auto else self.working

    def _working_for(self, downsample: float | None) -> WorkingLevel:
        if downsample is None or not self.auto:
            return self.working
        return level_with_downsample(self.levels, downsample)

    # -- where a click goes ----------------------------------------------------------------------
    def _level_point(self, x0: float, y0: float, grid: TileGrid | None = None) -> tuple[float, float]:
        grid = grid or self.grid
        width0, height0 = self.source.level_dimensions[0]
        x0, y0 = float(x0), float(y0)
        if np.isfinite(x0) and np.isfinite(y0) and 0 <= x0 < width0 and 0 <= y0 < height0:
            # a coarser level keeps whole pixels only: the slide's last level-0 pixels belong to its last
            x0, y0 = min(x0, grid.width * grid.downsample - 1e-3), min(y0, grid.height * grid.downsample - 1e-3)
        x, y = x0 / grid.downsample, y0 / grid.downsample
        grid.check_point(x, y)
        return x, y

    def check_click(self, x0: float, y0: float) -> None:
        """``InputError`` unless level-0 (x0, y0) is a valid click on the slide."""
        self._level_point(x0, y0)

    def _available(self, box: TileBox) -> bool:
        key = box.key()
        return key in self._fetching or key in self._sessions or \
            self.predictor.key_for(self.source.identity, key) in self.predictor.cache

    def _box_for_point(self, x: float, y: float, grid: TileGrid | None = None) -> TileBox:
        """A new tile for point (x, y) of ``grid``'s level: a tile already computed (or being
        computed) that holds the point ``reuse_margin`` away from its inner borders, nearest centre
        first; else a tile centred on the point."""
        grid = grid or self.grid
        reusable = [b for b in self._known.values()
                    if b.downsample == grid.downsample and grid.holds_well(b, x, y, self.reuse_margin)
                    and self._available(b)]
        if reusable:
            return min(reusable, key=lambda b: max(abs(b.x + b.width / 2 - x), abs(b.y + b.height / 2 - y)))
        return grid.centred_at(x, y)

    def tile_for(self, x0: float, y0: float, downsample: float | None = None) -> TileBox:
        """The tile a new object's first click at level-0 (x0, y0) would use now."""
        grid = self.grid_for(self._working_for(downsample))
        x, y = self._level_point(x0, y0, grid)
        with self._lock:
            return self._box_for_point(x, y, grid)

    def _route(self, grid: TileGrid, x0: float, y0: float, positive: bool) -> tuple[list[ClickSession], TileBox | None]:
        """The object's tiles that take the level-0 click, and the new tile it opens (or None)."""
        d = grid.downsample
        x, y = x0 / d, y0 / d
        active = self._active()
        same = [s for s in active if s.box.downsample == d and s.box.contains(x, y)]
        finer = [s for s in active if s.box.downsample < d
                 and s.box.contains(x0 / s.box.downsample, y0 / s.box.downsample)]
        coarser = [s for s in active if s.box.downsample > d
                   and s.box.contains(x0 / s.box.downsample, y0 / s.box.downsample)]
        opens = positive or bool(coarser)  # a negative click outside the object is only recorded
        if not opens or any(grid.holds_well(s.box, x, y, self.reuse_margin) for s in same):
            return same + finer, None
        box = self._box_for_point(x, y, grid)
        return [s for s in same + finer if s.box != box], box

    # -- actions (run on the worker; call ``submit_*`` from a UI) --------------------------------
    def click(self, x0: float, y0: float, positive: bool = True, downsample: float | None = None) -> AnnotatorState:
        """Add a click at level-0 (x0, y0), at the working level of ``downsample`` (with
        ``level="auto"``; the fixed level otherwise); returns the new state."""
        working = self._working_for(downsample)
        grid = self.grid_for(working)
        x, y = self._level_point(x0, y0, grid)
        x0, y0 = x * grid.downsample, y * grid.downsample
        with self._lock:
            self.working = working
            holders, box = self._route(grid, x0, y0, positive)
            session = self._sessions.get(box.key()) if box is not None else None
            if box is not None:
                self._known[box.key()] = box
        if box is not None and session is None:
            # Outside the lock: the embedding may take seconds, and readers must not wait for it.
            session = ClickSession(self.predictor, box, self._embedding(box, "click"))
        with self._lock:
            keys = []
            if session is not None:
                d = box.downsample
                earlier = [(cx / d - box.x, cy / d - box.y, p) for cx, cy, p in (s.click for s in self._history)
                           if box.contains(cx / d, cy / d)]
                prompt = self._mask_prompt(session) if not session.clicks else None
                session.add_clicks(earlier + [(x - box.x, y - box.y, positive)], mask_prompt=prompt)
                self._sessions[box.key()] = session
                keys.append(box.key())
            for holder in holders:
                hd = holder.box.downsample
                holder.add_click(x0 / hd - holder.box.x, y0 / hd - holder.box.y, positive)
                keys.append(holder.box.key())
            self._history.append(_Step((float(x0), float(y0), bool(positive)), tuple(keys)))
            self._redo.clear()
            state = self._state()
        if self.continuation:
            self._schedule_continuation()
        return state

    def undo(self) -> AnnotatorState:
        with self._lock:
            self._continuation_generation += 1  # a continuation of the undone click must not land
            if self._history:
                step = self._history.pop()
                for key in step.keys:
                    self._sessions[key].undo()
                self._redo.append(step)
            return self._state()

    def redo(self) -> AnnotatorState:
        with self._lock:
            self._continuation_generation += 1
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
            self._continuation_generation += 1
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
            self._continuation_generation += 1
            return self._state()

    def add_class(self, name: str, color=None) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class (with ``color`` or a new one) if needed."""
        if name not in self.classes:
            self.classes[name] = tuple(int(c) for c in color) if color is not None else next_class_color(
                self.classes.values())
        return self.classes[name]

    def accept(self, class_name: str = "Tumor", min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE,
               edited: tuple | None = None) -> AnnotatedObject | None:
        """The current object as an annotation (None when it is empty), and a fresh object to click.

        ``min_area`` (level-0 px²) and ``tolerance`` (pixels of the mask) clean it
        (``annotations.cleaning``). ``edited`` is a mask corrected by hand, (top-left, mask) or
        (top-left, mask, downsample) in the pixels of the state a UI drew (``AnnotatorState``), that
        replaces SAM's. The annotator keeps no list of accepted objects: a UI's layer is their one home."""
        with self._lock:
            result = self._blend()
            d = result.downsample if result is not None else self.grid.downsample
            if edited is not None:
                (x, y), mask = edited[0], edited[1]
                d = float(edited[2]) if len(edited) > 2 else d
            elif result is not None:
                (x, y), mask = (result.x, result.y), result.mask()
            else:
                (x, y), mask = (0, 0), None
            polygons = [] if mask is None else clean_polygons(mask, (x * d, y * d), d, min_area, tolerance)
            if not polygons:
                self.clear()
                return None
            finest = min((s.box for s in self._active()), key=lambda b: b.downsample, default=None)
            obj = AnnotatedObject(polygons, class_name, self.add_class(class_name), self.predictor.model.name,
                                  len(self._history),
                                  {"decoder": self.predictor.decoder.kind,
                                   "level": finest.level if finest is not None else self.level,
                                   "downsample": finest.downsample if finest is not None else d,
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

    def _blend(self) -> Blend | None:
        with self._lock:
            tiles = [TileLogits(s.box, s.logits, self._level_size(s.box)) for s in self._active()]
        return blend(tiles)

    def _level_size(self, box: TileBox) -> tuple[int, int]:
        grid = self._grids.get(box.downsample)
        if grid is not None:
            return grid.width, grid.height
        return self.source.size_at(box.downsample, box.level) if box.virtual else \
            tuple(self.source.level_dimensions[box.level])

    def _mask_prompt(self, session: ClickSession):
        """A new tile's mask prompt: the object's blended logits under it, in SAM's low-resolution
        frame, when a coarser tile of the object covers it (refinement); else None."""
        box = session.box
        bx, by, bw, bh = box.level0_box

        def overlaps(other):
            ox, oy, ow, oh = other.level0_box
            return ox < bx + bw and bx < ox + ow and oy < by + bh and by < oy + oh

        if not any(s.box.downsample > box.downsample and overlaps(s.box) for s in self._active()):
            return None
        result = self._blend()
        embedding = session.embedding
        side = self.predictor.image_size // 4  # SAM's low-resolution frame (256 for a 1024 input)
        frame = (4 * embedding.original_size[1] / embedding.input_size[1],
                 4 * embedding.original_size[0] / embedding.input_size[0])
        # unknown (neither in nor out) where no tile of the object reaches
        return sample_field(result, box, (side, side), frame, outside=UNKNOWN_LOGIT).to(self.predictor.device)

    def current_mask(self) -> tuple[tuple[int, int], np.ndarray] | None:
        """The current object's mask over its tiles' joint extent, or None; in pixels of
        ``state().downsample`` (the working level's when the object has one level)."""
        result = self._blend()
        return None if result is None else ((result.x, result.y), result.mask())

    def _state(self) -> AnnotatorState:
        with self._lock:
            result = self._blend()
            mask = None if result is None else ((result.x, result.y), result.mask())
            return AnnotatorState(tuple(step.click for step in self._history), mask,
                                  tuple(s.box for s in self._active()),
                                  result.downsample if result is not None else self.grid.downsample)

    def state(self) -> AnnotatorState:
        return self._state()

    def current_polygons(self, min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE) -> list[Polygon]:
        """The current object as the polygons ``accept`` would give (level-0 pixels)."""
        result = self._blend()
        if result is None:
            return []
        d = result.downsample
        return clean_polygons(result.mask(), (result.x * d, result.y * d), d, min_area, tolerance)

    def cut_points(self) -> list[tuple[float, float]]:
        """Level points where the current object's mask reaches an inner border of its tiles, largest
        cut first: the object probably goes on there, and its next click lands just beyond."""
        from scipy import ndimage

        with self._lock:
            d = self.grid.downsample
            active = [s for s in self._active() if s.box.downsample == d]
            if not active:
                return []
            others = [s.box for s in self._active() if s.box.downsample != d]
            (x0, y0), mask = combine_tile_masks([s.box for s in active], [s.mask() for s in active])
            covered = combine_tile_masks([s.box for s in active], [np.ones(s.box.shape, bool) for s in active])[1]
        height, width = mask.shape
        for box in others:  # the object's tiles at other levels cover it there too (no growth over them)
            bx0, by0, bw, bh = box.level0_box
            c0, r0 = max(int(np.ceil(bx0 / d)) - x0, 0), max(int(np.ceil(by0 / d)) - y0, 0)
            c1, r1 = min(int(np.floor((bx0 + bw) / d)) - x0, width), min(int(np.floor((by0 + bh) / d)) - y0, height)
            if c1 > c0 and r1 > r0:
                covered[r0:r1, c0:c1] = True
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

    # -- continuation ----------------------------------------------------------------------------
    def continue_object(self, generation: int | None = None) -> list[TileBox]:
        """Grow the object into the tiles beyond its cut borders (see the module), one at a time,
        until none is left, the budget is spent, or the object changes (a click, undo, Clear,
        Accept, or a newer ``generation`` of background continuation); returns the tiles added."""
        added = []
        while True:
            with self._lock:
                grown = sum(step.grown for step in self._history)  # undone growth frees its budget
                if self._closed or not self._history or self._redo or grown >= MAX_CONTINUATION_TILES:
                    return added  # (with a redo pending, growing would rewrite what redo brings back)
                if generation is not None and generation != self._continuation_generation:
                    return added
                history = self._history
                steps = len(history)
                found = None
                for px, py in self.cut_points():
                    box = self._box_for_point(px, py)
                    session = self._sessions.get(box.key())
                    if session is None or not session.clicks:  # (no redo is pending: checked above)
                        found = (px, py, box)
                        break
                if found is None:
                    return added
                px, py, box = found
                self._known[box.key()] = box
            embedding = self._embedding(box, "continuation")  # outside the lock: seconds
            with self._lock:
                if (self._history is not history or len(self._history) != steps or self._closed or self._redo
                        or self._queued_actions()):
                    return added  # the object changed (or a click is queued) meanwhile: the next click asks again
                if generation is not None and generation != self._continuation_generation:
                    return added
                session = self._sessions.get(box.key()) or ClickSession(self.predictor, box, embedding)
                d = box.downsample
                earlier = [(cx / d - box.x, cy / d - box.y, p) for cx, cy, p in (s.click for s in self._history)
                           if box.contains(cx / d, cy / d)]
                seed = (px - box.x, py - box.y, True)  # inside the object, where a border cut it
                session.add_clicks(earlier + [seed], mask_prompt=self._overlap_prompt(session))
                self._sessions[box.key()] = session
                last = self._history[-1]
                self._history[-1] = _Step(last.click, last.keys + (box.key(),), last.grown + 1)
                added.append(box)
            self._notify("extended", box, "continuation")

    def _overlap_prompt(self, session: ClickSession):
        """The object's logits over a continuation tile, unknown beyond its tiles (mask prompt)."""
        result = self._blend()
        if result is None:
            return None
        embedding = session.embedding
        side = self.predictor.image_size // 4
        frame = (4 * embedding.original_size[1] / embedding.input_size[1],
                 4 * embedding.original_size[0] / embedding.input_size[0])
        return sample_field(result, session.box, (side, side), frame, outside=UNKNOWN_LOGIT).to(self.predictor.device)

    def _schedule_continuation(self) -> None:
        """``continue_object`` on its own thread (prefetching must not delay it), after the queued
        clicks; a newer click's request supersedes it."""
        with self._lock:
            if self._closed:
                return
            self._continuation_generation += 1
            for future in self._continuation_futures:
                future.cancel()
            generation = self._continuation_generation

            def run():
                while not self._idle.wait(0.05):  # clicks first
                    if generation != self._continuation_generation or self._closed:
                        return []
                return self.continue_object(generation)

            self._continuation_futures = [self._continuer.submit(run)]

    def stop_continuation(self) -> None:
        """Stop the background continuation before its next tile (a UI's switch)."""
        with self._lock:
            self._continuation_generation += 1
            for future in self._continuation_futures:
                future.cancel()

    def wait_continuation(self, timeout: float | None = None) -> None:
        """Until the background continuation requested so far is done (tests, the benchmark)."""
        with self._lock:
            futures = list(self._continuation_futures)
        from concurrent.futures import CancelledError

        for future in futures:
            try:
                future.result(timeout)
            except CancelledError:
                pass

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

    def _queued_actions(self) -> int:
        with self._count_lock:
            return self._queued

    def _submit(self, function, *args) -> Future:
        with self._count_lock:  # (not self._lock: a UI thread must never wait for a running decode)
            self._queued += 1
            self._idle.clear()
            self._continuation_generation += 1  # a queued click or action stops continuation now

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

    def prefetch_boxes(self, x0: float, y0: float, downsample: float | None = None) -> list[TileBox]:
        """What ``prefetch_around(x0, y0)`` computes, in order: the tiles the current object's next
        clicks would open where a tile border cuts it (at its last click's level), then the half-tile
        lattice around level-0 (x0, y0) (clamped into the slide) at the level of ``downsample``
        (the view's, with ``level="auto"``), where a new object's first click reuses a tile."""
        grid = self.grid_for(self._working_for(downsample))
        d = grid.downsample
        x = min(max(float(x0) / d, 0.0), grid.width - 1e-3)
        y = min(max(float(y0) / d, 0.0), grid.height - 1e-3)
        with self._lock:
            boxes = [self._box_for_point(px, py) for px, py in self.cut_points()]
        boxes += grid.lattice_around(x, y, self.prefetch_radius)
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
            self._continuation_generation += 1
            for future in self._prefetch_futures + self._continuation_futures:
                future.cancel()
        self._worker.shutdown(wait=wait, cancel_futures=True)
        self._prefetcher.shutdown(wait=wait, cancel_futures=True)
        self._continuer.shutdown(wait=wait, cancel_futures=True)
        self.listeners.clear()

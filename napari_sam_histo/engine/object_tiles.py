"""The object being clicked, as state with no threads of its own: its tiles (one click session
each), its clicks with undo and redo, and its shape blended from the tiles. ``annotator`` runs it
on a worker thread for a UI; kept apart so the rules of where a click goes and how tiles make one
object can be read (and tested) without the threading around them. A lock guards the state so
other threads may read it while the worker changes it.

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
  or is in the cache's disk store (a half-tile lattice tile around the click, as
  ``napari-sam-histo embed`` precomputes them) is reused when the click lies at least
  ``reuse_margin`` of a tile (a quarter by default) from each of its inner borders. With the
  default margin some lattice tile always qualifies, so on a precomputed slide no click waits for
  the encoder. ``reuse_margin=0.5`` always centres.
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

The object's shape is its tiles' logits blended (``blending``: overlapping tiles averaged with
weights that fall at inner borders, finer levels over coarser), thresholded and vectorised once over
their joint extent, so it is not cut at tile borders and keeps its holes. Undo/redo follow the
clicks across tiles and levels. ``cut_points`` and ``_grow`` are what continuation (``annotator``)
grows the object with, only inside ``view``; a click empties the tiles the object grew into by
itself (they were decoded from its shape before the click), so a correction applies to the whole
object and growth starts again from the corrected shape. ``accept(view=...)`` refuses an object that
reaches beyond the view (``BeyondView``): what is accepted is what the user saw.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..annotations.cleaning import DEFAULT_TOLERANCE, clean_polygons
from ..annotations.geometry import Polygon
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject, next_class_color
from ..errors import InputError
from ..slides.source import ImageSource
from .blending import Blend, TileLogits, blend, sample_field
from .predictor import Predictor
from .session import FIRST_MASK_RULES, ClickSession
from .tiles import DEFAULT_TILE_SIZE, TileBox, TileGrid
from .working_levels import WorkingLevel, auto_level, level_with_downsample, working_levels

REUSE_MARGIN = 0.25  # a reused tile must hold the click at least a quarter tile from its inner borders
MAX_CUT_TILES = 4  # continuation tiles prefetched where the current object is cut by a tile border
UNKNOWN_LOGIT = 0.0  # a continuation tile's mask prompt beyond the object's tiles: neither in nor out
# tiles whose colour features the slide refiner's maps are made from are kept (float16: 18 MB for a
# 1024-px tile, so 144 MB at most, and only while the slide is learnt with its refiner on): a tile's
# first refined click then costs a multiply-add instead of the blurs (0.2 s alone, 0.5 s and more
# beside adaptation steps). The prefetcher makes them for its first COLOUR_PREFETCH tiles only (the
# current object's cut tiles and the view's centre come first), so what it makes is not pushed out
# by its own later tiles, and room is left for the tiles an accepted object taught the refiner.
MAX_COLOUR_TILES = 8
COLOUR_PREFETCH = 4


def combine_tile_masks(boxes: list[TileBox], masks: list[np.ndarray]) -> tuple[tuple[int, int], np.ndarray]:
    """Place tile masks (same level) into one array over their joint extent (OR where tiles
    overlap); returns the extent's top-left (level pixels) and the combined mask."""
    x0, y0 = min(b.x for b in boxes), min(b.y for b in boxes)
    x1, y1 = max(b.x + b.width for b in boxes), max(b.y + b.height for b in boxes)
    joint = np.zeros((y1 - y0, x1 - x0), bool)
    for box, mask in zip(boxes, masks):
        joint[box.y - y0: box.y - y0 + box.height, box.x - x0: box.x - x0 + box.width] |= mask
    return (x0, y0), joint


def mask_extent(mask: np.ndarray, x: int, y: int, downsample: float) -> tuple[float, float, float, float] | None:
    """The level-0 box (x0, y0, x1, y1) of a mask's pixels (top-left (x, y) in pixels of
    ``downsample``), or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    d = float(downsample)
    return ((x + cols[0]) * d, (y + rows[0]) * d, (x + cols[-1] + 1) * d, (y + rows[-1] + 1) * d)


def box_within(box, view, slack: float = 0.0) -> bool:
    """Whether level-0 ``box`` (x0, y0, x1, y1) lies inside ``view`` (the same), give or take ``slack``
    level-0 pixels (one pixel of the level the mask is held at)."""
    return (box[0] >= view[0] - slack and box[1] >= view[1] - slack
            and box[2] <= view[2] + slack and box[3] <= view[3] + slack)


@dataclass(frozen=True)
class AnnotatorState:
    """The object being clicked, as a snapshot taken on the worker after an action: a UI draws it
    without touching the annotator's live state."""

    clicks: tuple[tuple[float, float, bool], ...]  # level-0 (x, y, positive), in order
    mask: tuple[tuple[int, int], np.ndarray] | None  # (top-left, mask over the tiles' extent), in pixels of:
    boxes: tuple[TileBox, ...]  # the tiles the object uses
    downsample: float = 1.0  # level-0 pixels per pixel of ``mask`` (the finest level clicked, see blending)
    refined: bool = False  # a tile of it shows the slide refiner's mask (not SAM's own)


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
    taken: tuple[str, ...]  # the tiles whose sessions took the click (one session state each)
    dropped: tuple[str, ...] = ()  # grown tiles the click emptied: the object grows again from its new shape
    grown: tuple[str, ...] = ()  # tiles continuation decoded after the click

    @property
    def keys(self) -> tuple[str, ...]:
        """Every tile whose session this step changed, once per state it added (undo pops each)."""
        return self.taken + self.dropped + self.grown


@dataclass(frozen=True)
class BeyondView:
    """Accept was not done: the object reaches beyond the view the user looks at. ``extent`` is its
    level-0 box (x0, y0, x1, y1), so a UI can show it whole before the user accepts again."""

    extent: tuple[float, float, float, float]


class SlideLearning(Protocol):
    """What the annotator needs of the slide's learning (``training.slide_adaptation``, set by a UI
    as ``adaptation``; the engine imports nothing of training)."""

    def predictor(self) -> Predictor: ...  # what a new object decodes with

    def refiner(self): ...  # the slide refiner a new object's tiles use, or None

    def add_object(self, sessions, blended, edited=None, key=None, read_tile=None, tile_colour=None) -> int: ...

    def take_turn(self, timeout: float | None = None) -> bool: ...  # one unit of learning, now

    def close(self, wait: bool = True) -> None: ...


class AcceptedObjects(Protocol):
    """Where the annotator hands every accepted object besides the slide's learning: a project's
    training set (``training.project_objects.ProjectRecorder``, set by a UI as ``recorder``). It
    must return at once (the writing is its own writer's)."""

    def add_accepted(self, obj, sessions, blended, edited=None): ...


class ObjectTiles:
    def __init__(self, predictor: Predictor, source: ImageSource, level: int | str = 0,
                 tile_size: int = DEFAULT_TILE_SIZE, reuse_margin: float = REUSE_MARGIN,
                 first_mask: str = "unflooded", honour_clicks: bool = True) -> None:
        """``level``: a pyramid level (fixed) or ``"auto"`` (each click at the level a UI passes,
        ``level_for_view``; level 0 until one does). ``first_mask``: how a new tile's first click
        picks among SAM's candidates (``session.FIRST_MASK_RULES``). ``honour_clicks``: a decode that
        loses the object gives way to one that keeps it (``ClickSession``; off for benchmarks)."""
        if first_mask not in FIRST_MASK_RULES:
            raise InputError(f"first_mask {first_mask!r}: choose one of {', '.join(FIRST_MASK_RULES)}.")
        self.auto = level == "auto"
        if not self.auto and not (isinstance(level, (int, np.integer)) and 0 <= level < source.level_count):
            raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {level!r} was chosen "
                             f"(or 'auto').")
        if not 0 <= reuse_margin <= 0.5:
            raise InputError(f"reuse_margin {reuse_margin} must lie in [0, 0.5] (a fraction of the tile).")
        self.predictor = predictor
        # what the current object's tiles decode with: ``predictor``, or the decoder adapted to this
        # slide (``adaptation``, set by a UI: ``training.slide_adaptation``), chosen at the object's
        # first click and kept for all its tiles
        self.adaptation: SlideLearning | None = None
        self.recorder: AcceptedObjects | None = None
        self._decoding = predictor
        self._refining = None  # the slide refiner the object's tiles use (``adaptation.refiner()``), or None
        self.source = source
        self.tile_size = int(tile_size)
        self.levels = working_levels(source, self.tile_size)
        self.working = (self.levels[0] if self.auto else
                        WorkingLevel(float(source.level_downsamples[level]), int(level), False))
        self._grids: dict[float, TileGrid] = {}
        self.grid_for(self.working)  # checks the tile size
        self.reuse_margin = float(reuse_margin)
        # How a new object's first tile picks among SAM's candidates (``session.FIRST_MASK_RULES``)
        # when the tile spans the view (``_spans_view``: auto's levels do): "unflooded" refuses a
        # candidate that covers most of the tile (a click on a small nest at a coarse level otherwise
        # takes the whole tissue core). A tile much smaller than the view (a finer level pinned) takes
        # SAM's own choice: an object larger than such a tile is what the user sees.
        self.first_mask = first_mask
        self.honour_clicks = bool(honour_clicks)
        # The level-0 box (x0, y0, x1, y1) the user looks at, set by a UI (None: no bound). The object
        # grows by itself only where a tile border cuts it inside this box: never past a border the
        # user has not seen.
        self.view: tuple[float, float, float, float] | None = None
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)
        self._lock = threading.RLock()  # guards the state below; held by the worker while it changes it
        self._sessions: dict[str, ClickSession] = {}
        self._history: list[_Step] = []
        self._redo: list[_Step] = []
        self._known: dict[str, TileBox] = {}  # every tile this annotator clicked on or prefetched
        self._colours: OrderedDict = OrderedDict()  # tile key -> colour features (``tile_colour``), newest last
        self._colour_lock = threading.Lock()

    def _refine_for(self, box: TileBox):
        """The object's slide refiner on tile ``box`` (its maps made at the tile's first click), or
        None. The click evidence is the object's: a tile opened later starts from the evidence of
        the tile the object's last click went to."""
        if self._refining is None:
            return None
        from ..models.slide_refiner import TileRefiner

        evidence = None
        if self._history:
            taken = self._history[-1].taken
            last = self._sessions.get(taken[0]) if taken else None
            evidence = last.evidence if last is not None else None
        return TileRefiner(self._refining, None, evidence=evidence, colour=lambda: self.tile_colour(box))

    def tile_colour(self, box: TileBox):
        """The slide refiner's colour features of ``box`` (``models.slide_refiner.colour_features``,
        float16), made from its pixels once and kept for the last ``MAX_COLOUR_TILES`` tiles (the
        prefetcher makes them beside the embeddings while a refiner is offered). Any thread."""
        key = box.key()
        with self._colour_lock:
            colour = self._colours.get(key)
            if colour is not None:
                self._colours.move_to_end(key)
                return colour
        from ..models.slide_refiner import colour_features

        colour = colour_features(self.source.read_region(box)).half()  # outside the lock: 0.2 s
        with self._colour_lock:
            if not self._keeps_colour():  # learning or the refiner switched off, or closed: let them go
                self._colours.clear()
                return colour
            self._colours[key] = colour
            self._colours.move_to_end(key)
            while len(self._colours) > MAX_COLOUR_TILES:
                self._colours.popitem(last=False)
        return colour

    def _keeps_colour(self) -> bool:
        """Whether tiles' colour features are worth keeping: the slide is learnt with its refiner on."""
        adaptation = self.adaptation
        return (not getattr(self, "_closed", False) and adaptation is not None
                and bool(getattr(adaptation, "enabled", True)) and bool(getattr(adaptation, "refine_borders", True)))

    def _refiner_offered(self) -> bool:
        """Whether a new object would be refined now (the prefetcher then makes tiles' colour too)."""
        try:
            return self.adaptation is not None and self.adaptation.refiner() is not None
        except Exception:  # an adaptation that cannot say: nothing to prepare
            return False

    # -- hooks for ``Annotator`` -----------------------------------------------------------------
    def _embedding(self, box: TileBox, purpose: str):
        """The embedding of ``box`` (``purpose``: "click" or "continuation")."""
        return self.predictor.embedding_for(self.source, box)

    def _changed(self) -> None:
        """Called under the lock when undo, redo, clear or restore replaces the object's clicks."""

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
        """Whether ``box``'s embedding costs nothing more (clicked on, cached in memory, or in the
        cache's disk store: one stat)."""
        key = box.key()
        if key in self._sessions:
            return True
        cache_key = self.predictor.key_for(self.source.identity, key)
        return cache_key in self.predictor.cache or self.predictor.cache.stored(cache_key)

    def _box_for_point(self, x: float, y: float, grid: TileGrid | None = None) -> TileBox:
        """A new tile for point (x, y) of ``grid``'s level: a tile already computed (or being
        computed, or precomputed on disk: the half-tile lattice tiles around the point, which
        ``napari-sam-histo embed`` writes) that holds the point ``reuse_margin`` away from its inner
        borders, nearest centre first; else a tile centred on the point."""
        grid = grid or self.grid
        candidates = {b.key(): b for b in self._known.values() if b.downsample == grid.downsample}
        if self.predictor.cache.store_dir is not None:
            candidates.update((b.key(), b) for b in grid.lattice_around(x, y, 1))
        reusable = [b for b in candidates.values()
                    if grid.holds_well(b, x, y, self.reuse_margin) and self._available(b)]
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

    def _clicks_in(self, box: TileBox) -> list[tuple[float, float, bool]]:
        """The object's clicks inside ``box``, in its pixels (a new tile starts from them)."""
        d = box.downsample
        return [(cx / d - box.x, cy / d - box.y, p) for cx, cy, p in (s.click for s in self._history)
                if box.contains(cx / d, cy / d)]

    # -- actions ---------------------------------------------------------------------------------
    def click(self, x0: float, y0: float, positive: bool = True, downsample: float | None = None) -> AnnotatorState:
        """Add a click at level-0 (x0, y0), at the working level of ``downsample`` (with
        ``level="auto"``; the fixed level otherwise); returns the new state."""
        working = self._working_for(downsample)
        grid = self.grid_for(working)
        x, y = self._level_point(x0, y0, grid)
        x0, y0 = x * grid.downsample, y * grid.downsample
        with self._lock:
            if not self._sessions:  # a new object (not one whose clicks were all undone: it keeps its decoder)
                self._decoding = self.adaptation.predictor() if self.adaptation is not None else self.predictor
                self._refining = self.adaptation.refiner() if self.adaptation is not None else None
            self.working = working
            holders, box = self._route(grid, x0, y0, positive)
            session = self._sessions.get(box.key()) if box is not None else None
            if box is not None:
                self._known[box.key()] = box
        if box is not None and session is None:
            # Outside the lock: the embedding may take seconds, and readers must not wait for it.
            spans = self._spans_view(max(box.shape) * box.downsample)
            session = ClickSession(self._decoding, box, self._embedding(box, "click"), refine=self._refine_for(box),
                                   first_mask=self.first_mask if spans else "iou", honour_clicks=self.honour_clicks)
        with self._lock:
            keys = []
            if session is not None:
                prompt = self._mask_prompt(session) if not session.clicks else None
                session.add_clicks(self._clicks_in(box) + [(x - box.x, y - box.y, positive)], mask_prompt=prompt)
                self._sessions[box.key()] = session
                keys.append(box.key())
            for holder in holders:
                hd = holder.box.downsample
                holder.add_click(x0 / hd - holder.box.x, y0 / hd - holder.box.y, positive)
                keys.append(holder.box.key())
            # A click changes the whole object: tiles it grew into by itself were decoded from its shape
            # before the click, so they are emptied (undoable, in this step) and continuation grows
            # them again from the new shape, as far as the view allows.
            dropped = tuple(sorted(self._grown_only() - set(keys)))
            for key in dropped:
                self._sessions[key].reset()
            self._history.append(_Step((float(x0), float(y0), bool(positive)), tuple(keys), dropped))
            self._redo.clear()
            return self._state()

    def undo(self) -> AnnotatorState:
        with self._lock:
            self._changed()  # (before: a continuation of the undone click must not land)
            if self._history:
                step = self._history.pop()
                for key in step.keys:
                    self._sessions[key].undo()
                self._redo.append(step)
            return self._state()

    def redo(self) -> AnnotatorState:
        with self._lock:
            self._changed()
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
            self._changed()
            return self._state()

    def snapshot(self) -> ObjectSnapshot:
        """The object being clicked, whole (its tiles' sessions with their undo, its clicks), so a UI
        can undo an Accept or a Clear: ``restore`` puts it back."""
        with self._lock:
            return ObjectSnapshot(dict(self._sessions), list(self._history), list(self._redo))

    def restore(self, snapshot: ObjectSnapshot) -> AnnotatorState:
        with self._lock:
            self._sessions, self._history, self._redo = (dict(snapshot.sessions), list(snapshot.history),
                                                         list(snapshot.redo))
            for session in self._sessions.values():
                self._known[session.box.key()] = session.box
                self._decoding = session.predictor  # the restored object goes on with its own decoder
                self._refining = session.refine.refiner if session.refine is not None else None
            self._changed()
            return self._state()

    def add_class(self, name: str, color=None) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class (with ``color`` or a new one) if needed."""
        if name not in self.classes:
            self.classes[name] = tuple(int(c) for c in color) if color is not None else next_class_color(
                self.classes.values())
        return self.classes[name]

    def accept(self, class_name: str = "Tumor", min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE,
               edited: tuple | None = None,
               view: tuple[float, float, float, float] | None = None) -> AnnotatedObject | BeyondView | None:
        """The current object as an annotation (None when it is empty), and a fresh object to click.

        ``view``: the level-0 box (x0, y0, x1, y1) the user sees. An object that reaches beyond it is
        not accepted (``BeyondView``, with its extent, and the object stays as it is): the user must
        have seen all of what they accept, so a UI shows it whole and the user accepts again.

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
            if mask is not None and view is not None:
                extent = mask_extent(mask, x, y, d)
                if extent is not None and not box_within(extent, view, d):
                    return BeyondView(extent)
            polygons = [] if mask is None else clean_polygons(mask, (x * d, y * d), d, min_area, tolerance)
            if not polygons:
                self.clear()
                return None
            finest = min((s.box for s in self._active()), key=lambda b: b.downsample, default=None)
            decoding = self._decoding if self._active() else self.predictor
            obj = AnnotatedObject(polygons, class_name, self.add_class(class_name), self.predictor.model.name,
                                  len(self._history),
                                  {**self.predictor.provenance.properties(),  # the decoder as chosen, its hash
                                   "slide": self.source.name, "slide_identity": self.source.identity,
                                   "decoder_kind": decoding.decoder.kind,  # what ran (adapted: maybe "residual")
                                   "adapted": decoding is not self.predictor,
                                   "refined": any(s.refined for s in self._active()),
                                   "level": finest.level if finest is not None else self.level,
                                   "downsample": finest.downsample if finest is not None else d,
                                   "edited": edited is not None})
            if self.adaptation is not None:  # examples for the slide's adapter (queued; no waiting)
                try:
                    self.adaptation.add_object(self._active(), result, edited, key=obj.id,
                                               read_tile=self.source.read_region, tile_colour=self.tile_colour)
                except Exception:  # learning is a bonus: the object is accepted whatever happens there
                    pass
            if self.recorder is not None:  # the project's training set (cut now, written by its writer)
                try:
                    self.recorder.add_accepted(obj, self._active(), result, edited)
                except Exception:  # keeping it is a bonus too: the object is accepted whatever happens there
                    pass
            self.clear()
            return obj

    def accept_undoable(self, *args, **kwargs) -> tuple[AnnotatedObject | BeyondView | None, ObjectSnapshot]:
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

    def _blend(self, sam: bool = False) -> Blend | None:
        """The object's tiles blended: what they show, or (``sam``) SAM's own logits, which a new
        tile's mask prompt is made of (a refined tile's logits are on another scale)."""
        with self._lock:
            tiles = [TileLogits(s.box, s.sam_logits if sam else s.logits, self._level_size(s.box))
                     for s in self._active()]
        return blend(tiles)

    def _level_size(self, box: TileBox) -> tuple[int, int]:
        """(width, height) of ``box``'s working level (a real level's own size, as its grid's)."""
        return self.source.size_at(box.downsample, box.level)

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
        return self._overlap_prompt(session)

    def _overlap_prompt(self, session: ClickSession):
        """The object's logits over ``session``'s tile, unknown beyond its tiles (mask prompt), or None."""
        result = self._blend(sam=True)
        if result is None:
            return None
        embedding = session.embedding
        side = self.predictor.image_size // 4  # SAM's low-resolution frame (256 for a 1024 input)
        frame = (4 * embedding.original_size[1] / embedding.input_size[1],
                 4 * embedding.original_size[0] / embedding.input_size[0])
        # unknown (neither in nor out) where no tile of the object reaches
        return sample_field(result, session.box, (side, side), frame, outside=UNKNOWN_LOGIT).to(self.predictor.device)

    def current_mask(self) -> tuple[tuple[int, int], np.ndarray] | None:
        """The current object's mask over its tiles' joint extent, or None; in pixels of
        ``state().downsample`` (the working level's when the object has one level)."""
        result = self._blend()
        return None if result is None else ((result.x, result.y), result.mask())

    def _state(self) -> AnnotatorState:
        with self._lock:
            result = self._blend()
            mask = None if result is None else ((result.x, result.y), result.mask())
            active = self._active()
            return AnnotatorState(tuple(step.click for step in self._history), mask,
                                  tuple(s.box for s in active),
                                  result.downsample if result is not None else self.grid.downsample,
                                  any(s.refined for s in active))

    def state(self) -> AnnotatorState:
        return self._state()

    def current_polygons(self, min_area: float = 0.0, tolerance: float = DEFAULT_TOLERANCE) -> list[Polygon]:
        """The current object as the polygons ``accept`` would give (level-0 pixels)."""
        result = self._blend()
        if result is None:
            return []
        d = result.downsample
        return clean_polygons(result.mask(), (result.x * d, result.y * d), d, min_area, tolerance)

    # -- growing by itself (continuation, see ``annotator``) -------------------------------------
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

    @property
    def grown(self) -> int:
        """How many of the object's tiles it grew into by itself and holds now (undone or dropped
        growth does not count)."""
        with self._lock:
            return len(self._grown_only())

    def _grown_only(self) -> set[str]:
        """The object's tiles that continuation decoded and no click went to."""
        taken = {key for step in self._history for key in step.taken}
        return {key for step in self._history for key in step.grown
                if key not in taken and key in self._sessions and self._sessions[key].clicks}

    def _spans_view(self, side0: float) -> bool:
        """Whether a tile ``side0`` level-0 pixels across spans at least half the view's longer side
        (as auto's levels do): a mask filling it fills what the user sees, and what reaches past its
        border is more often a leak than a larger object."""
        view = self.view
        return view is not None and side0 >= 0.5 * max(view[2] - view[0], view[3] - view[1])

    def _in_view(self, x0: float, y0: float) -> bool:
        view = self.view
        return view is None or (view[0] <= x0 <= view[2] and view[1] <= y0 <= view[3])

    def _growth_tile(self) -> tuple[float, float, TileBox] | None:
        """Where the object would grow next: the first cut point (level x, level y) whose tile holds
        none of its clicks yet, and that tile (made known); None when the object is empty or a redo
        is pending (growing would rewrite what redo brings back)."""
        with self._lock:
            if not self._history or self._redo:
                return None
            d = self.grid.downsample
            if self._spans_view(self.tile_size * d):
                # the tile holds about what the user sees (auto's levels): what reaches past its border
                # inside the view is SAM's mask leaking over the tissue around a small object far
                # more often than a large object (measured on GlaS glands: growth lowered 22 of 58
                # objects' IoU); a positive click there opens a tile for a large one
                return None
            for px, py in self.cut_points():
                if not self._in_view(px * d, py * d):
                    continue  # a border the user has not seen: the object stops there
                box = self._box_for_point(px, py)
                session = self._sessions.get(box.key())
                if session is None or not session.clicks:  # (no redo is pending: checked above)
                    self._known[box.key()] = box
                    return px, py, box
            return None

    def _grow(self, px: float, py: float, box: TileBox, embedding) -> None:
        """Add tile ``box`` (``embedding``: its embedding) to the object: decoded from the object's
        clicks inside it, a positive seed at level (px, py) where a border cut the object, and the
        object's logits over the overlap as mask prompt. It belongs to the last click (undone with it)."""
        with self._lock:
            session = self._sessions.get(box.key()) or ClickSession(self._decoding, box, embedding,
                                                                    refine=self._refine_for(box),
                                                                    honour_clicks=self.honour_clicks)
            seed = (px - box.x, py - box.y, True)  # inside the object, where a border cut it
            session.add_clicks(self._clicks_in(box) + [seed], mask_prompt=self._overlap_prompt(session))
            self._sessions[box.key()] = session
            last = self._history[-1]
            self._history[-1] = _Step(last.click, last.taken, last.dropped, last.grown + (box.key(),))

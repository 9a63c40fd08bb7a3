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

* The first click of an object gets a new tile (``tile_choice``: centred on it, or a computed one
  reused).
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
clicks across tiles and levels. The object grows by itself past its tiles' borders, only inside
``view`` (``growth``, which it holds). ``accept(view=...)`` refuses an object that reaches beyond the
view (``BeyondView``): what is accepted is what the user saw.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..annotations.cleaning import DEFAULT_TOLERANCE, clean_polygons
from ..annotations.geometry import Polygon
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject, next_class_color
from ..errors import InputError
from ..slides.boxes import TileBox
from ..slides.source import ImageSource
from .blending import Blend, TileLogits, blend, sample_field
from .embedding_cache import Embedding
from .growth import ObjectGrowth
from .object_state import (
    AnnotatorState,
    BeyondView,
    ObjectSnapshot,
    TileStep,
    Undoable,
    box_within,
    mask_extent,
)
from .protocols import AcceptedObjectSink, SlideLearning, TilePredictor, TileWork
from .session import FIRST_MASK_RULES, ClickSession
from .tile_choice import REUSE_MARGIN, TileChoice
from .tile_colours import TileColours
from .tiles import DEFAULT_TILE_SIZE, TileGrid
from .working_levels import WorkingLevel

UNKNOWN_LOGIT = 0.0  # a continuation tile's mask prompt beyond the object's tiles: neither in nor out


class DirectWork:
    """``TileWork`` with no threads: the predictor computes (or finds) each tile's embedding."""

    def __init__(self, predictor: TilePredictor, source: ImageSource) -> None:
        self.predictor, self.source = predictor, source

    def embedding(self, box: TileBox, purpose: str) -> Embedding:
        return self.predictor.embedding_for(self.source, box)

    def fetching(self, key: str) -> bool:
        return False

    def changed(self) -> None:
        pass


class ObjectTiles:
    def __init__(self, predictor: TilePredictor, source: ImageSource, level: int | str = 0,
                 tile_size: int = DEFAULT_TILE_SIZE, reuse_margin: float = REUSE_MARGIN,
                 first_mask: str = "unflooded", honour_clicks: bool = True, work: TileWork | None = None) -> None:
        """``level``: a pyramid level (fixed) or ``"auto"`` (each click at the level a UI passes,
        ``level_for_view``; level 0 until one does). ``first_mask``: how a new tile's first click
        picks among SAM's candidates (``session.FIRST_MASK_RULES``). ``honour_clicks``: a decode that
        loses the object gives way to one that keeps it (``ClickSession``; off for benchmarks).
        ``work``: where tiles' embeddings come from (the annotator's threads; ``DirectWork`` unless
        given)."""
        if first_mask not in FIRST_MASK_RULES:
            raise InputError(f"first_mask {first_mask!r}: choose one of {', '.join(FIRST_MASK_RULES)}.")
        self.predictor = predictor
        self.work = work if work is not None else DirectWork(predictor, source)
        self.closed = False  # (the annotator stopped: nothing is kept any more)
        # what the current object's tiles decode with: ``predictor``, or the decoder adapted to this
        # slide (``adaptation``, set by a UI: ``adaptation.slide_adaptation``), chosen at the object's
        # first click and kept for all its tiles
        self.adaptation: SlideLearning | None = None
        self.recorder: AcceptedObjectSink | None = None
        self._decoding: TilePredictor = predictor
        self._refining = None  # the slide refiner the object's tiles use (``adaptation.refiner()``), or None
        self.source = source
        self.sessions: dict[str, ClickSession] = {}  # the click sessions of the object's tiles, by tile key
        self.tiles = TileChoice(predictor, source, level, tile_size, reuse_margin,
                                lambda key: key in self.sessions or self.work.fetching(key))
        # How a new object's first tile picks among SAM's candidates (``session.FIRST_MASK_RULES``)
        # when the tile spans the view (``ObjectGrowth.spans_view``: auto's levels do): "unflooded"
        # refuses a candidate that covers most of the tile (a click on a small nest at a coarse level
        # otherwise takes the whole tissue core). A tile much smaller than the view (a finer level
        # pinned) takes SAM's own choice: an object larger than such a tile is what the user sees.
        self.first_mask = first_mask
        self.honour_clicks = bool(honour_clicks)
        # The level-0 box (x0, y0, x1, y1) the user looks at, set by a UI (None: no bound). The object
        # grows by itself only where a tile border cuts it inside this box: never past a border the
        # user has not seen.
        self.view: tuple[float, float, float, float] | None = None
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)
        self.lock = threading.RLock()  # guards the state below; held by the worker while it changes it
        self.revision = 0  # counts the object's changes: work that started before one does not land
        self.history: list[TileStep] = []  # the object's clicks, each with the tiles it went to and grew into
        self.undone: list[TileStep] = []  # the steps undone, that redo brings back
        self.growth = ObjectGrowth(self)
        self.colours = TileColours(source.read_region, self._keeps_colour)

    def _refine_for(self, box: TileBox):
        """The object's slide refiner on tile ``box`` (its maps made at the tile's first click), or
        None. The click evidence is the object's: a tile opened later starts from the evidence of
        the tile the object's last click went to."""
        if self._refining is None:
            return None
        from ..models.slide_refiner import TileRefiner

        evidence = None
        if self.history:
            taken = self.history[-1].taken
            last = self.sessions.get(taken[0]) if taken else None
            evidence = last.evidence if last is not None else None
        return TileRefiner(self._refining, None, evidence=evidence, colour=lambda: self.tile_colour(box))

    def tile_colour(self, box: TileBox):
        """The slide refiner's colour features of ``box`` (``tile_colours``), kept for the last
        ``MAX_COLOUR_TILES`` tiles while the slide is learnt with its refiner on. Any thread."""
        return self.colours.of(box)

    def _keeps_colour(self) -> bool:
        """Whether tiles' colour features are worth keeping: the slide is learnt with its refiner on."""
        adaptation = self.adaptation
        return (not self.closed and adaptation is not None
                and adaptation.enabled and adaptation.refine_borders)

    def refiner_offered(self) -> bool:
        """Whether a new object would be refined now (the prefetcher then makes tiles' colour too)."""
        try:
            return self.adaptation is not None and self.adaptation.refiner() is not None
        except Exception:  # noqa: BLE001 - an adaptation that cannot say: nothing to prepare
            return False

    def _changed_whole(self) -> None:
        """Under the lock: undo, redo, clear or restore replaced the object's clicks."""
        self.revision += 1
        self.work.changed()

    # -- the working levels and tiles (``tile_choice``) --------------------------------------------
    auto = property(lambda self: self.tiles.auto)
    levels = property(lambda self: self.tiles.levels)
    tile_size = property(lambda self: self.tiles.tile_size)

    @property
    def level(self) -> int:
        """The pyramid level the current working level reads."""
        return self.tiles.working.read_level

    @property
    def grid(self) -> TileGrid:
        """The tile grid of the current working level (the last click's)."""
        return self.tiles.grid_for(self.tiles.working)

    def grid_for(self, working: WorkingLevel) -> TileGrid:
        return self.tiles.grid_for(working)

    def grid_at(self, downsample: float | None) -> TileGrid:
        return self.tiles.grid_for(self.tiles.working_for(downsample))

    def level_for_view(self, width0: float, height0: float) -> WorkingLevel:
        return self.tiles.level_for_view(width0, height0)

    def check_click(self, x0: float, y0: float) -> None:
        """``InputError`` unless level-0 (x0, y0) is a valid click on the slide."""
        self.tiles.level_point(x0, y0)

    def know(self, boxes) -> None:
        """Tiles whose embeddings are (being) computed: a new object's first click may reuse them."""
        with self.lock:
            self.tiles.know(boxes)

    def cut_boxes(self) -> list[TileBox]:
        return self.growth.cut_boxes()

    # -- where a click goes ----------------------------------------------------------------------
    def _route(self, grid: TileGrid, x0: float, y0: float, positive: bool) -> tuple[list[ClickSession], TileBox | None]:
        """The object's tiles that take the level-0 click, and the new tile it opens (or None)."""
        d = grid.downsample
        x, y = x0 / d, y0 / d
        active = self.active_sessions()
        same = [s for s in active if s.box.downsample == d and s.box.contains(x, y)]
        finer = [s for s in active if s.box.downsample < d
                 and s.box.contains(x0 / s.box.downsample, y0 / s.box.downsample)]
        coarser = [s for s in active if s.box.downsample > d
                   and s.box.contains(x0 / s.box.downsample, y0 / s.box.downsample)]
        opens = positive or bool(coarser)  # a negative click outside the object is only recorded
        if not opens or any(grid.holds_well(s.box, x, y, self.tiles.reuse_margin) for s in same):
            return same + finer, None
        box = self.tiles.box_for(x, y, grid)
        return [s for s in same + finer if s.box != box], box

    def new_session(self, box: TileBox, embedding: Embedding, first_mask: str = "iou") -> ClickSession:
        """A click session of the object's on tile ``box``, decoding as the object's other tiles do."""
        return ClickSession(self._decoding, box, embedding, refine=self._refine_for(box), first_mask=first_mask,
                            honour_clicks=self.honour_clicks)

    def clicks_in(self, box: TileBox) -> list[tuple[float, float, bool]]:
        """The object's clicks inside ``box``, in its pixels (a new tile starts from them)."""
        d = box.downsample
        return [(cx / d - box.x, cy / d - box.y, p) for cx, cy, p in (s.click for s in self.history)
                if box.contains(cx / d, cy / d)]

    # -- actions ---------------------------------------------------------------------------------
    def click(self, x0: float, y0: float, positive: bool = True, downsample: float | None = None) -> AnnotatorState:
        """Add a click at level-0 (x0, y0), at the working level of ``downsample`` (with
        ``level="auto"``; the fixed level otherwise); returns the new state."""
        working = self.tiles.working_for(downsample)
        grid = self.tiles.grid_for(working)
        x, y = self.tiles.level_point(x0, y0, grid)
        x0, y0 = x * grid.downsample, y * grid.downsample
        with self.lock:
            if not self.sessions:  # a new object (not one whose clicks were all undone: it keeps its decoder)
                self._decoding = self.adaptation.predictor() if self.adaptation is not None else self.predictor
                self._refining = self.adaptation.refiner() if self.adaptation is not None else None
            self.tiles.working = working
            holders, box = self._route(grid, x0, y0, positive)
            session = self.sessions.get(box.key()) if box is not None else None
            if box is not None:
                self.tiles.known[box.key()] = box
        if box is not None and session is None:
            # Outside the lock: the embedding may take seconds, and readers must not wait for it.
            spans = self.growth.spans_view(max(box.shape) * box.downsample)
            session = self.new_session(box, self.work.embedding(box, "click"), self.first_mask if spans else "iou")
        with self.lock:
            keys = []
            if session is not None:
                prompt = self._mask_prompt(session) if not session.clicks else None
                session.add_clicks(self.clicks_in(box) + [(x - box.x, y - box.y, positive)], mask_prompt=prompt)
                self.sessions[box.key()] = session
                keys.append(box.key())
            for holder in holders:
                hd = holder.box.downsample
                holder.add_click(x0 / hd - holder.box.x, y0 / hd - holder.box.y, positive)
                keys.append(holder.box.key())
            # A click changes the whole object: tiles it grew into by itself were decoded from its shape
            # before the click, so they are emptied (undoable, in this step) and continuation grows
            # them again from the new shape, as far as the view allows.
            dropped = tuple(sorted(self.growth.grown_only() - set(keys)))
            for key in dropped:
                self.sessions[key].reset()
            self.history.append(TileStep((float(x0), float(y0), bool(positive)), tuple(keys), dropped))
            self.revision += 1
            self.undone.clear()
            return self._state()

    def undo(self) -> AnnotatorState:
        with self.lock:
            self._changed_whole()  # (before: a continuation of the undone click must not land)
            if self.history:
                step = self.history.pop()
                for key in step.keys:
                    self.sessions[key].undo()
                self.undone.append(step)
            return self._state()

    def redo(self) -> AnnotatorState:
        with self.lock:
            self._changed_whole()
            if self.undone:
                step = self.undone.pop()
                for key in step.keys:
                    self.sessions[key].redo()
                self.history.append(step)
            return self._state()

    def clear(self) -> AnnotatorState:
        """Forget the object being clicked (its tiles' embeddings stay cached); ``snapshot`` taken
        before brings it back."""
        with self.lock:
            self.sessions, self.history, self.undone = {}, [], []  # new containers: a snapshot keeps the old
            self._changed_whole()
            return self._state()

    def snapshot(self) -> ObjectSnapshot:
        """The object being clicked, whole (its tiles' sessions with their undo, its clicks), so a UI
        can undo an Accept or a Clear: ``restore`` puts it back."""
        with self.lock:
            return ObjectSnapshot(dict(self.sessions), list(self.history), list(self.undone))

    def restore(self, snapshot: ObjectSnapshot) -> AnnotatorState:
        with self.lock:
            self.sessions, self.history, self.undone = (dict(snapshot.sessions), list(snapshot.history),
                                                         list(snapshot.redo))
            for session in self.sessions.values():
                self.tiles.known[session.box.key()] = session.box
                self._decoding = session.predictor  # the restored object goes on with its own decoder
                self._refining = session.refine.refiner if session.refine is not None else None
            self._changed_whole()
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
        with self.lock:
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
            finest = min((s.box for s in self.active_sessions()), key=lambda b: b.downsample, default=None)
            decoding = self._decoding if self.active_sessions() else self.predictor
            obj = AnnotatedObject(polygons, class_name, self.add_class(class_name), self.predictor.model.name,
                                  len(self.history),
                                  {**self.predictor.provenance.properties(),  # the decoder as chosen, its hash
                                   "slide": self.source.name, "slide_identity": self.source.identity,
                                   "decoder_kind": decoding.decoder.kind,  # what ran (adapted: maybe "residual")
                                   "adapted": decoding is not self.predictor,
                                   "refined": any(s.refined for s in self.active_sessions()),
                                   "level": finest.level if finest is not None else self.level,
                                   "downsample": finest.downsample if finest is not None else d,
                                   "edited": edited is not None})
            if self.adaptation is not None:  # examples for the slide's adapter (queued; no waiting)
                with contextlib.suppress(Exception):  # learning is a bonus: the object is accepted whatever happens there
                    self.adaptation.add_object(self.active_sessions(), result, edited, key=obj.id,
                                               read_tile=self.source.read_region, tile_colour=self.tile_colour)
            if self.recorder is not None:  # the project's training set (cut now, written by its writer)
                with contextlib.suppress(Exception):  # keeping it is a bonus too: the object is accepted whatever happens there
                    self.recorder.add_accepted(obj, self.active_sessions(), result, edited)
            self.clear()
            return obj

    def accept_undoable(self, *args, **kwargs) -> Undoable:
        """``accept``, with the snapshot that brings the object back, taken in the same step on the
        worker, after every click queued before it (a snapshot taken when the user pressed Enter
        would miss those)."""
        with self.lock:
            snapshot = self.snapshot()
            return Undoable(self.accept(*args, **kwargs), snapshot)

    def clear_undoable(self) -> Undoable:
        """``clear``, with the snapshot that brings the object back (see ``accept_undoable``)."""
        with self.lock:
            snapshot = self.snapshot()
            return Undoable(self.clear(), snapshot)

    # -- reading the state (any thread) ----------------------------------------------------------
    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        """The current object's clicks in level-0 pixels, in order."""
        with self.lock:
            return [step.click for step in self.history]

    def active_sessions(self) -> list[ClickSession]:
        return [s for s in self.sessions.values() if s.clicks]

    def _blend(self, sam: bool = False) -> Blend | None:
        """The object's tiles blended: what they show, or (``sam``) SAM's own logits, which a new
        tile's mask prompt is made of (a refined tile's logits are on another scale)."""
        with self.lock:
            tiles = [TileLogits(s.box, s.sam_logits if sam else s.logits, self._level_size(s.box))
                     for s in self.active_sessions()]
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

        if not any(s.box.downsample > box.downsample and overlaps(s.box) for s in self.active_sessions()):
            return None
        return self.overlap_prompt(session)

    def overlap_prompt(self, session: ClickSession):
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
        with self.lock:
            result = self._blend()
            mask = None if result is None else ((result.x, result.y), result.mask())
            active = self.active_sessions()
            return AnnotatorState(tuple(step.click for step in self.history), mask,
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

    # -- growing by itself (``growth``; continuation, see ``annotator``) --------------------------
    def cut_points(self) -> list[tuple[float, float]]:
        return self.growth.cut_points()

    grown = property(lambda self: self.growth.grown)

    def growth_tile(self) -> tuple[float, float, TileBox] | None:
        return self.growth.next_tile()

    def grow(self, px: float, py: float, box: TileBox, embedding: Embedding) -> None:
        self.growth.grow(px, py, box, embedding)

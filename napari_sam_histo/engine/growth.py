"""How the object being clicked grows by itself past its tiles' borders, and where it may not.

Where the object's mask reaches a border of its tiles that is not the slide's (``cut_points``), the
object probably goes on: continuation (``continuation``) asks for the tile beyond the cut
(``ObjectGrowth.next_tile``) and adds it to the object, decoded from the object's clicks inside it,
a positive seed where the border cut it and the object's logits over the overlap as mask prompt
(``ObjectGrowth.grow``). The object grows only inside the view the user sees (never past a border
the user has not seen), and not at all while its tile spans about the view. A click empties the
tiles it grew into by itself (``ObjectGrowth.grown_only``): they were decoded from its shape before
the click, so growth starts again from the corrected shape. The prefetcher computes the tiles the
object's next clicks would open where it is cut (``ObjectGrowth.cut_boxes``).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from ..slides.boxes import TileBox
from .embedding_cache import Embedding
from .object_state import TileStep, combine_tile_masks
from .session import ClickSession
from .tile_choice import TileChoice
from .tiles import TileGrid

MAX_CUT_TILES = 4  # continuation tiles prefetched where the current object is cut by a tile border


def cut_points(boxes: list[TileBox], masks: list[np.ndarray], others: list[TileBox],
               grid: TileGrid) -> list[tuple[float, float]]:
    """Points of ``grid``'s level where the masks of the object's tiles there (``boxes``) reach an
    inner border, largest cut first (at most ``MAX_CUT_TILES``; a cut of fewer than 4 pixels is a
    corner). ``others``: the object's tiles at other levels, which cover it too (no growth over them)."""
    from scipy import ndimage

    d = grid.downsample
    (x0, y0), mask = combine_tile_masks(boxes, masks)
    covered = combine_tile_masks(boxes, [np.ones(b.shape, bool) for b in boxes])[1]
    height, width = mask.shape
    for box in others:
        bx0, by0, bw, bh = box.level0_box
        c0, r0 = max(int(np.ceil(bx0 / d)) - x0, 0), max(int(np.ceil(by0 / d)) - y0, 0)
        c1, r1 = min(int(np.floor((bx0 + bw) / d)) - x0, width), min(int(np.floor((by0 + bh) / d)) - y0, height)
        if c1 > c0 and r1 > r0:
            covered[r0:r1, c0:c1] = True
    closed = np.ones((height + 2, width + 2), bool)  # True: covered by a tile, or outside the level
    closed[1:-1, 1:-1] = covered
    closed[0, 1:-1] = y0 <= 0
    closed[-1, 1:-1] = y0 + height >= grid.height
    closed[1:-1, 0] = x0 <= 0
    closed[1:-1, -1] = x0 + width >= grid.width
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
            found.append((len(rows), x0 + region[1].start + cols[middle] + 0.5, y0 + region[0].start + rows[middle] + 0.5))
    found.sort(key=lambda item: -item[0])
    return [(x, y) for size, x, y in found[:MAX_CUT_TILES] if size >= 4]


class GrowingObject(Protocol):
    """The object being clicked as its growth reads and changes it (``object_tiles.ObjectTiles``);
    its state is read and changed under ``lock``."""

    lock: threading.RLock
    view: tuple[float, float, float, float] | None  # the level-0 box the user sees (None: no bound)
    tiles: TileChoice
    revision: int  # counts the object's changes
    sessions: dict[str, ClickSession]  # the click sessions of the object's tiles, by tile key
    history: list[TileStep]  # the object's clicks, each with the tiles it went to and grew into
    undone: list[TileStep]  # the steps undone, that redo brings back

    @property
    def grid(self) -> TileGrid: ...  # the tile grid of the current working level

    def active_sessions(self) -> list[ClickSession]: ...  # the sessions of the tiles that hold clicks

    def new_session(self, box: TileBox, embedding: Embedding, first_mask: str = "iou") -> ClickSession: ...

    def clicks_in(self, box: TileBox) -> list[tuple[float, float, bool]]: ...  # in ``box``'s pixels

    def overlap_prompt(self, session: ClickSession): ...  # the object's logits over the tile, or None


class ObjectGrowth:
    """The growth of one object being clicked (``ObjectTiles`` holds it): where it grows next, the
    tiles it grew into, and where it may not grow."""

    def __init__(self, obj: GrowingObject) -> None:
        self.object = obj

    def spans_view(self, side0: float) -> bool:
        """Whether a tile ``side0`` level-0 pixels across spans at least half the view's longer side
        (as auto's levels do): a mask filling it fills what the user sees, and what reaches past its
        border is more often a leak than a larger object."""
        view = self.object.view
        return view is not None and side0 >= 0.5 * max(view[2] - view[0], view[3] - view[1])

    def in_view(self, x0: float, y0: float) -> bool:
        view = self.object.view
        return view is None or (view[0] <= x0 <= view[2] and view[1] <= y0 <= view[3])

    @property
    def grown(self) -> int:
        """How many of the object's tiles it grew into by itself and holds now (undone or dropped
        growth does not count)."""
        with self.object.lock:
            return len(self.grown_only())

    def grown_only(self) -> set[str]:
        """Under the lock: the object's tiles that continuation decoded and no click went to."""
        history, sessions = self.object.history, self.object.sessions
        taken = {key for step in history for key in step.taken}
        return {key for step in history for key in step.grown
                if key not in taken and key in sessions and sessions[key].clicks}

    def cut_points(self) -> list[tuple[float, float]]:
        """Level points where the object's mask reaches an inner border of its tiles, largest cut
        first (``cut_points``): the object probably goes on there, and its next click lands just beyond."""
        obj = self.object
        with obj.lock:
            grid, active = obj.grid, obj.active_sessions()
            d = grid.downsample
            here = [s for s in active if s.box.downsample == d]
            if not here:
                return []
            masks = [s.mask() for s in here]
        return cut_points([s.box for s in here], masks, [s.box for s in active if s.box.downsample != d], grid)

    def cut_boxes(self) -> list[TileBox]:
        """The tiles the object's next clicks would open where a tile border cuts it."""
        obj = self.object
        with obj.lock:
            return [obj.tiles.box_for(px, py, obj.grid) for px, py in self.cut_points()]

    def next_tile(self) -> tuple[float, float, TileBox] | None:
        """Where the object would grow next: the first cut point (level x, level y) whose tile holds
        none of its clicks yet, and that tile (made known); None when the object is empty or a redo
        is pending (growing would rewrite what redo brings back)."""
        obj = self.object
        with obj.lock:
            if not obj.history or obj.undone:
                return None
            d = obj.grid.downsample
            if self.spans_view(obj.tiles.tile_size * d):
                # the tile holds about what the user sees (auto's levels): what reaches past its border
                # inside the view is SAM's mask leaking over the tissue around a small object far
                # more often than a large object (measured on GlaS glands: growth lowered 22 of 58
                # objects' IoU); a positive click there opens a tile for a large one
                return None
            for px, py in self.cut_points():
                if not self.in_view(px * d, py * d):
                    continue  # a border the user has not seen: the object stops there
                box = obj.tiles.box_for(px, py, obj.grid)
                session = obj.sessions.get(box.key())
                if session is None or not session.clicks:  # (no redo is pending: checked above)
                    obj.tiles.known[box.key()] = box
                    return px, py, box
            return None

    def grow(self, px: float, py: float, box: TileBox, embedding: Embedding) -> None:
        """Add tile ``box`` (``embedding``: its embedding) to the object: decoded from the object's
        clicks inside it, a positive seed at level (px, py) where a border cut the object, and the
        object's logits over the overlap as mask prompt. It belongs to the last click (undone with it)."""
        obj = self.object
        with obj.lock:
            session = obj.sessions.get(box.key()) or obj.new_session(box, embedding)
            seed = (px - box.x, py - box.y, True)  # inside the object, where a border cut it
            session.add_clicks(obj.clicks_in(box) + [seed], mask_prompt=obj.overlap_prompt(session))
            obj.sessions[box.key()] = session
            last = obj.history[-1]
            obj.history[-1] = TileStep(last.click, last.taken, last.dropped, last.grown + (box.key(),))
            obj.revision += 1

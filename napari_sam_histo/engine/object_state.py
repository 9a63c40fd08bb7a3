"""The object being clicked as a UI sees it, without torch: the state an action leaves
(``AnnotatorState``), a snapshot that brings an object back (``ObjectSnapshot``), an undoable
action's result (``Undoable``), Accept's refusal of an object reaching beyond the view
(``BeyondView``), and the geometry of tile masks. ``object_tiles`` makes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..slides.boxes import TileBox


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
class Undoable:
    """An action's result and the object as it was before the action (``restore`` undoes it)."""

    result: object  # accept: AnnotatedObject | BeyondView | None; clear: AnnotatorState
    before: ObjectSnapshot


@dataclass(frozen=True)
class TileStep:
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

"""The annotator's state without Qt: one object being clicked (possibly across several tiles),
the accepted objects, and a single worker thread that runs clicks in order.

A click is given in level-0 pixels. It lands in the tile under it at the working level; a click in
a neighbouring tile continues the same object there (a ``ClickSession`` per tile), and the object's
shape is the union of its tiles' masks, vectorised once over their joint extent, so it is not cut
at tile borders and keeps its holes. Undo/redo follow the clicks across tiles. Clicks are queued on
one worker thread: a click made while its tile's embedding is still computing waits for it, and
later clicks wait their turn, so the UI never blocks and clicks are never reordered.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..annotations.geometry import Polygon, mask_to_polygons
from ..annotations.objects import DEFAULT_CLASSES, AnnotatedObject
from ..errors import InputError
from ..slides.reader import ImageSource
from .predictor import Predictor
from .session import ClickSession
from .tiles import DEFAULT_TILE_SIZE, TileBox, TileGrid


def combine_tile_masks(boxes: list[TileBox], masks: list[np.ndarray]) -> tuple[tuple[int, int], np.ndarray]:
    """Place tile masks (same level) into one array over their joint extent; returns the
    extent's top-left (level pixels) and the combined mask."""
    x0, y0 = min(b.x for b in boxes), min(b.y for b in boxes)
    x1, y1 = max(b.x + b.width for b in boxes), max(b.y + b.height for b in boxes)
    joint = np.zeros((y1 - y0, x1 - x0), bool)
    for box, mask in zip(boxes, masks):
        joint[box.y - y0: box.y - y0 + box.height, box.x - x0: box.x - x0 + box.width] |= mask
    return (x0, y0), joint


class Annotator:
    def __init__(self, predictor: Predictor, source: ImageSource, level: int = 0,
                 tile_size: int = DEFAULT_TILE_SIZE) -> None:
        if not 0 <= level < source.level_count:
            raise InputError(f"{source.name} has levels 0..{source.level_count - 1}; level {level} was chosen.")
        self.predictor = predictor
        self.source = source
        self.level = level
        width, height = source.level_dimensions[level]
        self.grid = TileGrid(level, width, height, tile_size, source.level_downsamples[level])
        self.objects: list[AnnotatedObject] = []
        self.classes = dict(DEFAULT_CLASSES)
        self._sessions: dict[str, ClickSession] = {}
        self._history: list[str] = []  # tile key of each click, in order
        self._redo: list[str] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-clicks")
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-prefetch")

    # -- clicks (run on the worker; call ``submit_*`` from a UI) -------------------------------
    def tile_for(self, x0: float, y0: float) -> TileBox:
        d = self.grid.downsample
        return self.grid.tile_at(x0 / d, y0 / d)

    def click(self, x0: float, y0: float, positive: bool = True):
        """Add a click at level-0 (x0, y0); returns ``current_mask()`` (cheap: no vectorising)."""
        box = self.tile_for(x0, y0)
        session = self._sessions.get(box.key())
        if session is None:
            session = ClickSession.on_tile(self.predictor, self.source, box)
        d = self.grid.downsample
        session.add_click(x0 / d - box.x, y0 / d - box.y, positive)
        self._sessions[box.key()] = session
        self._history.append(box.key())
        self._redo.clear()
        return self.current_mask()

    def undo(self):
        if self._history:
            key = self._history.pop()
            self._sessions[key].undo()
            self._redo.append(key)
        return self.current_mask()

    def redo(self):
        if self._redo:
            key = self._redo.pop()
            self._sessions[key].redo()
            self._history.append(key)
        return self.current_mask()

    def clear(self) -> None:
        """Forget the object being clicked (its tiles' embeddings stay cached)."""
        self._sessions.clear()
        self._history.clear()
        self._redo.clear()

    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        """The current object's clicks in level-0 pixels, in order."""
        d, out, seen = self.grid.downsample, [], {}
        for key in self._history:
            session = self._sessions[key]
            index = seen.get(key, 0)
            click = session.clicks[index]
            seen[key] = index + 1
            out.append(((session.box.x + click.x) * d, (session.box.y + click.y) * d, click.positive))
        return out

    def current_mask(self) -> tuple[tuple[int, int], np.ndarray] | None:
        """The current object's mask over its tiles' joint extent (level pixels), or None."""
        active = [s for s in self._sessions.values() if s.clicks]
        if not active:
            return None
        return combine_tile_masks([s.box for s in active], [s.mask() for s in active])

    def current_polygons(self) -> list[Polygon]:
        combined = self.current_mask()
        if combined is None:
            return []
        (x, y), mask = combined
        d = self.grid.downsample
        return mask_to_polygons(mask, origin=(x * d, y * d), downsample=d)

    def accept(self, class_name: str = "Tumor") -> AnnotatedObject | None:
        """Turn the current object into an accepted annotation (None when it is empty)."""
        polygons = self.current_polygons()
        if not polygons:
            self.clear()
            return None
        color = self.classes.setdefault(class_name, (255, 200, 0))
        obj = AnnotatedObject(polygons, class_name, color, self.predictor.model.name, len(self._history),
                              {"decoder": self.predictor.decoder.kind, "level": self.level})
        self.objects.append(obj)
        self.clear()
        return obj

    # -- background work -----------------------------------------------------------------------
    def submit_click(self, x0: float, y0: float, positive: bool = True) -> Future:
        """Queue a click; the future's result is ``current_mask()`` after it."""
        return self._worker.submit(self.click, x0, y0, positive)

    def submit(self, action: str, *args) -> Future:
        """Queue "undo", "redo", "clear" or "accept" (with its arguments) behind the queued clicks."""
        return self._worker.submit(getattr(self, action), *args)

    def prefetch_around(self, x0: float, y0: float) -> list[Future]:
        """Compute the embeddings of the tiles around (x0, y0) in the background, one at a time."""
        box = self.tile_for(x0, y0)
        return [self._prefetcher.submit(self.predictor.embedding_for, self.source, tile)
                for tile in [box] + self.grid.neighbours(box)]

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._prefetcher.shutdown(wait=False, cancel_futures=True)

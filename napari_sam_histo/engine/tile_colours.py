"""The slide refiner's colour features of tiles (``models.slide_refiner.colour_features``, float16),
made from a tile's pixels once and kept while they are worth keeping (the slide is learnt with its
refiner on): a tile's first refined click then costs a multiply-add instead of the blurs (0.2 s
alone, 0.5 s and more beside adaptation steps).

At most ``MAX_COLOUR_TILES`` are kept (18 MB each for a 1024-px tile, so 144 MB at most). The
prefetcher makes them for its first ``COLOUR_PREFETCH`` tiles only (the current object's cut tiles
and the view's centre come first), so what it makes is not pushed out by its own later tiles, and
room is left for the tiles an accepted object taught the refiner.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from ..slides.boxes import TileBox

MAX_COLOUR_TILES = 8
COLOUR_PREFETCH = 4


class TileColours:
    def __init__(self, read_region: Callable[[TileBox], object], keeps: Callable[[], bool]) -> None:
        """``read_region(box)``: the tile's pixels; ``keeps()``: whether colours are worth keeping now."""
        self.read_region, self.keeps = read_region, keeps
        self.kept: OrderedDict = OrderedDict()  # tile key -> colour features, newest last
        self._lock = threading.Lock()

    def of(self, box: TileBox):
        """The colour features of ``box``, made now unless kept. Any thread."""
        key = box.key()
        with self._lock:
            colour = self.kept.get(key)
            if colour is not None:
                self.kept.move_to_end(key)
                return colour
        from ..models.slide_refiner import colour_features

        colour = colour_features(self.read_region(box)).half()  # outside the lock: 0.2 s
        with self._lock:
            if not self.keeps():  # learning or the refiner switched off, or closed: let them go
                self.kept.clear()
                return colour
            self.kept[key] = colour
            self.kept.move_to_end(key)
            while len(self.kept) > MAX_COLOUR_TILES:
                self.kept.popitem(last=False)
        return colour

    def clear(self) -> None:
        with self._lock:
            self.kept.clear()

"""What the annotator does in the background, shown and driven: a napari progress bar
(indeterminate) while an embedding is computed for a click, a prefetch or the object growing past a
tile border (``EmbeddingProgress``), and the tiles around the view prefetched once it rests
(``Prefetch``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qtpy.QtCore import QTimer

PREFETCH_DELAY_MS = 600  # the view must rest this long before tiles around it are prefetched


@dataclass(frozen=True)
class EmbeddingEvent:
    """What an annotator's listener heard (on a worker thread): ``event`` "started", "finished" or
    "extended" (the object grew into ``box`` by itself), for a "click", "prefetch" or "continuation"."""

    event: str
    box: object
    purpose: str
    annotator: object


class EmbeddingProgress:
    def __init__(self, threads, current: Callable[[], object], say: Callable[[str], None],
                 tile_text: Callable[[object], str], grown: Callable[[object], None]) -> None:
        """``current()``: the running annotator (events of a stopped one only close their bars);
        ``say``: the dock's status; ``tile_text(box)``: a tile as the user reads it; ``grown(annotator)``:
        the object grew by itself."""
        self.threads, self.current, self.say, self.tile_text, self.grown = threads, current, say, tile_text, grown
        self.log: list[tuple[str, str, str]] = []  # (started|finished|extended, tile key, purpose)
        self.bars: dict[str, object] = {}  # tile key -> open napari progress

    def listener(self, annotator):
        """The listener to add to ``annotator.listeners``: relays its events to the GUI thread."""
        return lambda event, box, purpose: self.threads.emit(self.show, EmbeddingEvent(event, box, purpose, annotator))

    def show(self, item: EmbeddingEvent) -> None:
        from napari.utils import progress

        key, running = item.box.key(), item.annotator is self.current() and item.annotator is not None
        self.log.append((item.event, key, item.purpose))
        if item.event == "extended":  # the object grew into a tile by itself: draw it
            if running:
                self.grown(item.annotator)
            return
        if item.event == "started" and running:  # (not a stopped annotator's)
            what = {"prefetch": "prefetching", "continuation": "continuing the object into"}.get(item.purpose,
                                                                                                   "computing")
            tile = self.tile_text(item.box)
            self.bars[key] = progress(total=0, desc=f"SAM: {what} the embedding of a {tile}")
            if item.purpose == "click":
                self.say(f"Computing the SAM embedding around the click ({tile})…")
            elif item.purpose == "continuation":
                self.say(f"The object reaches a tile border: continuing it in the next tile ({tile})…")
        else:
            bar = self.bars.pop(key, None)
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """Close every open bar (the annotator stopped)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class Prefetch:
    def __init__(self, parent, start: Callable[[], object]) -> None:
        """``start()``: asks the annotator to prefetch around the view now (a future), or returns
        None when it may not (no annotator, a click pending, prefetching off)."""
        self.start = start
        self.future = None  # the latest prefetch asked for
        self.timer = QTimer(parent)
        self.timer.setSingleShot(True)
        self.timer.setInterval(PREFETCH_DELAY_MS)
        self.timer.timeout.connect(self.now)

    def schedule(self) -> None:
        """Prefetch once the view has rested ``PREFETCH_DELAY_MS``."""
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def now(self) -> None:
        future = self.start()
        if future is not None:
            self.future = future

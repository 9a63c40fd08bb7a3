"""The annotator learning from the slide in front of the user (issue 13): every accepted object
becomes training examples for a background adapter (``training.adaptation``), and every new object
decodes with what the adapter offers (its copy only once the never-worse gate passed). The
annotator (``engine``, which imports nothing of training) holds one as ``annotator.adaptation``
and calls ``predictor()`` and ``refiner()`` at an object's first click and ``add_object`` on Accept.

An example costs no encoder call: it is a tile the object was clicked on, with the embedding the
annotator already holds, the accepted mask cut to that tile, and the user's clicks there. Only the
tiles at the object's finest level give examples (a coarse tile under a refined object would teach
the coarse mask's border). Accepting hands the examples over without waiting: the worker thread
takes them in between its steps, so Accept never waits for a step under way.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.blending import Blend

MAX_EXAMPLES = 32  # each keeps one tile embedding (4 MiB in float32): 128 MiB at most per slide


def tile_examples(sessions, blended: Blend | None, edited: tuple | None = None,
                  read_tile: Callable | None = None, tile_colour: Callable | None = None) -> list:
    """``AdaptationExample``s of an accepted object: for each of ``sessions`` (the object's tiles
    with clicks) at its finest downsample, the accepted mask (``edited`` when corrected by hand:
    (top-left, mask[, downsample]); else ``blended``) cut to the tile. ``read_tile(box)``: the
    tile's pixels, read later by the adapter's thread (the slide refiner's colour);
    ``tile_colour(box)``: the tile's colour features, where the annotator keeps them."""
    from ..training.adaptation import AdaptationExample

    if not sessions or (blended is None and edited is None):
        return []
    finest = min(s.box.downsample for s in sessions)
    if edited is not None:
        (mx, my), mask = edited[0], np.asarray(edited[1], bool)
        d = float(edited[2]) if len(edited) > 2 else (blended.downsample if blended is not None else finest)
    else:
        mx, my, mask, d = blended.x, blended.y, blended.mask(), blended.downsample
    if abs(d - finest) > 1e-6 * finest:
        return []  # the mask is held at another scale (a huge object): no exact per-tile target
    out = []
    for session in sessions:
        box = session.box
        if abs(box.downsample - finest) > 1e-6 * finest:
            continue
        target = np.zeros(box.shape, bool)
        x0, y0 = max(box.x, mx), max(box.y, my)
        x1, y1 = min(box.x + box.width, mx + mask.shape[1]), min(box.y + box.height, my + mask.shape[0])
        if x1 > x0 and y1 > y0:
            target[y0 - box.y:y1 - box.y, x0 - box.x:x1 - box.x] = mask[y0 - my:y1 - my, x0 - mx:x1 - mx]
        if target.any():
            clicks = tuple((c.x, c.y, c.positive) for c in session.clicks)
            image = functools.partial(read_tile, box) if read_tile is not None else None
            colour = functools.partial(tile_colour, box) if tile_colour is not None else None
            out.append(AdaptationExample(session.embedding, target, clicks, image, colour))
    return out


class SlideAdaptation:
    """A ``DecoderAdapter`` on the annotator's predictor, run by an ``AdaptationWorker`` that steps
    only while ``may_run()`` (no click, action or embedding under way). ``on_change(adaptation,
    state)`` is called after every step and gate (from the worker) and when switched on or off (from
    the caller's thread); a UI relays it to its own thread, and the adaptation that sent it tells
    a stale report of a replaced annotator from the current one."""

    def __init__(self, predictor, may_run: Callable[[], bool], enabled: bool = True,
                 steps_per_object: int | None = None, seed: int = 0,
                 on_change: Callable | None = None) -> None:
        from ..training.adaptation import STEPS_PER_OBJECT, AdaptationWorker, DecoderAdapter

        self.adapter = DecoderAdapter(predictor, steps_per_object or STEPS_PER_OBJECT, seed=seed,
                                      max_examples=MAX_EXAMPLES)
        self.adapter.enabled = bool(enabled)
        self.on_change = on_change
        self.worker = AdaptationWorker(self.adapter, may_run, on_change=self._changed)

    def _changed(self, state) -> None:
        if self.on_change is not None:
            self.on_change(self, state)

    @property
    def enabled(self) -> bool:
        return self.adapter.enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        """Off: the base decoder decodes the next object, no step runs and accepted objects are not
        kept as examples; back on, it resumes with the examples kept so far."""
        self.adapter.enabled = bool(on)
        if on:
            self.worker.wake()
        self._changed(self.adapter.state_nowait())

    @property
    def refine_borders(self) -> bool:
        return self.adapter.refiner_enabled

    @refine_borders.setter
    def refine_borders(self, on: bool) -> None:
        """The border refiner's own switch: off, the next objects are not refined (one being clicked
        keeps what it started with); it still learns from accepted objects."""
        self.adapter.refiner_enabled = bool(on)
        self._changed(self.adapter.state_nowait())

    def add_object(self, sessions, blended: Blend | None, edited: tuple | None = None, key=None,
                   read_tile: Callable | None = None, tile_colour: Callable | None = None) -> int:
        """Hand over an accepted object (its tiles' sessions, its blended logits, a hand-edited mask;
        ``key``: its id, for ``forget``; ``read_tile(box)``: a tile's pixels; ``tile_colour(box)``:
        its colour features, kept by the annotator): its examples are cut now (numpy only) and
        queued for the worker; returns at once with how many there were."""
        examples = tile_examples(sessions, blended, edited, read_tile, tile_colour) if self.adapter.enabled else []
        if examples:
            self.worker.submit(lambda: self.adapter.add_object(examples, key))
        return len(examples)

    def forget(self, key) -> Future:
        """Take back the examples of object ``key`` (its Accept was undone, or it was deleted)."""
        return self.worker.submit(lambda: self.adapter.remove_object(key))

    def predictor(self):
        """The predictor a new object decodes with (no lock taken)."""
        return self.adapter.active_predictor()

    def refiner(self):
        """The slide refiner a new object's tiles use, or None (no lock taken)."""
        return self.adapter.active_refiner()

    def reset(self) -> Future:
        """Back to the base decoder with no examples, done by the worker between steps."""
        return self.worker.submit(self.adapter.reset)

    def save(self, path: str | Path, slide: str = "") -> Future:
        """The adapted decoder as a checkpoint (``DecoderAdapter.save``), written by the worker."""
        return self.worker.submit(lambda: self.adapter.save(path, slide=slide))

    def state(self):
        return self.adapter.state_nowait()

    def close(self, wait: bool = True) -> None:
        """Stop the worker; its examples (tile embeddings) are let go once the step under way ends."""
        self.worker.stop(wait, release=True)

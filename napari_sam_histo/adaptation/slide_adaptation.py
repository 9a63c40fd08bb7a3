"""The annotator learning from the slide in front of the user: every accepted object becomes
training examples for a background adapter (``decoder_adapter``, run by ``worker``; the
design: ``adaptation.settings``), and every new object decodes with what the adapter offers (its
copy only once the never-worse gate passed). The annotator (``engine``, which imports nothing of
the adaptation) holds one as ``annotator.adaptation`` and calls ``predictor()`` and ``refiner()`` at an
object's first click and ``add_object`` on Accept.

An example costs no encoder call: it is a tile the object was clicked on, with the embedding the
annotator already holds, the accepted mask cut to that tile, and the user's clicks there. Only the
tiles at the object's finest level give examples (a coarse tile under a refined object would teach
the coarse mask's border). Accepting hands the examples over without waiting: the worker thread
takes them in between its steps, so Accept never waits for a step under way.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from ..engine.blending import Blend
from ..models.slide_refiner import MIN_AGREEMENT
from ..training.examples import AdaptationExample, centred_tile, tile_examples

MAX_EXAMPLES = 32  # each keeps one tile embedding (4 MiB in float32): 128 MiB at most per slide


class SlideAdaptation:
    """A ``DecoderAdapter`` on the annotator's predictor, run by an ``AdaptationWorker`` that steps
    only while ``may_run()`` (no click, action or embedding under way). ``on_change(adaptation,
    state)`` is called after every step and gate and when the worker's activity changes (from the
    worker), and at once when an object is handed over or switched on or off (from the caller's
    thread); a UI relays it to its own thread, and the adaptation that sent it tells a stale report
    of a replaced annotator from the current one. ``slide``: the slide's identity
    (``ImageSource.identity``), for ``reusable_for``."""

    def __init__(self, predictor, may_run: Callable[[], bool], enabled: bool = True,
                 steps_per_object: int | None = None, seed: int = 0,
                 on_change: Callable | None = None, slide: str | None = None,
                 min_agreement: float = MIN_AGREEMENT) -> None:
        from .decoder_adapter import DecoderAdapter
        from .settings import STEPS_PER_OBJECT
        from .worker import AdaptationWorker

        self.adapter = DecoderAdapter(predictor, steps_per_object or STEPS_PER_OBJECT, seed=seed,
                                      max_examples=MAX_EXAMPLES, min_agreement=min_agreement)
        self.adapter.enabled = bool(enabled)
        self.on_change = on_change
        self.slide = slide
        self._lock = threading.Lock()  # the counts and the earlier objects' queue below
        self._queued = 0  # accepted objects handed over, not yet taken in by the worker
        self._seen: set = set()  # keys of the objects handed over (accepted or earlier), not forgotten
        self._resumed: deque = deque()  # (object, how to read it) still to be turned into examples, newest first
        self._resumed_counts = {"resumed": 0, "too_large": 0, "too_small": 0}
        self._resumed_job = False  # the worker has the job that takes them in
        self.worker = AdaptationWorker(self.adapter, may_run, on_change=self._changed)

    def _changed(self, state) -> None:
        if self.on_change is not None:
            self.on_change(self, self._with_counts(state))

    def _with_counts(self, state):
        with self._lock:
            counts, queued, pending = dict(self._resumed_counts), self._queued, len(self._resumed)
        return replace(state, queued=queued, resumed=counts["resumed"], resumed_pending=pending,
                       resumed_too_large=counts["too_large"], resumed_too_small=counts["too_small"])

    def _report(self) -> None:
        """Tell ``on_change`` now, from the caller's thread (no lock of the adapter taken)."""
        self._changed(self.worker.state_nowait())

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
        self._report()

    @property
    def refine_borders(self) -> bool:
        return self.adapter.refiner_enabled

    @refine_borders.setter
    def refine_borders(self, on: bool) -> None:
        """The border refiner's own switch: off, the next objects are not refined (one being clicked
        keeps what it started with); it still learns from accepted objects."""
        self.adapter.refiner_enabled = bool(on)
        self._report()

    def add_object(self, sessions, blended: Blend | None, edited: tuple | None = None, key=None,
                   read_tile: Callable | None = None, tile_colour: Callable | None = None) -> int:
        """Hand over an accepted object (its tiles' sessions, its blended logits, a hand-edited mask;
        ``key``: its id, for ``forget``; ``read_tile(box)``: a tile's pixels; ``tile_colour(box)``:
        its colour features, kept by the annotator): its examples are cut now (numpy only) and
        queued for the worker; returns at once with how many there were. ``on_change`` hears of it
        before this returns."""
        examples = tile_examples(sessions, blended, edited, read_tile, tile_colour) if self.adapter.enabled else []
        if examples:
            with self._lock:
                self._queued += 1
                if key is not None:
                    self._seen.add(key)

            def take_in():
                try:
                    self.adapter.add_object(examples, key)
                finally:
                    with self._lock:
                        self._queued -= 1

            self.worker.submit(take_in)
            self._report()
        return len(examples)

    def add_resumed(self, objects, source, tile_size: int,
                    level_for: Callable[[object], float | None] | None = None,
                    tile_colour: Callable | None = None) -> int:
        """Hand over objects from earlier work (``annotations.objects.AnnotatedObject``, level-0
        polygons, oldest first: resumed from the autosave or imported) to learn from as if accepted
        now. Returns at once with how many were queued; the worker thread turns them into examples,
        newest first, while nothing else runs: a tile of ``tile_size`` on ``source`` centred on the
        object at its working level, its embedding (``predictor.embedding_for``: an encoder run
        unless cached), the object's polygons drawn into it, and the benchmark clicker's first click
        (the object has no clicks of its own; the steps simulate theirs). The level is the one its
        properties record ("downsample", as Accept writes it), else ``level_for(object)`` (a
        downsample), else the finest working level where it spans at most ``examples.RESUMED_FILL`` of a
        tile. An object larger than a tile there, or with fewer than ``examples.MIN_RESUMED_PIXELS`` pixels,
        is skipped and counted (``AdaptationState.resumed_too_large`` / ``resumed_too_small``). Only
        the ``MAX_EXAMPLES`` newest are used; objects already handed over (same id) are left out.
        ``tile_colour(box)``: the annotator's kept colour features, if any."""
        with self._lock:
            fresh = [o for o in objects if o.id not in self._seen]
            fresh = fresh[-MAX_EXAMPLES:][::-1]  # newest first
            self._seen.update(o.id for o in fresh)
            reading = (source, int(tile_size), level_for, tile_colour)
            self._resumed.extend((o, reading) for o in fresh)
            had_job = self._resumed_job
            self._resumed_job = had_job or bool(fresh)
        if fresh and not had_job:
            self.worker.add_job(self._prepare_resumed)
        self._report()
        return len(fresh)

    def _prepare_resumed(self, may_run: Callable[[], bool]) -> bool | None:
        """One earlier object into an example (the worker's job): False when none is left."""
        with self._lock:
            if not self._resumed:
                self._resumed_job = False
                return False
            obj, reading = self._resumed[0]
        if not may_run():
            return None
        try:
            example, skipped = resumed_example(obj, self.adapter.base, *reading)
        except Exception:  # noqa: BLE001 - the slide went away or a tile cannot be read: nothing to learn from it
            example, skipped = None, None
        with self._lock:
            if not self._resumed or self._resumed[0][0] is not obj:
                return True  # forgotten or reset meanwhile
            self._resumed.popleft()
            if skipped is not None:
                self._resumed_counts[skipped] += 1
            elif example is not None and obj.id in self._seen:
                self._resumed_counts["resumed"] += 1
        if example is not None and obj.id in self._seen:
            self.adapter.add_object([example], obj.id)
        return True

    def forget(self, key) -> Future:
        """Take back the examples of object ``key`` (its Accept was undone, or it was deleted)."""
        with self._lock:
            self._seen.discard(key)
            self._resumed = deque(item for item in self._resumed if item[0].id != key)
        return self.worker.submit(lambda: self.adapter.remove_object(key))

    def predictor(self):
        """The predictor a new object decodes with (no lock taken)."""
        return self.adapter.active_predictor()

    def refiner(self):
        """The slide refiner a new object's tiles use, or None (no lock taken)."""
        return self.adapter.active_refiner()

    def reset(self) -> Future:
        """Back to the base decoder with no examples, done by the worker between steps (earlier
        objects not yet turned into examples are dropped too; objects handed over before are not
        handed over again)."""
        with self._lock:
            self._resumed.clear()
            self._resumed_counts = dict.fromkeys(self._resumed_counts, 0)
        return self.worker.submit(self.adapter.reset)

    def save(self, path: str | Path, slide: str = "") -> Future:
        """The adapted decoder as a checkpoint (``DecoderAdapter.save``), written by the worker."""
        return self.worker.submit(lambda: self.adapter.save(path, slide=slide))

    def state(self):
        return self._with_counts(self.worker.state_nowait())

    # -- a restarted annotator ------------------------------------------------------------------
    def reusable_for(self, predictor, slide: str | None) -> bool:
        """Whether an annotator started on ``slide`` (its identity) with ``predictor`` can go on with
        what this one learned: the same slide, model (name, weights hash), device and decoder, and
        this adaptation still running."""
        from .settings import model_key

        return (self.slide is not None and slide == self.slide and not self.worker.stopped
                and model_key(predictor) == model_key(self.adapter.base))

    def rebind(self, predictor, may_run: Callable[[], bool]) -> Future:
        """Go on with a restarted annotator's ``predictor`` (``reusable_for`` must hold) and its
        ``may_run``: may_run at once, the predictor by the worker between steps (the future)."""
        if not self.reusable_for(predictor, self.slide):
            raise ValueError("rebind: another model, decoder or device; start a new SlideAdaptation")
        self.worker.may_run = may_run
        return self.worker.submit(lambda: self.adapter.rebind(predictor))

    def take_turn(self, timeout: float | None = None) -> bool:
        """For a thread whose background work keeps ``may_run()`` false (the annotator's prefetcher
        between two embeddings): one unit of learning runs first, if there is any
        (``AdaptationWorker.take_turn``)."""
        return self.worker.take_turn() if timeout is None else self.worker.take_turn(timeout)

    def close(self, wait: bool = True) -> None:
        """Stop the worker; its examples (tile embeddings) are let go once the step under way ends."""
        with self._lock:
            self._resumed.clear()
        self.worker.stop(wait, release=True)


def resumed_example(obj, predictor, source, tile_size: int, level_for: Callable | None = None,
                    tile_colour: Callable | None = None):
    """(``AdaptationExample``, None) for an earlier object (see ``SlideAdaptation.add_resumed``), or
    (None, "too_large" / "too_small") when it does not fit a tile at its level (``centred_tile``)."""
    placed = centred_tile(obj, source, tile_size, level_for)
    if isinstance(placed, str):
        return None, placed
    box, target, clicks = placed
    embedding = predictor.embedding_for(source, box)
    image = functools.partial(source.read_region, box)
    colour = functools.partial(tile_colour, box) if tile_colour is not None else None
    return AdaptationExample(embedding, target, clicks, image, colour), None

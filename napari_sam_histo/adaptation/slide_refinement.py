"""The slide refiner (``models.slide_refiner``) learning from the objects the pathologist accepts,
with a never-worse gate of its own.

Every accepted object is first a judge, then a teacher. Judge: its tiles are re-clicked with the
benchmark's clicker by the base decoder alone and by the base decoder + the refiner fitted on the
objects before it (with its click evidence, as the annotator shows it), to ``GATE_IOU`` within
``GATE_MAX_CLICKS``. Teacher: the base re-click goes on to 20 clicks, and SAM's logits after
clicks 2, 4, 7, 12 and 20 with the accepted mask and the tile's colour become the refiner's
training pixels; the refiner is refitted on all objects so far (L-BFGS, a second or two).

The gate is prequential: each object is scored by the refiner that existed before it was
accepted, so every object both judges and teaches (a held-out third, as the decoder copy's gate
keeps, would leave the refiner little to learn from and late to start). The refiner is offered
once ``MIN_JUDGED`` objects have been judged and, summed over them, it needed strictly fewer
clicks than the base decoder. What an object costs here: one colour-feature pass of each tile
(~0.2 s) and up to 30 decoder calls, on the adaptation's background thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluation.metrics import noc
from ..models.slide_refiner import MIN_AGREEMENT, SlideRefiner, TileRefiner, colour_features, fit_slide_refiner, refiner_samples
from ..training.examples import AdaptationExample
from ..training.reclick import click_example

SNAPSHOT_CLICKS = (2, 4, 7, 12, 20)  # SAM's logits after these clicks of a re-click teach the refiner
MIN_JUDGED = 3  # objects the refiner must have been judged on before it is offered


@dataclass
class _Object:
    serial: int
    key: object
    examples: list  # AdaptationExamples still to go through (their pixels are read then)
    samples: list = field(default_factory=list)  # (features, labels) per tile done
    base: list = field(default_factory=list)  # NoC of the base decoder per tile judged
    refined: list = field(default_factory=list)  # NoC with the refiner of the time per tile judged

    @property
    def judged(self) -> bool:
        return bool(self.refined)


class SlideRefinement:
    """The refiner's examples, its fit and its gate. Changed from one thread (the adaptation's, or a
    benchmark's); ``active`` (one attribute read) and ``scores`` (reads of lists that are replaced,
    not changed in place, once an object is done) serve any thread."""

    def __init__(self, seed: int = 0, max_tiles: int | None = None, min_judged: int = MIN_JUDGED,
                 gate_iou: float = 0.85, gate_max_clicks: int = 10, snapshot_clicks: tuple = SNAPSHOT_CLICKS,
                 min_agreement: float = MIN_AGREEMENT) -> None:
        """``min_agreement``: the agreement rule of the refiners fitted here (``SlideRefiner``)."""
        self.seed = int(seed)
        self.min_agreement = float(min_agreement)
        self.max_tiles = max_tiles
        self.min_judged = int(min_judged)
        self.gate_iou = float(gate_iou)
        self.gate_max_clicks = int(gate_max_clicks)
        self.snapshot_clicks = tuple(snapshot_clicks)
        self._pending: list[_Object] = []
        self._done: list[_Object] = []
        self.refiner: SlideRefiner | None = None  # fitted on every object done
        self._offered: SlideRefiner | None = None  # the refiner when the gate passes, else None

    # -- objects ---------------------------------------------------------------------------------
    def add_object(self, serial: int, key, examples: list[AdaptationExample]) -> None:
        """Queue an accepted object's examples (those with pixels or colour)."""
        examples = [e for e in examples if e.image is not None or e.colour is not None]
        if examples:
            self._pending.append(_Object(serial, key, list(examples)))
            if self.max_tiles is not None:  # a queue the thread cannot keep up with: the oldest go
                while len(self._pending) > 1 and sum(len(o.examples) for o in self._pending) > self.max_tiles:
                    self._pending.pop(0)

    def remove_object(self, key) -> int:
        """Forget object ``key`` (an Accept undone, a deletion): its pixels, its score, and the fit."""
        if key is None:
            return 0
        before = len(self._pending) + len(self._done)
        self._pending = [o for o in self._pending if o.key != key]
        done = [o for o in self._done if o.key != key]
        removed = before - len(self._pending) - len(done)
        if len(done) != len(self._done):
            self._done = done
            self._refit()
        return removed

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the work --------------------------------------------------------------------------------
    def process_next(self, base, may_run: Callable[[], bool] | None = None) -> bool | None:
        """Judge and learn from the oldest queued object with the ``base`` predictor; False when none
        is queued, None when ``may_run`` said no before one of its tiles (the tiles done are kept)."""
        if not self._pending:
            return False
        obj = self._pending[0]
        refiner = self.refiner  # the one fitted before this object: it is what the object judges
        while obj.examples:
            if may_run is not None and not may_run():
                return None
            example = obj.examples.pop(0)
            try:
                self._learn_tile(obj, example, base, refiner)
            except Exception:  # noqa: BLE001 - the slide went away, a tile cannot be read or does not fit: nothing to learn here
                continue
        try:
            if obj.samples:
                self._done.append(obj)
                self._bound()
                self._refit()
        finally:
            self._pending.pop(0)  # only now: until the refiner is refitted the object is still being learned from
        return True

    def _learn_tile(self, obj: _Object, example: AdaptationExample, base, refiner: SlideRefiner | None) -> None:
        """One tile of ``obj``: judged (with ``refiner``, when there is one), then its training pixels."""
        if callable(example.colour):  # kept by the annotator (the next clicks there reuse them)
            colour = example.colour().float()
            image = None  # (the judge's re-click gets the maps from the colour)
        else:
            image = example.image() if callable(example.image) else example.image
            colour = colour_features(image)
        target = np.asarray(example.target, bool)
        if tuple(colour.shape[1:]) != target.shape:
            raise ValueError(f"a tile of {tuple(colour.shape[1:])} px for a mask of {target.shape}")
        max_clicks = max(self.snapshot_clicks + (self.gate_max_clicks,))
        ious, snapshots = click_example(base, example.embedding, target, max_clicks, self.gate_iou,
                                        keep=self.snapshot_clicks, stop=False)
        rng = np.random.default_rng([self.seed, obj.serial, len(obj.samples)])
        x, y = refiner_samples(snapshots, colour, target, rng)
        scores = None
        if refiner is not None:
            refine = TileRefiner(refiner, lambda: image, maps=refiner.on_tile(colour))  # (no second pass of blurs)
            refined, _ = click_example(base, example.embedding, target, self.gate_max_clicks, self.gate_iou,
                                       refine=refine)
            scores = (noc(ious[: self.gate_max_clicks], self.gate_iou, self.gate_max_clicks),
                      noc(refined, self.gate_iou, self.gate_max_clicks))
        obj.samples.append((x.half(), y.bool()))  # half the memory; fitted in float32
        if scores is not None:  # both scores or neither
            obj.base.append(scores[0])
            obj.refined.append(scores[1])

    def _bound(self) -> None:
        """The oldest objects go (whole) beyond ``max_tiles`` tiles of pixels; their scores go with them."""
        if self.max_tiles is None:
            return
        while len(self._done) > 1 and sum(len(o.samples) for o in self._done) > self.max_tiles:
            self._done.pop(0)

    def _refit(self) -> None:
        samples = [s for o in self._done for s in o.samples]
        refiner = None
        if samples:
            refiner = fit_slide_refiner(torch.cat([s[0].float() for s in samples]),
                                        torch.cat([s[1].float() for s in samples]), min_agreement=self.min_agreement)
        self.refiner, self._offered = refiner, (refiner if self.passes() else None)

    # -- the gate --------------------------------------------------------------------------------
    def scores(self) -> tuple[float | None, float | None, int]:
        """(base, refined) mean NoC per judged object, and how many objects were judged."""
        judged = [o for o in self._done if o.judged]
        if not judged:
            return None, None, 0
        base = float(np.mean([np.mean(o.base) for o in judged]))
        refined = float(np.mean([np.mean(o.refined) for o in judged]))
        return base, refined, len(judged)

    def passes(self) -> bool:
        base, refined, judged = self.scores()
        return judged >= self.min_judged and refined < base

    def active(self) -> SlideRefiner | None:
        """The refiner new objects use: fitted on every object so far, offered only while the gate passes."""
        return self._offered

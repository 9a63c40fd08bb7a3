"""The decoder learns from the pathologist while they work: a per-slide copy of the active decoder,
fine-tuned in short bounded bursts on the objects they accept, used only when it is not worse.

An accepted object is a training example that costs no encoder call: the tile embedding the
annotator already holds, the accepted mask on that tile, and the user's own clicks. Each new
example owes ``steps_per_object`` optimisation steps, run with the training code's click
simulation (a random first click, 0..3 rounds of error clicks with the mask prompt fed back) and
its Normalized Focal Loss, on a copy of the decoder (the base decoder is never changed).

The never-worse gate: every ``hold_out_every``-th accepted object is held out of training (all its tiles); after steps
the copy and the base decoder re-click the held-out examples with the benchmark's clicker, and the
copy is offered (``active_predictor``) only when at least ``MIN_HELD_OUT`` objects are held out and
its mean NoC@85 on them is strictly lower. Until then the base decoder stays in use.

Works with every decoder choice. SAM's own decoder (and SAM-kind checkpoints with all three
mask outputs) adapts through a zero-initialised correction added to its logits (the residual
decoder of ``models.residual_decoder`` over a frozen copy): the untrained copy (before any
example, so without a prior) is exactly the base decoder, the first click keeps SAM's three
candidates and their ranking, and a few steps can only move it as far as the examples pay for. (Training SAM's
token 0 instead, tried first, gave up
those candidates and made RINGS objects need more clicks.) ``md`` checkpoints (single-mask) train
their token 0, as they were trained; the modified decoder trains whole, the residual decoder its
correction. On top of the copy a *slide prior* (``models.slide_prior``: a logistic read-out of
the embedding, fitted on the training examples, its logit added to the masks at weight
``prior_weight``) carries what the accepted objects look like to the next object; the gate judges
copy and prior together. A *slide refiner* (``training.slide_refinement``: a pixel classifier
over SAM's logit and the tile's colour, shown per object where its clicks favour it) learns from
every accepted object with pixels, judged by a gate of its own (each object re-clicked with the
refiner fitted before it); it works over whichever decoder decodes the object. Deterministic under ``seed`` for
the same examples arriving between the
same steps (the
sequential benchmark; in the dock the user's pace decides that). ``DecoderAdapter`` holds no thread;
``AdaptationWorker`` runs it in the background.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..evaluation.metrics import noc
from ..models.decoders import DecoderChoice, SingleMaskDecoder
from ..models.residual_decoder import ResidualMaskDecoder
from ..models.slide_prior import CONTEXT, PRIOR_WEIGHT, SlidePrior, SlidePriorDecoder, example_cells, fit_slide_prior
from ..models.slide_refiner import MIN_AGREEMENT
from .click_simulation import simulated_click_loss
from .examples import AdaptationExample
from .prompted_forward import PromptedForward
from .slide_refinement import SlideRefinement, click_example

STEPS_PER_OBJECT = 16
BATCH_SIZE = 4
LEARNING_RATE = 1e-4  # a fifth of the offline recipe's: a few examples, many steps on each
# a correction that starts at zero has to grow from nothing: its rate is set apart
CORRECTION_LEARNING_RATE = 1e-3
HOLD_OUT_EVERY = 3  # examples 3, 6, 9, ... (counting from 1) judge the copy, never train it
GATE_IOU = 0.85
GATE_MAX_CLICKS = 10
MIN_HELD_OUT = 3  # two held-out objects were too few: on an EBHI-Seg case a copy that won on two
# (2.0 vs 2.5 clicks) then needed 9 clicks where SAM needed 7 on the next object
MAX_EXTRA_CLICKS = 3
MASK_PROMPT_PROB = 0.8
# a newly accepted object's first steps run for this long (at least one step) before the slide
# refiner re-clicks it, so the copy starts learning from it at once; the refiner then goes first
FIRST_SLICE_S = 1.0
TURN_TIMEOUT_S = 2.0  # ``AdaptationWorker.take_turn``: the longest another thread waits for a unit


@dataclass(frozen=True)
class AdaptationState:
    """What a UI shows."""

    examples: int
    held_out: int
    steps: int
    owed: int  # steps still to run for the examples so far
    in_use: bool  # the adapted copy decodes the next object's clicks
    base_noc: float | None  # mean NoC@85 on the held-out examples (None: none held out yet)
    adapted_noc: float | None
    enabled: bool = True
    held_out_objects: int = 0  # the gate judges only once ``MIN_HELD_OUT`` objects are held out
    refiner_in_use: bool = False  # the slide refiner refines the next object
    refiner_judged: int = 0  # objects its gate has judged it on
    refiner_base_noc: float | None = None  # their mean NoC@85 with the base decoder
    refiner_noc: float | None = None  # and with the refiner fitted before each
    refiner_pending: int = 0  # accepted objects it has still to learn from
    refiner_enabled: bool = True  # the user's switch for the refiner alone (it learns either way)
    objects: int = 0  # accepted objects whose examples are kept (training and held out)
    # what the worker is doing now: "" (nothing to do), "waiting" (work to do, but a click, action
    # or embedding is under way), "preparing" (an earlier object's tile), "refining" (the border
    # refiner re-clicks an accepted object), "training" (steps), "judging" (the gate)
    activity: str = ""
    queued: int = 0  # accepted objects handed over that the worker has not taken in yet
    resumed: int = 0  # objects from earlier work (resumed or imported) turned into examples
    resumed_pending: int = 0  # earlier objects still to be turned into examples
    resumed_too_large: int = 0  # earlier objects skipped: larger than a tile at their level
    resumed_too_small: int = 0  # earlier objects skipped: too few pixels at their level


class DecoderAdapter:
    def __init__(self, predictor, steps_per_object: int = STEPS_PER_OBJECT, lr: float | None = None,
                 batch_size: int = BATCH_SIZE, hold_out_every: int = HOLD_OUT_EVERY, seed: int = 0,
                 max_examples: int | None = None, prior_weight: float = PRIOR_WEIGHT, refiner: bool = True,
                 min_agreement: float = MIN_AGREEMENT) -> None:
        """``predictor``: the annotator's (its decoder is the base; its model, cache and precision
        are shared by the adapted predictor). ``lr``: None for the kind's default (a correction
        ``CORRECTION_LEARNING_RATE``, whole decoders ``LEARNING_RATE``). ``prior_weight``: the slide
        prior's weight (0: no prior, the copy alone). ``refiner``: learn a slide refiner too, whose
        mask is shown only where it overlaps SAM's by ``min_agreement`` (IoU; 0: always)."""
        self.base = predictor
        choice: DecoderChoice = predictor.decoder
        module, self.single_mask = _trainable_module(choice)
        self.base_kind = choice.kind
        self.kind = "residual" if choice.kind == "sam" and not self.single_mask else choice.kind
        self._base_module = module
        self.lr = float(lr) if lr is not None else (
            CORRECTION_LEARNING_RATE if self.kind == "residual" else LEARNING_RATE)
        # the shared prompt encoder is frozen: backward then stops at the decoder's inputs
        for parameter in predictor.sam.prompt_encoder.parameters():
            parameter.requires_grad_(False)
        self.steps_per_object = int(steps_per_object)
        self.batch_size = int(batch_size)
        self.hold_out_every = max(int(hold_out_every), 2)
        self.seed = int(seed)
        self.max_examples = None if max_examples is None else max(int(max_examples), 2)
        self.prior_weight = float(prior_weight)
        self.use_refiner = bool(refiner)
        self.min_agreement = float(min_agreement)
        self.enabled = True
        # the user's switch for the refiner alone: off, no object is refined, but it goes on learning
        # and being judged (cheap), so switching it back on needs no wait
        self.refiner_enabled = True
        self._generation = 0  # bumped by reset: a gate result of an older copy is dropped
        self._lock = threading.RLock()  # examples, the copy's weights and the gate's result
        self._start()

    def _start(self, keep_refinement: bool = False) -> None:
        """A fresh copy of the base decoder, no examples (construction and ``reset``; a diverged
        copy keeps the slide refiner, ``keep_refinement``: it does not depend on the copy)."""
        if self.kind == "residual" and self.base_kind == "sam":
            with torch.random.fork_rng(devices=[]):  # the correction's random layers: seeded, global RNG untouched
                torch.manual_seed(self.seed)
                self.decoder = ResidualMaskDecoder.from_sam_decoder(self._base_module).float()
        else:
            self.decoder = copy.deepcopy(self._base_module).float()
        trained = self.decoder.correction if self.kind == "residual" else self.decoder
        for parameter in self.decoder.parameters():
            parameter.requires_grad_(False)
        for parameter in trained.parameters():
            parameter.requires_grad_(True)
        self.optimizer = torch.optim.Adam(list(trained.parameters()), lr=self.lr)
        self.forward = PromptedForward(self.base.sam, self.decoder, self.kind)
        # (object serial, object key, example): the serial tells objects apart, the key is the caller's
        self._training: list[tuple] = []
        self._held: list[tuple] = []
        self.added = 0  # objects ever added (every ``hold_out_every``-th of them is held out)
        self.steps = 0
        self.owed = 0
        self.step_seconds: list[float] = []
        self._adapted = None  # the Predictor of the last copy that passed the gate
        self._scores: tuple | None = None  # (base NoC, adapted NoC) of the last gate
        self._base_scores: dict[tuple, tuple] = {}  # (serial, tile) -> the base decoder's re-click (fixed)
        self._judged: tuple | None = None  # (generation, steps, examples) the last gate judged
        self._prior_cells: dict[tuple, tuple] = {}  # a tile's (serial, id) of examples -> (cells, labels)
        self._prior_fit: tuple | None = None  # (training examples' key, the prior fitted on them)
        if not keep_refinement:
            self.refinement = (SlideRefinement(self.seed, self.max_examples, min_agreement=self.min_agreement)
                               if self.use_refiner else None)

    def rebind(self, predictor) -> None:
        """Go on with ``predictor`` in place of the base one: another ``Predictor`` of the same model,
        weights, device and decoder (``model_key``), as a restarted annotator builds. What was learned
        stays (the examples' embeddings are the same model's); the copy in use, if any, decodes
        through the new predictor's model and cache. ``ValueError`` for another model or decoder."""
        if model_key(predictor) != model_key(self.base):
            raise ValueError(f"cannot go on learning with {model_key(predictor)}: this adapter learned "
                             f"with {model_key(self.base)}")
        with self._lock:
            self.base = predictor
            self._base_module, _ = _trainable_module(predictor.decoder)
            for parameter in predictor.sam.prompt_encoder.parameters():
                parameter.requires_grad_(False)
            self.forward = PromptedForward(predictor.sam, self.decoder, self.kind)
            if self._adapted is not None:  # the copy the gate let in, not the one training on since
                self._adapted = self._predictor_with(self._adapted.decoder)

    # -- examples -------------------------------------------------------------------------------
    def add_example(self, example: AdaptationExample) -> None:
        """Keep an accepted object that lies on one tile (``add_object`` with one example)."""
        self.add_object([example])

    def add_object(self, examples: list[AdaptationExample], key=None) -> None:
        """Keep an accepted object: its examples (one per tile) all go to one side, so the gate
        never judges the copy on a tile of an object it trained on; every ``hold_out_every``-th
        object is held out, each other one owes ``steps_per_object`` steps. ``key`` (the object's
        id) lets ``remove_object`` take it back."""
        examples = [e for e in examples if np.any(e.target)]  # nothing to learn from an empty mask
        if not examples:
            return
        with self._lock:
            self.added += 1
            tagged = [(self.added, key, e) for e in examples]
            if self.refinement is not None:  # every object teaches (and judges) the refiner
                self.refinement.add_object(self.added, key, examples)
            if self.added % self.hold_out_every == 0:
                self._held.extend(tagged)
            else:
                self._training.extend(tagged)
                self.owed += self.steps_per_object
            self._bound()

    def _bound(self) -> None:
        """Memory is bounded (each example holds a tile embedding): beyond ``max_examples`` tiles the
        oldest objects go, whole (held-out tiles kept to a third of the total; the newest object of
        each side always stays)."""
        if self.max_examples is None:
            return

        def drop_oldest(side: list) -> None:
            serial = side[0][0]
            side[:] = [t for t in side if t[0] != serial]

        while len(self._held) > max(self.max_examples // 3, 1) and len({t[0] for t in self._held}) > 1:
            drop_oldest(self._held)
        while (len(self._training) + len(self._held) > self.max_examples
               and len({t[0] for t in self._training}) > 1):
            drop_oldest(self._training)

    def remove_object(self, key) -> int:
        """Forget the examples of object ``key`` (its Accept was undone, or it was deleted);
        returns how many went."""
        if key is None:
            return 0
        with self._lock:
            before = len(self._training) + len(self._held)
            self._training = [t for t in self._training if t[1] != key]
            self._held = [t for t in self._held if t[1] != key]
            removed = before - len(self._training) - len(self._held)
            if self.refinement is not None:
                self.refinement.remove_object(key)
            if removed:
                self._judged = None  # judged on a different set: judge again
            return removed

    @property
    def examples(self) -> list[AdaptationExample]:
        """The training examples, oldest first."""
        return [t[2] for t in self._training]

    @property
    def held_out(self) -> list[AdaptationExample]:
        """The held-out examples the gate re-clicks, oldest first."""
        return [t[2] for t in self._held]

    def held_out_objects(self) -> int:
        return len({t[0] for t in self._held})

    def reset(self) -> None:
        """Back to the base decoder, with no examples (a gate running now cannot bring the old copy
        back: it sees the generation change)."""
        with self._lock:
            self._generation += 1
            self._start()

    # -- training -------------------------------------------------------------------------------
    def step(self) -> float | None:
        """One optimisation step on a batch of the training examples; None when none is owed."""
        with self._lock:
            if self.owed <= 0 or not self.examples:
                return None
            started = time.perf_counter()
            rng = np.random.default_rng([self.seed, self.steps])
            picks = rng.choice(len(self.examples), size=min(self.batch_size, len(self.examples)), replace=False)
            batch = [self.examples[int(i)] for i in picks]
            self.steps += 1  # counted first: a failing step is not retried with the same draw for ever
            self.owed -= 1
            loss = self._train_step(batch, rng)
            self.step_seconds.append(time.perf_counter() - started)
            return loss

    def _train_step(self, batch: list[AdaptationExample], rng: np.random.Generator) -> float:
        """The training loop's step (``training.trainer.Trainer.train_step``) on cached features."""
        device = self.base.device
        self.decoder.to(device)
        self.decoder.train()
        if self.kind == "residual":
            self.decoder.sam_decoder.eval()  # SAM's frozen copy inside it stays as it is
        features = torch.cat([e.embedding.features.float().to(device) for e in batch])
        loss = simulated_click_loss(self.forward, features, [e.geometry for e in batch],
                                    [np.asarray(e.target, bool) for e in batch], rng, MAX_EXTRA_CLICKS, MASK_PROMPT_PROB)
        if not torch.isfinite(loss):  # a diverged copy is dropped: back to a fresh copy of the base
            value = loss.item()
            self._start(keep_refinement=True)
            raise FloatingPointError(f"adaptation loss became {value}; the copy was reset to the base decoder")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for parameter in self.base.sam.prompt_encoder.parameters():
            parameter.grad = None  # the shared prompt encoder is frozen; drop what backward left
        self.decoder.eval()
        return float(loss.item())

    # -- the gate -------------------------------------------------------------------------------
    def _snapshot_predictor(self):
        """A Predictor with a frozen copy of the adapted decoder (the copy trains on)."""
        module = copy.deepcopy(self.decoder).eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        if self.single_mask:
            module = SingleMaskDecoder(module)
        prior = self._fit_prior()
        if prior is not None:  # fitted on the CPU; it runs where the decoder runs
            module = SlidePriorDecoder(module, copy.deepcopy(prior).to(self.base.device), self.prior_weight)
        return self._predictor_with(DecoderChoice(self.kind, module, "adapted", True))

    def _predictor_with(self, choice: DecoderChoice):
        """A Predictor decoding with ``choice`` over the base predictor's model, cache and precision."""
        from ..engine.predictor import Predictor

        base = self.base
        predictor = Predictor(base.model, choice, cache=base.cache, precision=base.precision,
                              encoder_precision="bf16" if base.encoder_bf16 else "fp32",
                              encoder_mode=base.encoder_mode)  # the same embeddings, from the same cache keys
        predictor.wait_for_optimized_encoder = base.wait_for_optimized_encoder
        return predictor

    def _fit_prior(self) -> SlidePrior | None:
        """The slide prior fitted on the training examples (never the held-out ones); None without
        a weight or when the examples hold one class only. Refitted only when the training
        examples change (a gate after more steps reuses it)."""
        if self.prior_weight == 0 or not self._training:
            return None
        # (held-out objects count too: on a tile they share with training objects their cells are left out)
        key = tuple((t[0], id(t[2])) for t in self._training + self._held)
        if self._prior_fit is not None and self._prior_fit[0] == key:
            return self._prior_fit[1]
        # one set of cells per tile: positive inside any accepted object on it (another accepted
        # object on the same tile is no negative); cells of a held-out object are left out
        tiles: dict[int, list] = {}
        for side, tagged in (("train", self._training), ("held", self._held)):
            for serial, _, example in tagged:
                entry = tiles.setdefault(id(example.embedding), [example.embedding, [], []])
                entry[1 if side == "train" else 2].append((serial, example))
        cells, labels, cache = [], [], {}
        for embedding, training, held in tiles.values():
            if not training:
                continue
            tile_key = tuple((serial, id(example)) for serial, example in training + held)
            if tile_key not in self._prior_cells:
                shape = np.shape(training[0][1].target)
                union, ignore = _union_of(training, shape), _union_of(held, shape)
                rng = np.random.default_rng([self.seed, training[0][0], len(training)])
                x, y = example_cells(embedding.features, union, embedding.input_size, embedding.original_size,
                                     rng, ignore=ignore & ~union)
                self._prior_cells[tile_key] = (x.half(), y)  # half the memory; fitted in float32
            cache[tile_key] = self._prior_cells[tile_key]
            cells.append(cache[tile_key][0].float())
            labels.append(cache[tile_key][1])
        self._prior_cells = cache  # what no longer describes a tile goes
        prior = fit_slide_prior(torch.cat(cells), torch.cat(labels)) if cells else None
        self._prior_fit = (key, prior)
        return prior

    def update_gate(self, may_run: Callable[[], bool] | None = None) -> bool | None:
        """Judge the copy against the base decoder on the held-out examples; True when the copy is
        now in use. ``may_run`` is asked between examples (a UI's click goes first); when it says
        no, the gate is left as it was and None is returned."""
        if may_run is not None and not may_run():
            return None  # (before the candidate is built: a click goes first)
        with self._lock:
            if not self._held or (self.steps == 0 and (self.prior_weight == 0 or not self._training)):
                return self.in_use
            # the prior is fitted on the training examples: a change there is a new candidate too
            judged = (self._generation, self.steps, tuple((t[0], id(t[2])) for t in self._held),
                      tuple((t[0], id(t[2])) for t in self._training) if self.prior_weight else ())
            if judged == self._judged:
                return self.in_use  # nothing changed since the last judgement
            candidate = self._snapshot_predictor()
            held_out = [((t[0], i), t[2]) for i, t in enumerate(self._held)]
            objects = self.held_out_objects()
            generation = self._generation
        base_scores, adapted_scores = [], []
        for tag, example in held_out:
            if may_run is not None and not may_run():
                return None
            key = (tag[0], id(example))
            if key not in self._base_scores:  # the base decoder never changes: once per example
                self._base_scores[key] = reclick(self.base, example)
            base_scores.append(self._base_scores[key])
            adapted_scores.append(reclick(candidate, example))
        base = (float(np.mean([s[0] for s in base_scores])), float(np.mean([s[1] for s in base_scores])))
        adapted = (float(np.mean([s[0] for s in adapted_scores])), float(np.mean([s[1] for s in adapted_scores])))
        # strictly fewer clicks: on RINGS a copy that tied (both failing at GATE_MAX_CLICKS) with a
        # higher mean IoU passed and then needed more clicks on later objects
        better = objects >= MIN_HELD_OUT and adapted[0] < base[0]
        with self._lock:
            if generation != self._generation:
                return None  # reset meanwhile: this judged a copy that no longer exists
            self._scores = (base[0], adapted[0])
            self._adapted = candidate if better else None
            self._judged = judged
        return better

    @property
    def in_use(self) -> bool:
        return self.enabled and self._adapted is not None

    # -- the slide refiner ------------------------------------------------------------------------
    def refiner_pending(self) -> int:
        return self.refinement.pending if self.refinement is not None else 0

    def update_refiner(self, may_run: Callable[[], bool] | None = None) -> bool | None:
        """Judge and learn from the oldest accepted object the refiner has not seen (re-clicked with
        the base decoder: ``SlideRefinement.process_next``); False when there is none, None when
        ``may_run`` said no (a click goes first)."""
        refinement = self.refinement
        if refinement is None:
            return False
        return refinement.process_next(self.base, may_run)

    def active_refiner(self):
        """The slide refiner a new object uses, or None (adaptation or the refiner switched off, not
        fitted, or its gate does not pass). No lock taken."""
        refinement = self.refinement
        on = self.enabled and self.refiner_enabled and refinement is not None
        return refinement.active() if on else None

    def active_predictor(self):
        """The predictor the next object should use: the adapted copy when it passed the gate.
        Takes no lock (a step may hold it for a few hundred ms): one attribute read."""
        adapted = self._adapted
        return adapted if self.enabled and adapted is not None else self.base

    def state(self) -> AdaptationState:
        with self._lock:
            return self.state_nowait()

    def state_nowait(self) -> AdaptationState:
        """``state`` without the lock (a step may hold it for a second): for a UI thread; the
        numbers may be one step apart from each other."""
        scores = self._scores
        base, adapted = scores if scores is not None else (None, None)
        training, held = self._training, self._held  # (one read each: lists are replaced, not changed in place
        refinement = self.refinement  # by remove_object)
        r_base, r_noc, r_judged = refinement.scores() if refinement is not None else (None, None, 0)
        return AdaptationState(len(training), len(held), self.steps, self.owed, self.in_use,
                               base, adapted, self.enabled, len({t[0] for t in held}),
                               self.active_refiner() is not None, r_judged, r_base, r_noc, self.refiner_pending(),
                               self.refiner_enabled, objects=len({t[0] for t in training} | {t[0] for t in held}))

    # -- keeping it -----------------------------------------------------------------------------
    def save(self, path, slide: str = "") -> Path:
        """The adapted decoder as a decoder checkpoint (our format), with what it was adapted on."""
        from ..models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint

        with self._lock:
            state = {k: v.detach().clone() for k, v in self.decoder.state_dict().items()}
            metadata = decoder_metadata(
                self.kind, self.base.model.name, self.base.model.weights_hash, "adapted", True,
                metrics={"held_out_noc85_base": None if self._scores is None else self._scores[0],
                         "held_out_noc85_adapted": None if self._scores is None else self._scores[1]},
                config={"adapted_on": slide, "base_decoder": self.base.decoder.source, "lr": self.lr,
                        "examples": len(self.examples), "held_out": len(self.held_out), "steps": self.steps,
                        "steps_per_object": self.steps_per_object, "seed": self.seed})
            if self.single_mask:
                metadata["mask_outputs"] = "single"
            # the prior goes with the file only when the gate let it in (it then decodes this slide's
            # objects); a prior the gate turned down is not handed on to the next slides
            module = self._adapted.decoder.module if self._adapted is not None else None
            if isinstance(module, SlidePriorDecoder):
                state.update({f"slide_prior.{k}": v.detach().cpu().clone() for k, v in module.prior.state_dict().items()})
                metadata["slide_prior"] = {"weight": module.weight, "context": list(CONTEXT)}
        return save_decoder_checkpoint(path, state, metadata)


def _trainable_module(choice: DecoderChoice) -> tuple[torch.nn.Module, bool]:
    """The module of ``choice`` that adapts, and whether it is an md checkpoint's single-mask one
    (trained and inferring token 0 alone: adapting it keeps to that)."""
    module = choice.module
    if isinstance(module, SlidePriorDecoder):  # a decoder saved on another slide: this slide fits its own prior
        module = module.decoder
    single_mask = isinstance(module, SingleMaskDecoder)
    return (module.decoder if single_mask else module), single_mask


def model_key(predictor) -> tuple:
    """What an adapter's learning depends on: the model (name, weights hash), the device and the
    decoder as chosen (kind, name, file hash, source). Two predictors with the same key give the
    same embeddings and the same base decoder."""
    model, decoder = predictor.model, predictor.decoder
    return (model.name, model.weights_hash, str(predictor.device), decoder.kind, decoder.name,
            decoder.weights_sha256, decoder.source)


def _union_of(tagged: list[tuple], shape: tuple) -> np.ndarray:
    """The union of the (serial, example) targets that have ``shape`` (one tile's)."""
    union = np.zeros(shape, bool)
    for _, example in tagged:
        if np.shape(example.target) == shape:
            union |= np.asarray(example.target, bool)
    return union


def reclick(predictor, example: AdaptationExample, max_clicks: int = GATE_MAX_CLICKS) -> tuple[int, float]:
    """(NoC@``GATE_IOU``, mean IoU over the clicks) of ``predictor`` re-clicking ``example`` with the
    benchmark's clicker (clicks until the IoU is reached or ``max_clicks``)."""
    ious, _ = click_example(predictor, example.embedding, example.target, max_clicks, GATE_IOU)
    return noc(ious, GATE_IOU, max_clicks), float(np.mean(ious))


def lower_priority(niceness: int = 19) -> bool:
    """Give the calling thread the lowest CPU priority (Linux: threads have their own nice value,
    and the OpenMP threads torch starts for this thread inherit it). A step that is under way when
    a click comes then gets the CPU only when the click leaves it idle, so the click runs at full
    speed instead of sharing the cores with it. False where the system does not allow it."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
        return True
    except (AttributeError, OSError):  # not on Linux, or not permitted
        return False


class AdaptationWorker:
    """Runs a ``DecoderAdapter`` on a background thread at the lowest priority: before every step
    (and between the gate's examples) it waits until ``may_run()`` says no click or embedding is
    running, and a step already under way yields the CPU to a click (``lower_priority``). Work from
    other threads (examples, reset, save) is queued and done by this thread between steps, so no
    UI or click thread ever waits for the adapter's lock. The gate judges the copy after every
    ``steps_per_object`` steps and when the owed steps are done. ``on_change(state)`` is called
    from the thread after every step and gate and whenever what it is doing (``activity``) changes.

    Order of the work: queued tasks first, then background jobs (``add_job``: earlier objects'
    examples), then for a newly accepted object ``FIRST_SLICE_S`` of the copy's steps (at least
    one: the copy starts learning at once), then the slide refiner's objects (seconds, and what
    helps most), then the remaining steps. Another thread that keeps ``may_run()`` false with
    background work of its own (a prefetcher computing embeddings one after another) lets a step
    run between its units by calling ``take_turn``."""

    def __init__(self, adapter: DecoderAdapter, may_run: Callable[[], bool],
                 on_change: Callable[[AdaptationState], None] | None = None, low_priority: bool = True) -> None:
        """``low_priority``: the thread runs at the lowest CPU priority (``lower_priority``)."""
        self.adapter = adapter
        self.low_priority = low_priority
        self.may_run = may_run
        self.on_change = on_change
        self.error: str | None = None  # the last failure (cleared by the next step that succeeds)
        self.activity = ""  # what the thread is doing now (``AdaptationState.activity``)
        self._tasks: deque = deque()
        self._jobs: deque = deque()
        self._wake = threading.Event()
        self._stop = self._release = False
        self._idle = threading.Event()
        self._idle.set()
        self._turn_wanted = threading.Event()  # ``take_turn``: a thread waits for one unit of work
        self._turn_done = threading.Event()
        self._first_slice = False  # an object was added: its first steps come before the refiner
        self._sliced = 0.0  # seconds of steps run in that first slice
        self._state_lock = threading.Lock()  # _wake, _idle and _tasks change together (no lost wake-up)
        self._thread = threading.Thread(target=self._run, name="napari-sam-histo-adaptation", daemon=True)
        self._thread.start()

    def add_example(self, example: AdaptationExample) -> None:
        """Queue an example (returns at once; the worker adds it between steps)."""
        self.submit(lambda: self.adapter.add_example(example))

    def submit(self, function: Callable) -> Future:
        """``function()`` on the worker thread between steps; its result or exception in the
        future (cancelled at once when the worker has stopped)."""
        future: Future = Future()
        with self._state_lock:
            if self._stop:
                future.cancel()
                return future
            self._tasks.append((function, future))
            self._idle.clear()
            self._wake.set()
        return future

    def add_job(self, job: Callable[[Callable[[], bool]], bool | None]) -> None:
        """Background work in units, done by the thread while adaptation is on, before the steps:
        ``job(may_run)`` does one unit and returns True (more may follow), False (it has nothing
        left: it is dropped) or None (``may_run`` said no: asked again later)."""
        with self._state_lock:
            if self._stop:
                return
            self._jobs.append(job)
            self._idle.clear()
            self._wake.set()

    def state_nowait(self) -> AdaptationState:
        """The adapter's state (no lock) with what the thread is doing."""
        return replace(self.adapter.state_nowait(), activity=self.activity)

    @property
    def stopped(self) -> bool:
        return self._stop

    def has_work(self) -> bool:
        """Whether the thread has something to do once ``may_run()`` lets it."""
        adapter = self.adapter
        return adapter.enabled and bool(adapter.owed > 0 or adapter.refiner_pending() or self._jobs)

    def take_turn(self, timeout: float = TURN_TIMEOUT_S) -> bool:
        """Called by a thread between units of its own background work (a prefetcher between two
        embeddings), which ``may_run()`` waits for: when there is work, that thread pauses until
        one unit of it (a step, a refiner's object, an earlier object's tile) is done, at most
        ``timeout`` seconds; True when one was. A click still goes first (``may_run``)."""
        if self._stop or not self.has_work() or threading.current_thread() is self._thread:
            return False
        self._turn_done.clear()
        self._turn_wanted.set()
        self.wake()
        try:
            return self._turn_done.wait(timeout)
        finally:
            self._turn_wanted.clear()

    def _unit_done(self) -> None:
        if self._turn_wanted.is_set():
            self._turn_done.set()

    def _run_tasks(self) -> None:
        """Do the queued work; tell ``on_change`` when there was some (an example just added shows)."""
        ran = False
        while True:
            with self._state_lock:
                if not self._tasks:
                    if ran:
                        self._changed()
                    return
                function, future = self._tasks.popleft()
            ran = True
            owed = self.adapter.owed
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except Exception as err:
                future.set_exception(err)
            if self.adapter.owed > owed:  # an object to train on: its first steps come soon
                self._first_slice = True

    def wake(self) -> None:
        """Run what is owed (after switching adaptation back on)."""
        with self._state_lock:
            self._idle.clear()
            self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queued work, the owed steps (unless adaptation is switched off) and the
        gate are done, or the worker has stopped (a UI closing, tests)."""
        return self._idle.wait(timeout)

    def stop(self, wait: bool = True, release: bool = False) -> None:
        """Stop after the step under way (``wait``: until then, at most 10 s); queued work is
        cancelled. ``release``: the adapter's examples (tile embeddings) are dropped when the
        thread ends (the annotator is gone; its memory need not wait for the next one)."""
        with self._state_lock:
            self._stop = True
            self._release = release
            tasks = list(self._tasks)
            self._tasks.clear()
            self._jobs.clear()
            self._wake.set()
        for _, future in tasks:
            future.cancel()
        self._turn_done.set()  # a thread waiting for a turn goes on
        if wait:
            self._thread.join(timeout=10)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(replace(self.adapter.state(), activity=self.activity))
            except Exception:  # a UI's failure must not stop the adaptation
                pass

    def _doing(self, activity: str) -> None:
        """What the thread does now; ``on_change`` hears when that changes."""
        if activity != self.activity:
            self.activity = activity
            self._changed()

    def _may_run(self) -> bool:
        """``may_run()``, and the activity says "waiting" while it says no."""
        if self.may_run():
            return True
        self._doing("waiting")
        return False

    def _judge(self) -> None:
        """The gate, yielding to clicks: a click that comes first makes it try again after it
        (queued work is done meanwhile, so a Reset never waits for a long gate)."""
        while not self._stop and self.adapter.enabled:
            self._run_tasks()
            if not self._may_run():
                time.sleep(0.02)
                continue
            self._doing("judging")
            if self.adapter.update_gate(self.may_run) is not None:
                self._unit_done()
                return
            time.sleep(0.02)

    def _prepare(self) -> None:
        """The background jobs' units, one after another, yielding to clicks."""
        while not self._stop and self.adapter.enabled and self._jobs:
            self._run_tasks()
            if not self._may_run():
                time.sleep(0.02)
                continue
            job = self._jobs[0]
            self._doing("preparing")
            done = job(self.may_run)
            if done is None:
                time.sleep(0.02)
                continue
            if not done:
                with self._state_lock:
                    if self._jobs and self._jobs[0] is job:
                        self._jobs.popleft()
            self._unit_done()
            self._changed()

    def _refine(self) -> None:
        """The slide refiner's queued objects, oldest first, yielding to clicks."""
        while not self._stop and self.adapter.enabled and self.adapter.refiner_pending():
            self._run_tasks()
            if self._first_slice and self.adapter.owed > 0:
                return  # a newly accepted object's first steps come first
            if not self._may_run():
                time.sleep(0.02)
                continue
            self._doing("refining")
            if self.adapter.update_refiner(self.may_run) is None:
                time.sleep(0.02)
                continue
            self._unit_done()
            self._changed()

    def _step(self) -> None:
        """One step, when ``may_run()`` lets it."""
        if not self._may_run():
            time.sleep(0.02)
            return
        self._doing("training")
        started = time.perf_counter()
        if self.adapter.step() is not None:
            self.error = None
        self._sliced += time.perf_counter() - started
        self._unit_done()
        self._changed()
        if self.adapter.steps % self.adapter.steps_per_object == 0 and self.adapter.owed > 0:
            self._judge()  # a user faster than the steps still gets a judged copy
            self._changed()

    def _run(self) -> None:
        if self.low_priority:
            lower_priority()
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            try:
                self._run_tasks()
                self._prepare()
                self._sliced = 0.0
                while not self._stop and self.adapter.enabled and (self.adapter.owed > 0
                                                                   or self.adapter.refiner_pending() or self._jobs):
                    self._run_tasks()
                    self._prepare()
                    if self._first_slice:  # a new object: FIRST_SLICE_S of steps (at least one) first
                        if self.adapter.owed <= 0 or self._sliced >= FIRST_SLICE_S:
                            self._first_slice, self._sliced = False, 0.0
                        elif not self._stop and self.adapter.enabled:
                            self._step()
                            continue
                    self._refine()
                    if self._first_slice:
                        continue
                    if not self._stop and self.adapter.enabled and self.adapter.owed > 0:
                        self._step()
                self._judge()
                self._run_tasks()
                self._refine()
            except Exception as err:  # adaptation is a bonus: it never takes the annotator down
                self.error = f"{type(err).__name__}: {err}"
            self._unit_done()
            self.activity = ""
            self._changed()
            with self._state_lock:
                if self._stop or (not self._wake.is_set() and not self._tasks):
                    self._idle.set()
                elif not self._wake.is_set():
                    self._wake.set()
        if self._release:
            with self.adapter._lock:
                self.adapter._training, self.adapter._held = [], []
                self.adapter._prior_cells, self.adapter._prior_fit = {}, None
                if self.adapter.refinement is not None:
                    self.adapter.refinement = SlideRefinement(self.adapter.seed, min_agreement=self.adapter.min_agreement)
        self._idle.set()

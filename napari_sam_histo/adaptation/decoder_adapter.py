"""The online adaptation's decoder adapter: a per-slide copy of the annotator's decoder, the
accepted objects' examples (training and held out), the optimisation steps, the never-worse gate,
the slide prior and refiner on top, and saving the copy (the design: ``adaptation.settings``).
It holds no thread: ``worker.AdaptationWorker`` runs it in the background."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..models.decoders import DecoderChoice, SingleMaskDecoder
from ..models.residual_decoder import ResidualMaskDecoder
from ..models.slide_prior import CONTEXT, PRIOR_WEIGHT, SlidePrior, SlidePriorDecoder
from ..models.slide_refiner import MIN_AGREEMENT
from ..training.click_simulation import simulated_click_loss
from ..training.examples import AdaptationExample
from ..training.prompted_forward import PromptedForward
from ..training.reclick import Reclick, reclick
from .prior import PriorFitter
from .settings import (
    BATCH_SIZE,
    CORRECTION_LEARNING_RATE,
    HOLD_OUT_EVERY,
    LEARNING_RATE,
    MASK_PROMPT_PROB,
    MAX_EXTRA_CLICKS,
    MIN_HELD_OUT,
    STEPS_PER_OBJECT,
    AdaptationState,
    GateScores,
    model_key,
)
from .slide_refinement import SlideRefinement


class DecoderAdapter:
    """A copy of ``predictor``'s decoder that learns from accepted objects and is offered
    (``active_predictor``) only once the never-worse gate passes."""

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
        self._adapted = None  # the Predictor of the last copy that passed the gate
        self._scores: GateScores | None = None  # the last gate's
        self._base_scores: dict[tuple, Reclick] = {}  # (serial, tile) -> the base decoder's re-click (fixed)
        self._judged: tuple | None = None  # (generation, steps, examples) the last gate judged
        self.prior_fitter = PriorFitter(self.seed)
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

    def release(self) -> None:
        """Let go of the examples (their tile embeddings) and what was fitted on them: the
        annotator is gone and its memory need not wait for the next one."""
        with self._lock:
            self._training, self._held = [], []
            self.prior_fitter = PriorFitter(self.seed)
            if self.refinement is not None:
                self.refinement = SlideRefinement(self.seed, min_agreement=self.min_agreement)

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
            rng = np.random.default_rng([self.seed, self.steps])
            picks = rng.choice(len(self.examples), size=min(self.batch_size, len(self.examples)), replace=False)
            batch = [self.examples[int(i)] for i in picks]
            self.steps += 1  # counted first: a failing step is not retried with the same draw for ever
            self.owed -= 1
            return self._train_step(batch, rng)

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
    def snapshot_predictor(self):
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
        return self.prior_fitter.fit(self._training, self._held)

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
            candidate = self.snapshot_predictor()
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
        scores = GateScores(float(np.mean([s.noc for s in base_scores])), float(np.mean([s.noc for s in adapted_scores])))
        # strictly fewer clicks: on RINGS a copy that tied (both failing at GATE_MAX_CLICKS) with a
        # higher mean IoU passed and then needed more clicks on later objects
        better = objects >= MIN_HELD_OUT and scores.adapted_noc < scores.base_noc
        with self._lock:
            if generation != self._generation:
                return None  # reset meanwhile: this judged a copy that no longer exists
            self._scores = scores
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
        base, adapted = (scores.base_noc, scores.adapted_noc) if scores is not None else (None, None)
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
                metrics={"held_out_noc85_base": None if self._scores is None else self._scores.base_noc,
                         "held_out_noc85_adapted": None if self._scores is None else self._scores.adapted_noc},
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

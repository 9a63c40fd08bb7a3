"""Training a project decoder on a CPU: a tissue head (``models.tissue_decoder``) learns, from a
lab's accepted objects, how SAM's masks go wrong on its tissue.

Training through SAM's decoder with simulated click rounds costs about 2 s a step on a 2-core CPU
(70 % of it in SAM's frozen two-way transformer), and fine-tuning SAM's or the modified decoder on
a few dozen objects makes the first click better and the corrections worse. So the recipe never
runs SAM's decoder backwards:

1. **States.** Each training object is clicked with the benchmark's clicker (RITM's rule,
   ``evaluation.clicker``) through the product's own ``ClickSession``, as far as the head corrects
   (``corrected_clicks``, default the first click; at most ``max_clicks``, or IoU ``stop_iou``);
   every mask SAM's decoder returns on the way that the head will be asked to correct (its three
   candidates at the first click, later masks, alternatives the session decodes) is kept as a
   *state*: SAM's low-resolution logits. Forward only, once per object. Correcting every click
   made the corrections worse (``docs/project-decoders.md``): by default SAM alone answers them.
2. **Fit.** The head reads the tile's cached embedding and a state's logits and adds a logit
   offset, supervised by the object's mask on SAM's 256x256 frame (the Normalized Focal Loss of
   ``training.nfl_loss``; pixels of SAM's padding left out). Objects are drawn uniformly, then one
   of their states, so an object SAM fails (twenty states) does not outweigh one it gets in two.
   No SAM in the loop: a step is a few convolutions on a 64x64 grid.
3. **DAgger** (``dagger_rounds``, default none; it matters only when the head corrects later
   clicks). With the head in place the session feeds the *corrected* logits back as the next
   click's mask prompt, so SAM then sees prompts it did not see in step 1. Each round the first
   ``dagger_objects`` training objects are clicked again with SAM + head, the new states are added,
   and the head trains ``dagger_steps`` more steps on all of them.

The examples are ``training.examples.AdaptationExample``: a tile embedding, the accepted mask at
the tile's resolution, and (unused here) the clicks, so a project's store of accepted objects can
feed it. Deterministic under ``recipe.seed`` for the same examples (one thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError
from ..evaluation.click_loop import click_tile
from ..models.decoders import DecoderChoice
from ..models.tissue_decoder import CORRECTED_CLICKS, DILATIONS, KIND, PROJECTION, WIDTH, TissueDecoder, TissueHead
from .examples import AdaptationExample
from .nfl_loss import normalized_focal_loss

LOW_RES = 256  # SAM's low-resolution frame
# the loss is taken at half SAM's frame (the head's offset is smooth: it is made at 64x64), a quarter
# of the per-pixel work of each step
LOSS_RES = 128


@dataclass(frozen=True)
class TissueRecipe:
    """Everything that decides what is learnt (recorded in the checkpoint)."""

    steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_clicks: int = 10  # clicks per object when collecting states (half the benchmark's: half the time)
    stop_iou: float = 0.9  # and where an object's clicks stop (the benchmark's highest threshold)
    dagger_rounds: int = 0
    dagger_steps: int = 500
    dagger_objects: int = 25  # objects re-clicked per DAgger round (the first ones): its cost stays bounded
    width: int = WIDTH
    dilations: tuple[int, ...] = DILATIONS
    projection: int = PROJECTION
    corrected_clicks: int | None = CORRECTED_CLICKS  # the head corrects objects with at most this many clicks
    seed: int = 0

    name = "tissue-head"  # class attributes (``training.recipes.DecoderRecipe``), not settings
    label = "tissue decoder"

    def __post_init__(self) -> None:
        for name in ("steps", "dagger_rounds", "dagger_steps"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} {getattr(self, name)!r} must be >= 0.")
        for name in ("batch_size", "max_clicks", "width", "projection", "dagger_objects"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} {getattr(self, name)!r} must be >= 1.")
        if self.corrected_clicks is not None and int(self.corrected_clicks) < 1:
            raise InputError(f"corrected_clicks {self.corrected_clicks!r} must be >= 1 (None: every click).")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise InputError(f"lr {self.lr!r} must be a finite number > 0.")
        if not 0 < self.stop_iou <= 1:
            raise InputError(f"stop_iou {self.stop_iou!r} must lie in (0, 1].")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["dilations"] = list(self.dilations)
        return out

    @classmethod
    def completed(cls, recorded: dict) -> dict:
        """A recipe as a report recorded it, with the settings added since at their defaults."""
        return {**cls().as_dict(), **recorded}

    def train(self, predictor, examples, log=None, cancel=None, resume=None, on_checkpoint=None) -> TrainedTissue:
        """``train_tissue_head`` with this recipe (``training.recipes.DecoderRecipe``)."""
        return train_tissue_head(predictor, examples, self, log=log, cancel=cancel, resume=resume,
                                 on_checkpoint=on_checkpoint)

    def state_from_dict(self, data: dict) -> TrainingState:
        return TrainingState.from_dict(data)


@dataclass
class PreparedObject:
    """An example as the fit reads it: the embedding (float16, CPU), the mask on SAM's 256x256
    frame (fraction of each low-res pixel inside the object) and where that frame is the image."""

    example: AdaptationExample
    features: torch.Tensor  # (C, 64, 64) float16
    target: torch.Tensor  # (256, 256) float16 in [0, 1]
    valid: torch.Tensor  # (256, 256) bool: not SAM's padding
    projected: torch.Tensor | None = None  # (P, 64, 64): the features through the head's fixed projection


@dataclass
class TrainingState:
    """Where a training stands, enough to go on from there in another process (a checkpoint):
    the head's and the optimizer's weights, the recorded states, the steps done in the phase under
    way (``phase`` 0 is the first fit, ``r`` the DAgger round ``r``), the losses so far and the
    random generator's state. Tensors, lists, dicts and numbers only: it loads with
    ``torch.load(weights_only=True)``."""

    head: dict
    optimizer: dict | None
    states: list[list[torch.Tensor]]
    phase: int
    steps_done: int
    losses: list[float]
    rng: dict

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        return cls(**{name: data[name] for name in ("head", "optimizer", "states", "phase", "steps_done", "losses",
                                                     "rng")})


CHECKPOINT_EVERY = 50  # steps between two training states handed to ``on_checkpoint``


@dataclass
class TrainedTissue:
    head: TissueHead
    choice: DecoderChoice  # the trained decoder, ready for a ``Predictor``
    report: dict  # seconds (simulate, fit, dagger), steps, states, last loss, recipe
    corrected_clicks: int | None = CORRECTED_CLICKS

    def save(self, path, model, metrics: dict | None = None, config: dict | None = None,
             provenance: dict | None = None):
        """Write the decoder file (``models.tissue_decoder.save_tissue_decoder``)."""
        from ..models.tissue_decoder import save_tissue_decoder

        return save_tissue_decoder(path, model, self.head, True, metrics=metrics, config=config,
                                   provenance=provenance, corrected_clicks=self.corrected_clicks)


def on_frame(mask: np.ndarray, input_size, original_size, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask at the tile's resolution on SAM's low-resolution frame: resized as the image is (its
    longest side to ``image_size``), padded, area-averaged to 256x256; and the valid (unpadded) part."""
    target = torch.as_tensor(np.asarray(mask, bool), dtype=torch.float32)[None, None]
    if tuple(input_size) != tuple(target.shape[-2:]):
        target = F.interpolate(target, tuple(input_size), mode="bilinear", align_corners=False)
    full = torch.zeros((1, 1, image_size, image_size))
    full[..., : input_size[0], : input_size[1]] = target
    valid = torch.zeros((1, 1, image_size, image_size))
    valid[..., : input_size[0], : input_size[1]] = 1
    scale = image_size // LOW_RES
    return F.avg_pool2d(full, scale)[0, 0], F.avg_pool2d(valid, scale)[0, 0] > 0.5


def example_on_frame(example: AdaptationExample, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``on_frame`` of an example's mask, which must fit its tile and hold an object (``InputError``)."""
    target = np.asarray(example.target, bool)
    if target.shape != tuple(example.embedding.original_size):
        raise InputError(f"An example's mask is {target.shape[1]}x{target.shape[0]} but its tile is "
                         f"{example.embedding.original_size[1]}x{example.embedding.original_size[0]}.")
    if not target.any():
        raise InputError("An example's mask is empty: there is no object to learn from.")
    return on_frame(target, example.embedding.input_size, example.embedding.original_size, image_size)


def prepare(example: AdaptationExample, image_size: int) -> PreparedObject:
    frame, valid = example_on_frame(example, image_size)
    return PreparedObject(example, example.embedding.features[0].detach().to("cpu", torch.float16),
                          frame.half(), valid)


class _RecordingDecoder(TissueDecoder):
    """The tissue decoder that also keeps every mask SAM's decoder returns (the states). The list
    is shared with the copy a ``Predictor`` makes of its decoder (bf16 where that is fast)."""

    def __init__(self, sam_decoder, head: TissueHead, states: _States, corrected_clicks: int | None) -> None:
        super().__init__(sam_decoder, head, corrected_clicks)
        self.states = states

    def sam_masks(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        masks, iou = super().sam_masks(image_embeddings, image_pe, sparse, dense, multimask_output)
        if self.corrects(sparse):  # only what the head will be asked to correct
            self.states.add(masks)
        return masks, iou


class _States:
    """Recorded states; shared, never copied (``copy.deepcopy`` returns it)."""

    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []

    def add(self, masks: torch.Tensor) -> None:
        for mask in masks.reshape(-1, *masks.shape[-2:]):
            self.masks.append(mask.detach().to("cpu", torch.float16).clone())

    def __deepcopy__(self, memo) -> _States:
        return self


def require_sam_decoder(predictor, what: str = "A tissue head learns over") -> None:
    """``InputError`` unless ``predictor`` decodes with its model's own SAM decoder, which project
    decoders start from; ``what`` begins the message (the recipe's relation to SAM's decoder)."""
    choice = predictor.decoder
    if choice.kind != "sam" or choice.module is not predictor.sam.mask_decoder:
        raise InputError(f"{what} SAM's own decoder; this predictor decodes with "
                         f"{choice.name or choice.kind!r}. Choose the 'sam' decoder to train one.")


def simulate(predictor, objects: list[PreparedObject], head: TissueHead | None, recipe: TissueRecipe,
             ) -> tuple[list[list[torch.Tensor]], list[float]]:
    """Click every object with SAM (+ ``head``) as the benchmark clicks (see the module); each
    object's recorded states and the seconds its clicking took."""
    from ..engine.predictor import Predictor

    require_sam_decoder(predictor)
    states = _States()
    head = head if head is not None else TissueHead(int(predictor.sam.mask_decoder.transformer_dim),
                                                    recipe.width, recipe.dilations, recipe.projection)
    module = _RecordingDecoder(predictor.sam.mask_decoder, head, states, recipe.corrected_clicks).eval()
    max_clicks = recipe.max_clicks if recipe.corrected_clicks is None else min(recipe.max_clicks,
                                                                               recipe.corrected_clicks)
    clicking = Predictor(predictor.model, DecoderChoice(KIND, module, "training", True), cache=predictor.cache,
                         precision=predictor.precision,
                         encoder_precision="bf16" if predictor.encoder_bf16 else "fp32",
                         encoder_mode=predictor.encoder_mode)
    out, seconds = [], []
    for obj in objects:
        started = time.perf_counter()
        states.masks = []
        click_tile(clicking, obj.example.embedding, obj.example.target, max_clicks, recipe.stop_iou)
        out.append(states.masks)
        seconds.append(time.perf_counter() - started)
    return out, seconds


def _batch(objects: list[PreparedObject], states: list[list[torch.Tensor]], size: int, rng: np.random.Generator):
    usable = [i for i, s in enumerate(states) if s]
    picks = rng.choice(usable, size=size, replace=len(usable) < size)
    projected = torch.stack([objects[i].projected for i in picks])
    logits = torch.stack([states[i][int(rng.integers(len(states[i])))] for i in picks])[:, None].float()
    target = torch.stack([objects[i].target for i in picks])[:, None].float()
    valid = torch.stack([objects[i].valid for i in picks])[:, None].float()
    return projected, logits, target, valid


def fit(head: TissueHead, objects: list[PreparedObject], states: list[list[torch.Tensor]], steps: int,
        recipe: TissueRecipe, rng: np.random.Generator, cancel: Callable[[], bool] | None = None,
        optimizer_state: dict | None = None,
        on_step: Callable[[int, torch.optim.Optimizer, float], None] | None = None) -> list[float]:
    """``steps`` Adam steps of the head on the states (see the module); the losses. ``optimizer_state``:
    the optimizer's where a resumed fit left it; ``on_step(i, optimizer, loss)`` after each step ``i``
    (counting from 1)."""
    if not any(states):
        raise InputError("No training states: none of the objects could be clicked.")
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    head.train()
    losses = []
    for step in range(int(steps)):
        if cancel is not None and cancel():
            break
        projected, logits, target, valid = _batch(objects, states, recipe.batch_size, rng)
        scale = LOW_RES // LOSS_RES
        low = F.avg_pool2d(logits, scale)
        target, valid = F.avg_pool2d(target, scale), F.avg_pool2d(valid, scale) > 0.5
        corrected = low + head.from_projected(projected, logits, low.shape[-2:])
        # SAM's padding: a confident background with a background target (no loss, no gradient)
        corrected = torch.where(valid, corrected, torch.full_like(corrected, -30.0))
        loss = normalized_focal_loss(corrected, torch.where(valid, target, torch.zeros_like(target))).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the tissue head's loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        if on_step is not None:
            on_step(step + 1, optimizer, losses[-1])
    head.eval()
    return losses


def train_tissue_head(predictor, examples: list[AdaptationExample], recipe: TissueRecipe = TissueRecipe(),
                      zero_shot_states: list[list[torch.Tensor]] | None = None,
                      zero_shot_seconds: list[float] | None = None, log: Callable[[str], None] | None = None,
                      cancel: Callable[[], bool] | None = None, resume: TrainingState | None = None,
                      on_checkpoint: Callable[[TrainingState], None] | None = None,
                      checkpoint_every: int = CHECKPOINT_EVERY) -> TrainedTissue:
    """Train a tissue head for ``predictor`` (SAM's own decoder) on ``examples`` (see the module).
    ``zero_shot_states``/``zero_shot_seconds``: the examples' states clicked with SAM alone and what
    that took, when the caller kept them from an earlier run (the learning curve reuses them for
    every k; their seconds still count in the report's ``seconds``). ``on_checkpoint`` receives the
    training state every ``checkpoint_every`` steps, at the end of each phase and when cancelled;
    ``resume`` goes on from such a state (same examples and recipe: the caller checks), with the
    same result as a run that was never stopped."""
    require_sam_decoder(predictor)
    if not examples:
        raise InputError("No examples to train a tissue head on.")
    started = time.perf_counter()
    image_size = int(predictor.sam.image_encoder.img_size)
    objects = [prepare(e, image_size) for e in examples]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        head = TissueHead(int(predictor.sam.mask_decoder.transformer_dim), recipe.width, recipe.dilations,
                          recipe.projection)
    head.fit_projection([o.features for o in objects])
    rng = np.random.default_rng([recipe.seed, len(examples)])
    report = {"objects": len(examples), "recipe": recipe.as_dict(), "resumed_at": None}
    phase, done, optimizer_state, losses = 0, 0, None, []
    if resume is not None:
        if len(resume.states) != len(examples):
            raise InputError(f"The training to resume holds {len(resume.states)} objects' states, not "
                             f"{len(examples)}: it was another training.")
        head.load_state_dict(resume.head)
        states = [list(s) for s in resume.states]
        rng.bit_generator.state = resume.rng
        phase, done, optimizer_state, losses = resume.phase, resume.steps_done, resume.optimizer, list(resume.losses)
        report["simulate_s"] = 0.0
        report["resumed_at"] = {"phase": phase, "steps_done": done}
        if log is not None:
            log(f"tissue head: resuming at step {done} of phase {phase}")
    elif zero_shot_states is None:
        t = time.perf_counter()
        states, per_object = simulate(predictor, objects, None, recipe)
        report["simulate_s"] = time.perf_counter() - t
    else:
        if len(zero_shot_states) != len(examples):
            raise ValueError("zero_shot_states must hold one list per example")
        states = [list(s) for s in zero_shot_states]
        report["simulate_s"] = float(sum(zero_shot_seconds or []))
    with torch.no_grad():
        for o in objects:
            o.projected = head.project(o.features.float()[None])[0]
    report["states"] = [sum(len(s) for s in states)]

    def checkpoint(phase_: int, steps_done: int, optimizer) -> None:
        if on_checkpoint is not None:
            on_checkpoint(TrainingState({k: v.detach().clone() for k, v in head.state_dict().items()},
                                        None if optimizer is None else optimizer.state_dict(),
                                        states, phase_, steps_done, list(losses), rng.bit_generator.state))

    def run_phase(phase_: int, steps: int) -> None:
        """Fit the rest of phase ``phase_`` (``steps`` in all; ``done`` of them before a resume)."""
        nonlocal done, optimizer_state
        first = done

        def on_step(step: int, optimizer, loss: float) -> None:
            losses.append(loss)
            if (first + step) % max(int(checkpoint_every), 1) == 0 or first + step == steps:
                checkpoint(phase_, first + step, optimizer)

        fit(head, objects, states, steps - first, recipe, rng, cancel, optimizer_state, on_step)
        done, optimizer_state = 0, None

    t = time.perf_counter()
    if phase == 0:
        run_phase(0, recipe.steps)
    report["fit_s"] = time.perf_counter() - t
    if log is not None:
        log(f"tissue head: {len(examples)} objects, {report['states'][0]} states, {len(losses)} steps "
            f"in {report['fit_s']:.0f} s, loss {np.mean(losses[:20]) if losses else float('nan'):.4f} -> "
            f"{np.mean(losses[-20:]) if losses else float('nan'):.4f}")
    report["dagger_s"] = 0.0
    for round_ in range(max(phase, 1) - 1, recipe.dagger_rounds):
        if cancel is not None and cancel():
            break
        t = time.perf_counter()
        if not (resume is not None and phase == round_ + 1 and resume.steps_done > 0):
            more, _ = simulate(predictor, objects[: recipe.dagger_objects], head, recipe)
            states = [a + b for a, b in zip(states, more + [[] for _ in objects[len(more):]])]
        report["states"].append(sum(len(s) for s in states))
        run_phase(round_ + 1, recipe.dagger_steps)
        report["dagger_s"] += time.perf_counter() - t
        if log is not None:
            log(f"tissue head: DAgger round {round_ + 1}: {report['states'][-1]} states, loss "
                f"{np.mean(losses[-20:]):.4f} ({time.perf_counter() - t:.0f} s)")
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    report["steps"] = len(losses)
    report["first_loss"] = float(np.mean(losses[:20])) if losses else None
    report["last_loss"] = float(np.mean(losses[-20:])) if losses else None
    # wall time, with the zero-shot clicking charged at what it took where the caller kept it
    report["train_s"] = time.perf_counter() - started + (report["simulate_s"] if zero_shot_states is not None else 0.0)
    module = TissueDecoder(predictor.sam.mask_decoder, head, recipe.corrected_clicks).to(predictor.device).eval()
    return TrainedTissue(head, DecoderChoice(KIND, module, "training", True, name="tissue"), report,
                         recipe.corrected_clicks)

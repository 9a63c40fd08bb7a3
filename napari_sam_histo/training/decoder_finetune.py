"""A project decoder by fine-tuning SAM's own decoder on a lab's accepted objects, on a CPU.

1. **States.** Each training object is clicked with zero-shot SAM as the benchmark clicks (RITM's
   rule, ``evaluation.clicker``, through the product's ``ClickSession``; at most ``max_clicks``, or
   until IoU ``stop_iou``). Every prompt the decoder is given on the way is a *state*: the clicks
   so far, the previous click's low-resolution logits (the mask prompt), one mask or three (the
   first click), including the alternatives the session decodes when a click would lose the
   object. Forward passes only, once per object.
2. **Fit.** A copy of SAM's decoder trains on the states, one state a step, ``epochs`` passes over
   them in a seeded order. The loss: for the candidate mask closest to the object's mask, binary
   cross-entropy plus Dice on SAM's 256x256 frame (SAM's padding left out), as SAM was trained;
   plus the squared error of the decoder's IoU prediction for every candidate (so the first
   click's choice among three masks keeps working); plus ``l2sp`` times the squared distance of
   every weight from SAM's own (L2-SP, off by default); plus ``distill`` times the cross-entropy
   towards the start decoder's own mask on corrective clicks (off by default). The image encoder never runs (the examples
   carry their cached embeddings) and SAM's prompt encoder is frozen: a step is one forward and
   backward pass of the decoder (~0.3-0.7 s on 2 CPU cores).
3. **DAgger rounds** (``dagger_rounds``, none by default): the objects are clicked again with the
   decoder being trained, its states added (the prompts a user meets with this decoder), and the
   fit goes on for half as many steps again.

Why the whole decoder, with clicks at every step: a head that corrects SAM's first mask
(``training.tissue_training``) made the first mask better and saved no clicks; fine-tuning on
first clicks made corrections worse. Training on the states of every click, up to as many clicks
as the benchmark makes, teaches the decoder the tissue *as an answer to clicks*: the objects SAM
never brings to IoU 0.85 are the ones that need clicks 11 to 20, and their states are what
removes most clicks. The settings were chosen on a development split of cases
(``docs/project-decoders.md`` has the figures).

The start (``base``): SAM's own decoder by default, or the shipped ``modified`` decoder of Kim et
al. (trained on colorectal biopsies; on tissue like its own it starts far ahead of SAM, elsewhere
far behind: the held-out check says which to keep). The result is a decoder of the start's kind
(a SAM decoder, three masks for a first click; or a modified decoder): every path that runs that
kind runs it, the CPU runtime's compiled networks included.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError
from ..evaluation.click_loop import click_tile
from ..models.decoders import DecoderChoice
from .examples import AdaptationExample
from .tissue_training import example_on_frame, require_sam_decoder

BASES = ("sam", "modified")  # decoders a fine-tuning can start from (``models.decoders.choose_decoder`` names)
AUTO = "auto"  # the base chosen by the training objects' clicks (``choose_base``)
# ``AUTO`` starts from a shipped base only where it needs fewer clicks than SAM's on the training
# objects by more than chance explains: a one-sided Wilcoxon signed-rank test of the paired clicks
# (ties left out) at this level. A lead in the mean alone misled on 5 prostate tiles (3 better,
# 1 worse, 2 clicks fewer on average: the decoder trained from it needed 1.5x SAM's clicks on
# other tiles); a sign test, blind to how many clicks were saved, refused colorectal objects where
# the shipped decoder saved 4 clicks per object.
BASE_SIGNIFICANCE = 0.05
SCENARIO = "project-finetune"
CHECKPOINT_EVERY = 100  # steps between two saved training states (a state is the decoder + Adam's moments)
PROGRESS_EVERY_S = 15.0  # at most one progress line (objects clicked, steps fitted) in this many seconds


@dataclass(frozen=True)
class FinetuneRecipe:
    """Everything that decides what is learnt (recorded in the checkpoint)."""

    lr: float = 3e-5
    epochs: float = 2.0  # steps of the first fit = epochs x states
    l2sp: float = 0.0  # weight of the squared distance from SAM's weights (L2-SP; off by default)
    # weight of the start decoder's own mask as a second target on corrective clicks (states of two
    # clicks or more; binary cross-entropy towards its probabilities): keeps how the start answers
    # corrections while the first masks learn the tissue (off by default)
    distill: float = 0.0
    max_clicks: int = 20  # clicks per object when collecting states (as many as the benchmark's)
    stop_iou: float = 0.9
    dagger_rounds: int = 0  # re-clicking the objects with the decoder being trained, then training on
    seed: int = 0
    # the decoder it starts from: SAM's own, the shipped "modified", or "auto" (the default): the
    # shipped one where it needs fewer clicks than SAM's on the training objects by more than chance
    # (``choose_base``), SAM's elsewhere. On colorectal tumour cases it started from the shipped
    # decoder and needed 0.40x SAM's clicks with 50 objects (SAM's start: 0.76x), trained in 11
    # minutes on 2 CPU cores; on prostate, breast and gland objects it started from SAM's.
    base: str = AUTO
    # ``lr``, ``epochs`` and ``distill`` where the start is a shipped decoder (already trained on
    # histology): gentler, keeping its answer to corrective clicks. With SAM's settings a start from
    # the shipped colorectal decoder lost to that decoder as it was on colorectal test cases.
    shipped_lr: float = 1e-5
    shipped_epochs: float = 1.0
    shipped_distill: float = 1.0

    name = "finetune"  # class attributes (``training.recipes.DecoderRecipe``), not settings
    label = "fine-tuned decoder"

    def __post_init__(self) -> None:
        for name in ("lr", "epochs", "shipped_lr", "shipped_epochs"):
            value = getattr(self, name)
            if not (value > 0 and np.isfinite(value)):
                raise InputError(f"{name} {value!r} must be a finite number > 0.")
        for name in ("l2sp", "distill", "shipped_distill"):
            value = getattr(self, name)
            if not (value >= 0 and np.isfinite(value)):
                raise InputError(f"{name} {value!r} must be a finite number >= 0.")
        if int(self.max_clicks) < 1:
            raise InputError(f"max_clicks {self.max_clicks!r} must be >= 1.")
        if int(self.dagger_rounds) < 0:
            raise InputError(f"dagger_rounds {self.dagger_rounds!r} must be >= 0.")
        if not 0 < self.stop_iou <= 1:
            raise InputError(f"stop_iou {self.stop_iou!r} must lie in (0, 1].")
        if self.base not in (*BASES, AUTO):
            raise InputError(f"base {self.base!r}: choose one of {', '.join((*BASES, AUTO))}.")

    def as_dict(self) -> dict:
        return {"recipe": self.name, **asdict(self)}

    def settings_for(self, start: DecoderChoice) -> tuple[float, float, float]:
        """(learning rate, passes, distillation weight) for a fine-tuning from ``start``."""
        if start.name in BASES[1:]:
            return self.shipped_lr, self.shipped_epochs, self.shipped_distill
        return self.lr, self.epochs, self.distill

    @classmethod
    def completed(cls, recorded: dict) -> dict:
        """A recipe as a report recorded it, with the settings added since filled in as they were
        then: ``distill`` off, the start SAM's decoder (``base`` came with the shipped starts), and a
        shipped start with the same settings as SAM's. A start from SAM's decoder alone (``base``
        "sam") never uses a shipped start's settings: they are left out, so runs that differ only
        there read as the same recipe."""
        out = {**cls().as_dict(), **recorded}
        if "base" not in recorded:
            out["base"] = BASES[0]
        for name in ("lr", "epochs", "distill"):
            if f"shipped_{name}" not in recorded:
                out[f"shipped_{name}"] = out[name]
            if out.get("base") == BASES[0]:
                del out[f"shipped_{name}"]
        return out

    def train(self, predictor, examples, log=None, cancel=None, resume=None, on_checkpoint=None) -> FinetunedDecoder:
        """``finetune_decoder`` with this recipe (``training.recipes.DecoderRecipe``)."""
        return finetune_decoder(predictor, examples, self, log=log, cancel=cancel, resume=resume,
                                on_checkpoint=on_checkpoint)

    def state_from_dict(self, data: dict) -> FinetuneState:
        return FinetuneState.from_dict(data)


@dataclass
class ClickState:
    """One prompt the decoder was given: points on SAM's input frame, their labels, the mask
    prompt (256x256 logits, float16) or None, and whether three masks were asked for."""

    points: torch.Tensor  # (n, 2) float32
    labels: torch.Tensor  # (n,) int64
    mask: torch.Tensor | None
    multimask: bool


@dataclass
class FinetuneState:
    """Where a fine-tuning stands, to go on in another process: the decoder's and the optimizer's
    weights, the phase (0 the first fit, ``r`` DAgger round ``r``), the steps done in it, the
    losses, the random generator and the decoder's weights when each DAgger round so far began.
    The states are not kept: clicking with zero-shot SAM, and with each round's decoder, gives them
    again, the same. Tensors, lists, dicts and numbers only (``torch.load(weights_only=True)``)."""

    decoder: dict
    optimizer: dict | None
    phase: int
    steps_done: int
    losses: list[float]
    rng: dict
    round_starts: list = field(default_factory=list)  # one decoder state dict per DAgger round begun

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneState:
        return cls(**{name: data[name] for name in ("decoder", "optimizer", "phase", "steps_done", "losses", "rng")},
                   round_starts=list(data.get("round_starts", [])))


@dataclass
class FinetunedDecoder:
    """The trained decoder (as the predictor's choice), its module and the training's report."""

    module: torch.nn.Module
    choice: DecoderChoice
    report: dict = field(default_factory=dict)

    def save(self, path, model, metrics: dict | None = None, config: dict | None = None,
             provenance: dict | None = None):
        return save_finetuned_decoder(path, model, self.module, metrics, config, provenance, self.choice.kind)


def base_decoder(model, base: str) -> DecoderChoice:
    """The decoder a fine-tuning starts from: the model's own SAM decoder, or a shipped one
    (``BASES``; a ``CheckpointError`` where the model has none shipped)."""
    from ..models.decoders import choose_decoder

    if base not in BASES:
        raise InputError(f"base {base!r}: choose one of {', '.join(BASES)}.")
    return choose_decoder(model, base)


def candidate_bases(model, recipe: FinetuneRecipe) -> list[DecoderChoice]:
    """The decoders ``recipe`` may start from, SAM's first: its base alone (a ``CheckpointError``
    where it is not shipped for ``model``), or for ``AUTO`` every one of ``BASES`` the model has."""
    from ..errors import CheckpointError

    out = []
    for name in BASES if recipe.base == AUTO else (recipe.base,):
        try:
            out.append(base_decoder(model, name))
        except CheckpointError:
            if recipe.base != AUTO:
                raise
    return out


def _recording_predictor(predictor, module: torch.nn.Module, kind: str, record: list):
    """A PyTorch float32 predictor on ``module`` (a ``kind`` decoder) that appends every prompt it
    decodes to ``record``."""
    from ..engine.predictor import Predictor

    class Recording(Predictor):
        def decode(self, embedding, points_xy, labels, mask_input=None, multimask=False):
            scale = np.array([embedding.input_size[1] / embedding.original_size[1],
                              embedding.input_size[0] / embedding.original_size[0]], np.float32)
            points = np.asarray(points_xy, np.float32).reshape(-1, 2) * scale
            mask = None if mask_input is None else mask_input.detach().reshape(*mask_input.shape[-2:]).to(
                "cpu", torch.float16).clone()
            record.append(ClickState(torch.from_numpy(points), torch.as_tensor(np.asarray(labels, np.int64)), mask,
                                     bool(multimask)))
            return super().decode(embedding, points_xy, labels, mask_input, multimask)

    return Recording(predictor.model, DecoderChoice(kind, module, "training", True), cache=predictor.cache,
                     precision="fp32", decoder_mode="pytorch", encoder_mode=predictor.encoder_mode)


class _Progress:
    """Progress lines "``what``: done of total" for ``log``, at most one every ``PROGRESS_EVERY_S``
    seconds besides the last (a training in the dock says what it does; a command's output stays
    short)."""

    def __init__(self, log: Callable[[str], None] | None, what: str) -> None:
        self.log, self.what = log, what
        self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.log is not None and (done == total or now - self.last >= PROGRESS_EVERY_S):
            self.last = now
            self.log(f"{self.what}: {done} of {total}")


def collect_states(predictor, module: torch.nn.Module, examples: list[AdaptationExample], recipe: FinetuneRecipe,
                   cancel: Callable[[], bool] | None = None, kind: str = "sam",
                   log: Callable[[str], None] | None = None) -> list[list[ClickState]]:
    """Click every example with ``module`` (a ``kind`` decoder) as the decoder (see the module);
    each one's states."""
    progress = _Progress(log, f"fine-tuning: clicking the objects with the {kind} decoder being trained")
    return _click_examples(predictor, module, kind, examples, recipe, cancel, progress)[0]


def _click_examples(predictor, module: torch.nn.Module, kind: str, examples: list[AdaptationExample],
                    recipe: FinetuneRecipe, cancel: Callable[[], bool] | None = None,
                    progress: Callable[[int, int], None] | None = None):
    """(each example's states, each one's IoU after every click); ``progress(done, total)`` after
    each example."""
    record: list[ClickState] = []
    clicking = _recording_predictor(predictor, module.eval(), kind, record)
    states, ious = [], []
    for example in examples:
        if cancel is not None and cancel():
            break
        record.clear()
        clicked = click_tile(clicking, example.embedding, example.target, recipe.max_clicks, recipe.stop_iou)
        states.append(list(record))
        ious.append(clicked.ious)
        if progress is not None:
            progress(len(states), len(examples))
    return states, ious


def fewer_clicks_p(mine, sam) -> float:
    """One-sided p-value that ``mine`` needs fewer clicks than ``sam`` on the same objects (paired
    arrays): Wilcoxon's signed-rank test, ties left out (1.0 when every object ties)."""
    from scipy.stats import wilcoxon

    differences = np.asarray(sam, float) - np.asarray(mine, float)
    if not np.any(differences):
        return 1.0
    return float(wilcoxon(differences, alternative="greater", zero_method="wilcox").pvalue)


def choose_base(predictor, examples: list[AdaptationExample], recipe: FinetuneRecipe,
                cancel: Callable[[], bool] | None = None,
                log: Callable[[str], None] | None = None) -> tuple[DecoderChoice, list, dict]:
    """The start of ``recipe``: its base; for ``AUTO`` SAM's decoder unless a shipped one of
    ``BASES`` needs fewer clicks (NoC@85) than SAM's on ``examples`` (``fewer_clicks_p`` <=
    ``BASE_SIGNIFICANCE``) and fewer on average (the one with the
    lowest mean among such; a base the model has none of is left out). Returns the start, the
    states of clicking the examples with it, and every base's mean NoC@85. The examples are the
    objects about to be trained on, but no base has seen them: for the bases they are held out.
    ``log`` receives progress lines."""
    from ..evaluation.metrics import noc

    best, scores, per_object = None, {}, {}
    for start in candidate_bases(predictor.model, recipe):
        name = start.name
        progress = _Progress(log, f"fine-tuning: clicking the training objects with the {name} decoder")
        states, ious = _click_examples(predictor, start.module, start.kind, examples, recipe, cancel, progress)
        per_object[name] = np.array([noc(x, 0.85, recipe.max_clicks) for x in ious], float)
        scores[name] = float(per_object[name].mean()) if ious else float("nan")
        if best is None:
            best = (name, start, states)  # SAM's (the first of ``BASES``), or the one base asked for
            continue
        sam = per_object[BASES[0]][: len(per_object[name])]
        mine = per_object[name][: len(sam)]
        significant = fewer_clicks_p(mine, sam) <= BASE_SIGNIFICANCE
        if significant and scores[name] < scores[best[0]]:
            best = (name, start, states)
    return best[1], best[2], scores


def mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + Dice of each of ``logits`` (M, H, W) against ``target`` (H, W, in
    [0, 1]) where ``valid``; one loss per mask."""
    t = target[None].expand_as(logits)
    v = valid[None].expand_as(logits).float()
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * v).sum((1, 2)) / v.sum((1, 2)).clamp_min(1)
    p = torch.sigmoid(logits) * v
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + (t * v).sum((1, 2)) + 1)
    return bce + dice


def _step_loss(decoder, sam, features, image_pe, state: ClickState, target, valid, anchor: dict, l2sp: float,
               teacher: torch.nn.Module | None = None, distill: float = 0.0):
    with torch.no_grad():
        mask = None if state.mask is None else state.mask.float()[None, None]
        sparse, dense = sam.prompt_encoder(points=(state.points[None], state.labels[None]), boxes=None, masks=mask)
    prompts = {"image_embeddings": features, "image_pe": image_pe, "sparse_prompt_embeddings": sparse,
               "dense_prompt_embeddings": dense, "multimask_output": state.multimask}
    low, iou_pred = decoder(**prompts)
    low = low[0]
    losses = mask_losses(low, target, valid)
    with torch.no_grad():
        predicted = (low > 0).float() * valid
        inside = target * valid
        true_iou = (predicted * inside).sum((1, 2)) / ((predicted + inside) > 0.5).float().sum((1, 2)).clamp_min(1)
    best = int(torch.argmin(losses.detach()))
    loss = losses[best] + F.mse_loss(iou_pred[0], true_iou)
    if distill and teacher is not None and len(state.labels) > 1:
        with torch.no_grad():
            taught = torch.sigmoid(teacher(**prompts)[0][0])
        v = valid[None].expand_as(low).float()
        kept = (F.binary_cross_entropy_with_logits(low, taught, reduction="none") * v).sum((1, 2)) / v.sum(
            (1, 2)).clamp_min(1)
        loss = loss + distill * kept[best]
    if l2sp:
        loss = loss + l2sp * sum(((p - anchor[name]) ** 2).sum() for name, p in decoder.named_parameters())
    return loss, float(losses[best].detach())


def finetune_decoder(predictor, examples: list[AdaptationExample], recipe: FinetuneRecipe = FinetuneRecipe(),
                     log: Callable[[str], None] | None = None, cancel: Callable[[], bool] | None = None,
                     resume: FinetuneState | None = None,
                     on_checkpoint: Callable[[FinetuneState], None] | None = None,
                     checkpoint_every: int = CHECKPOINT_EVERY) -> FinetunedDecoder:
    """Fine-tune a copy of ``predictor``'s SAM decoder on ``examples`` (see the module).
    ``on_checkpoint`` receives the training's state every ``checkpoint_every`` steps, at the end of
    each phase and when cancelled; ``resume`` goes on from such a state (same examples and recipe:
    the caller checks), with the same result as a run never stopped."""
    require_sam_decoder(predictor, "A project decoder is fine-tuned from")
    if not examples:
        raise InputError("No examples to fine-tune a decoder on.")
    started = time.perf_counter()
    sam = predictor.sam
    image_size = int(sam.image_encoder.img_size)
    frames = [example_on_frame(e, image_size) for e in examples]
    features = [e.embedding.features.detach().to("cpu", torch.float32).reshape(1, *e.embedding.features.shape[-3:])
                for e in examples]
    image_pe = sam.prompt_encoder.get_dense_pe().detach().to("cpu", torch.float32)
    t = time.perf_counter()
    # zero-shot states of the start (for AUTO, of every base: the one needing fewest clicks starts)
    start, states, base_scores = choose_base(predictor, examples, recipe, cancel, log)
    base, kind = start.module, start.kind
    lr, epochs, distill = recipe.settings_for(start)
    report_base = {"base": start.name or kind, "base_noc85": base_scores,
                   "settings": {"lr": lr, "epochs": epochs, "distill": distill}}
    if log is not None and recipe.base == AUTO:
        log(f"fine-tuning: starting from {start.name or kind} (NoC@85 on the training objects: "
            + ", ".join(f"{name} {value:.2f}" for name, value in base_scores.items()) + ")")
    decoder = copy.deepcopy(base).to("cpu", torch.float32)
    for parameter in decoder.parameters():
        parameter.requires_grad_(True)
    anchor = {name: p.detach().clone() for name, p in decoder.named_parameters()}
    teacher = copy.deepcopy(base).to("cpu", torch.float32).eval() if distill else None
    rng = np.random.default_rng([recipe.seed, len(examples)])
    report = {"objects": len(examples), "recipe": recipe.as_dict(), "resumed_at": None, "states": [], **report_base}
    phase, done, optimizer_state, losses, round_starts = 0, 0, None, [], []
    if resume is not None:
        decoder.load_state_dict(resume.decoder)
        rng.bit_generator.state = resume.rng
        phase, done, optimizer_state, losses = resume.phase, resume.steps_done, resume.optimizer, list(resume.losses)
        round_starts = list(resume.round_starts)
        report["resumed_at"] = {"phase": phase, "steps_done": done}
        if log is not None:
            log(f"fine-tuning: resuming at step {done} of phase {phase}")
    # the start's zero-shot states (above), then each DAgger round's begun so far, clicked with the
    # decoder of its time: the same in every run, so a resumed training clicks them again

    def add_round_states(clicking: torch.nn.Module) -> None:
        nonlocal states
        more = collect_states(predictor, clicking, examples, recipe, cancel, kind, log)
        states = [a + b for a, b in zip(states, more)]

    for round_ in range(phase):
        clicking = copy.deepcopy(decoder)
        if round_ < len(round_starts):
            clicking.load_state_dict(round_starts[round_])
        add_round_states(clicking)
    report["simulate_s"] = time.perf_counter() - t

    def weights() -> dict:
        return {k: v.detach().clone() for k, v in decoder.state_dict().items()}

    def checkpoint(phase_: int, steps_done: int, optimizer) -> None:
        if on_checkpoint is not None:
            on_checkpoint(FinetuneState(weights(), None if optimizer is None else optimizer.state_dict(),
                                        phase_, steps_done, list(losses), rng.bit_generator.state,
                                        list(round_starts)))

    def run_phase(phase_: int, steps: int) -> None:
        nonlocal done, optimizer_state
        pool = [(i, j) for i, s in enumerate(states) for j in range(len(s))]
        if not pool:
            raise InputError("No training states: none of the objects could be clicked.")
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        decoder.train()
        progress = _Progress(log, f"fine-tuning: phase {phase_}, steps")
        for step in range(done, steps):
            if cancel is not None and cancel():
                checkpoint(phase_, step, optimizer)
                break
            i, j = pool[int(rng.integers(len(pool)))]
            loss, mask_loss = _step_loss(decoder, sam, features[i], image_pe, states[i][j], *frames[i], anchor,
                                         recipe.l2sp, teacher, distill)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the decoder's loss became {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(mask_loss)
            if (step + 1) % max(int(checkpoint_every), 1) == 0 or step + 1 == steps:
                checkpoint(phase_, step + 1, optimizer)
            progress(step + 1, steps)
        decoder.eval()
        done, optimizer_state = 0, None

    with torch.inference_mode(False), torch.enable_grad():
        for phase_ in range(phase, int(recipe.dagger_rounds) + 1):
            if cancel is not None and cancel():
                break
            if phase_ > 0 and not (resume is not None and phase_ == phase):
                t = time.perf_counter()
                round_starts.append(weights())
                add_round_states(copy.deepcopy(decoder))
                report["simulate_s"] += time.perf_counter() - t
            count = sum(len(s) for s in states)
            report["states"].append(count)
            steps = int(round(epochs * count)) if phase_ == 0 else int(round(epochs * count / 2))
            t = time.perf_counter()
            run_phase(phase_, steps)
            if log is not None:
                log(f"fine-tuning: phase {phase_}: {count} states, {steps} steps in {time.perf_counter() - t:.0f} s, "
                    f"loss {np.mean(losses[:20]) if losses else float('nan'):.4f} -> "
                    f"{np.mean(losses[-20:]) if losses else float('nan'):.4f}")
    for parameter in decoder.parameters():
        parameter.requires_grad_(False)
    decoder = decoder.to(predictor.device).eval()
    report["steps"] = len(losses)
    report["first_loss"] = float(np.mean(losses[:20])) if losses else None
    report["last_loss"] = float(np.mean(losses[-20:])) if losses else None
    report["train_s"] = time.perf_counter() - started
    return FinetunedDecoder(decoder, DecoderChoice(kind, decoder, "training", True, name="fine-tuned"), report)


def save_finetuned_decoder(path, model, decoder: torch.nn.Module, metrics: dict | None = None,
                           config: dict | None = None, provenance: dict | None = None, kind: str = "sam"):
    """Write ``decoder`` (float32; a ``kind`` decoder) as a decoder checkpoint for ``model``;
    atomic. ``provenance`` (tissue, training_data, verdict, ...) goes into the metadata, where the
    picker reads it."""
    from ..models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint

    metadata = decoder_metadata(kind, model.name, model.weights_hash, SCENARIO, True, metrics, config)
    metadata["mask_outputs"] = "multi"
    metadata.update(dict(provenance or {}))
    return save_decoder_checkpoint(path, decoder, metadata)

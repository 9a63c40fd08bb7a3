"""A decoder trained on a project's own objects, judged on slides it never saw.

The project's objects (``training.project_store``) are split by slide (``project_split``: the
slides accepted last are held out; with one slide, its last-accepted objects), a decoder is trained
on the rest by a recipe (``training.recipes``; by default SAM's decoder fine-tuned,
``training.decoder_finetune``) from the stored embeddings (no encoder runs),
and both zero-shot SAM and the new decoder re-click every held-out object with the benchmark's
clicker (``held_out_check``: NoC@85 within 10 clicks). The decoder file records what it was
trained on (classes, objects, slides, date) and those held-out figures, and says whether it is
better than SAM there; one that is not is still written, labelled so, and never meant as a default.

A training stopped before it ends (cancelled, napari closed, a crash, a full disk) leaves its last
state beside the decoder file (``training_state_file``, rewritten atomically every
few dozen steps); training the same project into the same file again goes
on from there when the objects, the model and the recipe are the same, and starts afresh (the old
state replaced) when they are not. The state is removed once the decoder is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .decoder_finetune import FinetuneRecipe
from .held_out_check import check_held_out, mean_clicks
from .project_split import HELD_OUT_FRACTION, split_by_slide
from .project_store import ProjectStore
from .recipes import DecoderRecipe
from .reclick import GATE_IOU, GATE_MAX_CLICKS

BETTER = "better than zero-shot SAM on its held-out objects"
NOT_BETTER = "not better than zero-shot SAM on its held-out objects: kept, never offered as the default"


@dataclass
class ProjectDecoder:
    """What ``train_from_project`` wrote and measured."""

    path: Path
    better: bool
    held_out: dict  # NoC and mean IoU of SAM and of the new decoder on the held-out objects
    provenance: dict  # what it was trained on, as the checkpoint records it
    report: dict = field(default_factory=dict)  # the training's own report (seconds, steps, losses)

    @property
    def verdict(self) -> str:
        return BETTER if self.better else NOT_BETTER


STATE_SUFFIX = ".training-state.pt"


def training_state_file(out: str | Path) -> Path:
    """Where the training of the decoder file ``out`` keeps its state until the file is written."""
    out = Path(out)
    return out.with_name(out.stem + STATE_SUFFIX)


def _fingerprint(split, predictor, recipe: DecoderRecipe) -> str:
    """What a saved state must have been trained on to be resumed: the objects on each side, the
    model's weights, the recipe."""
    parts = {"training": sorted(o.entry for o in split.training), "held_out": sorted(o.entry for o in split.held_out),
             "weights": predictor.model.weights_hash, "recipe": recipe.as_dict()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _saved_state(path: Path, fingerprint: str, recipe: DecoderRecipe, log):
    """The state saved at ``path`` if it belongs to this training, else None (told in the log)."""
    import torch

    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("fingerprint") != fingerprint:
            log(f"{path.name} is the state of a training on other objects or settings: starting afresh.")
            return None
        return recipe.state_from_dict(data["state"])
    except Exception as err:  # noqa: BLE001 - a damaged state costs a fresh start, never a failure
        log(f"{path.name} cannot be read ({type(err).__name__}): starting afresh.")
        return None


def _keep_state(path: Path, fingerprint: str, log):
    """An ``on_checkpoint`` that writes the state to ``path`` atomically; a full disk is told once
    and the training goes on (the previous state stays whole)."""
    import torch

    failed = []

    def keep(state) -> None:
        try:
            with atomic_path(path) as tmp:
                torch.save({"fingerprint": fingerprint, "state": state.as_dict()}, tmp)
        except (OSError, InputError) as err:  # a full disk (``DiskFullError``), a folder not writable
            if not failed:
                log(f"the training's state could not be saved ({err}); it goes on without.")
            failed.append(err)

    return keep


def train_from_project(project: str | Path, out: str | Path, predictor, recipe: DecoderRecipe | None = None,
                       held_out_fraction: float = HELD_OUT_FRACTION, max_clicks: int = GATE_MAX_CLICKS, name: str | None = None,
                       log: Callable[[str], None] | None = print,
                       cancel: Callable[[], bool] | None = None, resume: bool = True) -> ProjectDecoder:
    """Train a decoder by ``recipe`` for ``predictor`` (SAM's own decoder) on the objects of ``project``,
    judge it on the held-out ones against zero-shot SAM and write it to ``out`` (atomic). Only the
    objects embedded by ``predictor``'s model count. ``InputError`` (nothing written) for a folder
    that is no project, a project without objects of this model, or too few objects to hold any out.
    With ``resume`` a state left by a stopped training of the same objects goes on (see the module)."""
    log = log or (lambda message: None)
    recipe = recipe or FinetuneRecipe()
    store = ProjectStore(project)
    objects = store.objects()
    if not objects:
        raise InputError(f"The project {project} holds no objects yet: accept objects with 'Keep my accepted "
                         "objects as training examples' on, or import annotations (napari-sam-histo project import).")
    usable = [o for o in objects if store.embedded_with(o, predictor)]
    if not usable:
        models = sorted({o.model for o in objects})
        raise InputError(f"No object of the project {project} was embedded by {predictor.model.name} (its objects "
                         f"are {', '.join(models)}'s): train with that model, or import the annotations again.")
    if len(usable) < len(objects):
        log(f"{len(objects) - len(usable)} of {len(objects)} objects were embedded by another model; left out.")
    split = split_by_slide(usable, held_out_fraction, project=project)
    training = store.examples(split.training)
    held_out = store.examples(split.held_out)
    trained_slides = len({o.slide.identity for o in split.training})
    log(f"training on {len(split.training)} objects ({len(training)} tiles) of "
        f"{trained_slides} slide(s); holding out {len(split.held_out)} "
        f"({', '.join(split.held_out_slides)}, {split.by})")
    started = time.perf_counter()
    state_path = training_state_file(out)
    fingerprint = _fingerprint(split, predictor, recipe)
    saved = _saved_state(state_path, fingerprint, recipe, log) if resume else None
    trained = recipe.train(predictor, training, log=log, cancel=cancel, resume=saved,
                           on_checkpoint=_keep_state(state_path, fingerprint, log))
    if cancel is not None and cancel():
        raise InputError(f"Training was cancelled; no decoder was written. Training {Path(out).name} again "
                         f"goes on from where it stopped.")
    from ..engine.predictor import Predictor

    mine = Predictor(predictor.model, trained.choice, cache=predictor.cache, precision=predictor.precision)
    log(f"judging the new decoder: clicking the {len(held_out)} held-out objects with it and with zero-shot SAM")
    check = check_held_out(predictor, mine, held_out, max_clicks)
    figures = {**check.figures(), "slides": split.held_out_slides, "by": split.by}
    better = check.better
    classes = sorted({o.class_name for o in split.training})
    start = trained.report.get("base", "sam")  # the decoder the training started from (a recipe's report)
    if start != "sam":  # a shipped decoder as it is: fine-tuning it may have cost more than it gained
        from ..models.decoders import choose_decoder

        shipped = Predictor(predictor.model, choose_decoder(predictor.model, start), cache=predictor.cache,
                            precision=predictor.precision)
        start_noc, _ = mean_clicks(shipped, held_out, max_clicks)
        figures.update(start=start, start_noc=start_noc)
    provenance = {"name": name or Path(out).stem, "project": str(Path(project).resolve()),
                  "tissue": f"this project's {', '.join(classes)}",
                  "training_data": f"{len(split.training)} objects of {trained_slides} slide(s) of the project "
                                   f"{Path(project).name}"
                                   + ("" if start == "sam" else f", starting from the shipped {start} decoder"),
                  "started_from": start, "classes": classes, "objects": len(split.training),
                  "slides": sorted({o.slide.name for o in split.training}),
                  "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "held_out": figures, "verdict": BETTER if better else NOT_BETTER}
    path = trained.save(out, predictor.model, metrics=figures, config=recipe.as_dict(), provenance=provenance)
    state_path.unlink(missing_ok=True)
    report = {**trained.report, "total_s": time.perf_counter() - started}
    log(f"held out ({figures['objects']} objects): NoC@{GATE_IOU:.2f} SAM {figures['sam_noc']:.2f}, this decoder "
        f"{figures['decoder_noc']:.2f} -> {BETTER if better else NOT_BETTER}")
    if figures.get("start_noc", np.inf) < figures["decoder_noc"]:
        log(f"the shipped {start} decoder as it is needs fewer clicks on the held-out objects "
            f"({figures['start_noc']:.2f}): choose '{start}' in the decoder picker rather than this one")
    log(f"wrote {path} ({report['total_s']:.0f} s)")
    return ProjectDecoder(Path(path), better, figures, provenance, report)

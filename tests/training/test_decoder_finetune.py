"""The fine-tuned project decoder (SAM's decoder trained on the states of every click): it learns,
stays a plain SAM decoder that loads where decoders are chosen, resumes bit for bit, and refuses
what it cannot train on (tiny random SAM: mechanics only)."""

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import InputError
from napari_sam_histo.models.decoder_checkpoint import decoder_file_note, read_decoder_checkpoint
from napari_sam_histo.models.decoders import DecoderChoice, build_decoder_from_checkpoint, choose_decoder
from napari_sam_histo.training.decoder_finetune import (
    FinetuneRecipe,
    FinetuneState,
    collect_states,
    fewer_clicks_p,
    finetune_decoder,
    mask_losses,
)
from napari_sam_histo.training.examples import AdaptationExample

DISC_EXAMPLES = 3  # the ``examples`` fixture (conftest.py)
SMALL = FinetuneRecipe(lr=1e-3, epochs=3, l2sp=0.0, max_clicks=3, dagger_rounds=1, seed=0)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_states_are_every_prompt_the_decoder_was_given(predictor, examples):
    states = collect_states(predictor, predictor.sam.mask_decoder, examples[:1], SMALL)[0]
    assert len(states) >= 1 and states[0].multimask and states[0].mask is None  # the first click: three masks
    assert [len(s.points) for s in states[:2]] == sorted(len(s.points) for s in states[:2])
    later = [s for s in states if not s.multimask]
    assert all(s.mask is not None and s.mask.shape == (256, 256) for s in later if len(s.points) > 1)


def test_a_training_says_what_it_is_doing_while_it_clicks_and_fits(predictor, examples, monkeypatch):
    """Progress lines for the dock's panel: the objects clicked and the steps fitted, at most one a
    ``PROGRESS_EVERY_S`` besides the last of each."""
    import napari_sam_histo.training.decoder_finetune as finetune

    lines = []
    finetune_decoder(predictor, examples[:2], FinetuneRecipe(lr=1e-3, epochs=2, max_clicks=2), log=lines.append)
    clicking = [line for line in lines if "clicking the training objects with the sam decoder" in line]
    steps = [line for line in lines if "phase 0, steps" in line]
    assert clicking == ["fine-tuning: clicking the training objects with the sam decoder: 2 of 2"]  # the last only
    assert len(steps) == 1 and steps[0].endswith(" of " + steps[0].rsplit(" ", 1)[-1])
    monkeypatch.setattr(finetune, "PROGRESS_EVERY_S", 0.0)
    lines.clear()
    finetune_decoder(predictor, examples[:2], FinetuneRecipe(lr=1e-3, epochs=2, max_clicks=2), log=lines.append)
    assert [line.rsplit(": ", 1)[-1] for line in lines if "clicking the training objects" in line] == ["1 of 2",
                                                                                                      "2 of 2"]
    fitted = [line.rsplit(": ", 1)[-1] for line in lines if "phase 0, steps" in line]
    assert fitted[0].startswith("1 of ") and len(fitted) == int(fitted[0].split(" of ")[1])


def test_mask_losses_are_lowest_for_the_target_itself():
    target = torch.zeros(8, 8)
    target[2:6, 2:6] = 1
    valid = torch.ones(8, 8, dtype=torch.bool)
    logits = torch.stack([(target * 2 - 1) * 10, -(target * 2 - 1) * 10])
    losses = mask_losses(logits, target, valid)
    assert losses[0] < 0.05 < 1.5 < losses[1]


@pytest.mark.slow
def test_fine_tuning_learns_and_the_decoder_file_loads_as_a_sam_decoder(predictor, examples, tmp_path):
    lines = []
    trained = finetune_decoder(predictor, examples, SMALL, log=lines.append)
    assert trained.choice.kind == "sam" and trained.choice.trained
    first, dagger = trained.report["states"]  # zero-shot SAM's states; then those of one DAgger round added
    assert dagger > first > 0
    assert trained.report["steps"] == round(SMALL.epochs * first) + round(SMALL.epochs * dagger / 2)
    assert trained.report["last_loss"] < trained.report["first_loss"]
    assert any("phase 0" in line for line in lines) and any("phase 1" in line for line in lines)
    sam_weights = _weights(predictor.sam.mask_decoder)
    assert any(not torch.equal(v, sam_weights[k]) for k, v in _weights(trained.module).items())
    assert all(torch.equal(v, sam_weights[k]) for k, v in _weights(predictor.sam.mask_decoder).items())  # SAM untouched
    path = trained.save(tmp_path / "mine.pt", predictor.model, metrics={"noc@85": 1.0},
                        config=SMALL.as_dict(), provenance={"tissue": "test discs", "training_data": "3 objects"})
    metadata, _ = read_decoder_checkpoint(path)
    assert metadata["decoder_kind"] == "sam" and metadata["config"]["recipe"] == "finetune"
    assert decoder_file_note(path)[0] == "trained on test discs"
    loaded = build_decoder_from_checkpoint(predictor.model, path)
    assert all(torch.equal(v, _weights(trained.module)[k]) for k, v in _weights(loaded.module).items())
    assert choose_decoder(predictor.model, str(path)).kind == "sam"


@pytest.mark.slow
@pytest.mark.parametrize("phase", [0, 1])  # stopped in the first fit, or in the DAgger round
def test_a_stopped_fine_tuning_resumes_to_the_same_weights(predictor, examples, phase):
    recipe = FinetuneRecipe(lr=1e-2, epochs=2, l2sp=0.5, max_clicks=3, seed=4, dagger_rounds=1)
    straight = finetune_decoder(predictor, examples, recipe)
    saved = []

    def stop() -> bool:  # after the second checkpoint of the phase
        return bool(saved) and saved[-1]["phase"] == phase and saved[-1]["steps_done"] == 6

    trained = finetune_decoder(predictor, examples, recipe, cancel=stop,
                               on_checkpoint=lambda state: saved.append(state.as_dict()), checkpoint_every=3)
    assert trained.report["steps"] < straight.report["steps"]
    state = recipe.state_from_dict(saved[-1])
    assert isinstance(state, FinetuneState) and (state.phase, state.steps_done) == (phase, 6)
    assert len(state.round_starts) == phase  # the decoder that clicked the round's states
    resumed = finetune_decoder(predictor, examples, recipe, resume=state)
    assert resumed.report["resumed_at"] == {"phase": phase, "steps_done": 6}
    assert all(torch.equal(v, _weights(straight.module)[k]) for k, v in _weights(resumed.module).items())


def test_it_refuses_what_it_cannot_train(predictor, examples):
    with pytest.raises(InputError, match="No examples"):
        finetune_decoder(predictor, [], SMALL)
    empty = AdaptationExample(examples[0].embedding, np.zeros_like(np.asarray(examples[0].target, bool)))
    with pytest.raises(InputError, match="empty"):
        finetune_decoder(predictor, [empty], SMALL)
    for bad in ({"lr": 0.0}, {"epochs": -1}, {"l2sp": float("nan")}, {"max_clicks": 0}, {"stop_iou": 1.5}):
        with pytest.raises(InputError):
            FinetuneRecipe(**bad)
    modified = Predictor(predictor.model, choose_decoder(predictor.model, "modified", allow_untrained=True))
    with pytest.raises(InputError, match="SAM's own decoder"):
        finetune_decoder(modified, examples, SMALL)


@pytest.mark.slow
def test_fine_tuning_from_the_shipped_modified_decoder_keeps_its_architecture(predictor, examples, tmp_path,
                                                                             shipped_modified):
    recipe = FinetuneRecipe(lr=1e-3, epochs=1, max_clicks=2, base="modified")
    trained = finetune_decoder(predictor, examples[:2], recipe)
    assert trained.choice.kind == "modified" and trained.report["steps"] > 0
    after = _weights(trained.module)
    assert after.keys() == shipped_modified.keys()
    assert any(not torch.equal(v, shipped_modified[k]) for k, v in after.items())  # it learnt from its start
    path = trained.save(tmp_path / "mine.pt", predictor.model, config=recipe.as_dict())
    metadata, _ = read_decoder_checkpoint(path)
    assert metadata["decoder_kind"] == "modified" and metadata["config"]["base"] == "modified"
    loaded = choose_decoder(predictor.model, str(path))
    assert loaded.kind == "modified"
    assert all(torch.equal(v, after[k]) for k, v in _weights(loaded.module).items())


@pytest.mark.slow
def test_auto_starts_from_the_base_that_needs_fewer_clicks_on_the_training_objects(predictor, examples,
                                                                                  shipped_modified):
    lines = []
    trained = finetune_decoder(predictor, examples[:2], FinetuneRecipe(lr=1e-3, epochs=1, max_clicks=2, base="auto"),
                               log=lines.append)
    scores = trained.report["base_noc85"]
    assert set(scores) == {"sam", "modified"}
    assert trained.report["base"] in ("sam", "modified")
    if scores["modified"] >= scores["sam"]:
        assert trained.report["base"] == "sam"
    assert trained.choice.kind == trained.report["base"]
    assert any("starting from" in line for line in lines)


def test_fewer_clicks_needs_more_than_chance():
    assert fewer_clicks_p([3, 3], [3, 3]) == 1.0  # every object ties
    assert fewer_clicks_p([1] * 5, [5] * 5) == pytest.approx(1 / 32)  # all five better
    assert fewer_clicks_p([9, 9, 9, 20, 14], [14] * 5) > 0.05  # three better, one worse: chance
    big_wins = [2] * 13 + [9] * 8
    assert fewer_clicks_p(big_wins, [12] * 13 + [8] * 8) < 0.05  # 13 objects 10 clicks fewer, 8 one more
    assert fewer_clicks_p([20] * 10, [1] * 10) == pytest.approx(1.0, abs=1e-3)


def test_auto_without_a_shipped_decoder_starts_from_sam(predictor, examples):
    trained = finetune_decoder(predictor, examples[:1], FinetuneRecipe(lr=1e-3, epochs=1, max_clicks=1, base="auto"))
    assert trained.report["base"] == "sam" and set(trained.report["base_noc85"]) == {"sam"}


def test_a_base_that_is_not_shipped_or_not_known_is_refused(predictor, examples):
    from napari_sam_histo.errors import CheckpointError

    with pytest.raises(InputError, match="base 'md'"):
        FinetuneRecipe(base="md")
    with pytest.raises(CheckpointError, match="modified decoder"):  # none ships for the tiny model
        finetune_decoder(predictor, examples[:1], FinetuneRecipe(max_clicks=1, base="modified"))


@pytest.mark.parametrize("sam, modified, chosen", [
    ([5, 5, 5, 5, 5], [1, 1, 1, 1, 1], "modified"),  # better on all five
    ([12] * 13 + [8] * 8, [2] * 13 + [9] * 8, "modified"),  # far better on 13, a click worse on 8
    ([14, 14, 14, 14, 14], [9, 9, 9, 20, 14], "sam"),  # lower mean, but 3 better and 1 worse: chance
    ([20] * 10, [20] * 9 + [12], "sam"),  # one object reached: chance
])
def test_auto_starts_from_a_shipped_decoder_only_where_it_is_better_on_more_objects_than_chance(
        predictor, examples, monkeypatch, sam, modified, chosen):
    import napari_sam_histo.training.decoder_finetune as finetune

    clicks = {"sam": sam, "modified": modified}

    def clicked(predictor_, module, kind, examples_, recipe, cancel=None, progress=None):  # IoU 0.9 at the
        # object's NoC
        return [[] for _ in clicks[kind]], [[0.5] * (n - 1) + [0.9] for n in clicks[kind]]

    monkeypatch.setattr(finetune, "_click_examples", clicked)
    monkeypatch.setattr(finetune, "base_decoder", lambda model, name: finetune.DecoderChoice(name, None, "", True, name))
    start, _, scores = finetune.choose_base(predictor, examples * 4, FinetuneRecipe(base="auto"))
    assert start.name == chosen and scores == {"sam": np.mean(sam), "modified": np.mean(modified)}


@pytest.mark.slow
def test_distillation_keeps_the_start_decoders_answer_to_corrective_clicks(predictor, examples):
    """With ``distill`` the corrective clicks' masks stay closer to the start decoder's own than
    without it; the first click's still learn."""
    recipe = FinetuneRecipe(lr=1e-2, epochs=3, max_clicks=3, seed=0)
    states = collect_states(predictor, predictor.sam.mask_decoder, examples, recipe)
    corrective = [(i, s) for i, object_states in enumerate(states) for s in object_states if len(s.labels) > 1]
    assert corrective

    def masks(module):
        out = []
        image_pe = predictor.sam.prompt_encoder.get_dense_pe()
        with torch.no_grad():
            for i, s in corrective:
                mask = None if s.mask is None else s.mask.float()[None, None]
                sparse, dense = predictor.sam.prompt_encoder(points=(s.points[None], s.labels[None]), boxes=None,
                                                             masks=mask)
                features = examples[i].embedding.features.reshape(1, *examples[i].embedding.features.shape[-3:])
                out.append(torch.sigmoid(module(image_embeddings=features.float(), image_pe=image_pe,
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=False)[0][0]))
        return torch.cat(out)

    start = masks(predictor.sam.mask_decoder)
    drift = {w: float((masks(finetune_decoder(predictor, examples, FinetuneRecipe(
        lr=1e-2, epochs=3, max_clicks=3, seed=0, distill=w)).module) - start).abs().mean()) for w in (0.0, 10.0)}
    assert drift[10.0] < 0.5 * drift[0.0]
    with pytest.raises(InputError):
        FinetuneRecipe(distill=-1.0)


def test_a_start_from_a_shipped_decoder_has_settings_of_its_own():
    """Gentler settings for a decoder already trained on histology; a report that predates them
    reads as it ran (the shipped start with SAM's settings, no distillation)."""
    recipe = FinetuneRecipe()
    sam = DecoderChoice("sam", torch.nn.Identity(), "checkpoint", True, name="sam")
    shipped = DecoderChoice("modified", torch.nn.Identity(), "resources", True, name="modified")
    assert recipe.settings_for(sam) == (recipe.lr, recipe.epochs, recipe.distill) == (3e-5, 2.0, 0.0)
    assert recipe.settings_for(shipped) == (1e-5, 1.0, 1.0)
    older = {k: v for k, v in FinetuneRecipe(lr=2e-5, base="auto").as_dict().items()
             if not k.startswith("shipped_") and k != "distill"}
    completed = FinetuneRecipe.completed(older)
    assert (completed["shipped_lr"], completed["shipped_epochs"], completed["shipped_distill"]) == (2e-5, 2.0, 0.0)
    assert completed["distill"] == 0.0 and completed["base"] == "auto"
    # from SAM's decoder alone a shipped start's settings never apply: runs differing there are one recipe
    sam_only = FinetuneRecipe(base="sam").as_dict()
    older_sam_only = {k: v for k, v in sam_only.items() if not k.startswith("shipped_")}
    assert FinetuneRecipe.completed(sam_only) == FinetuneRecipe.completed(older_sam_only)
    assert not any(k.startswith("shipped_") for k in FinetuneRecipe.completed(sam_only))
    # a report from before a start could be chosen started from SAM's decoder, whatever the default is now
    before_bases = {k: v for k, v in older_sam_only.items() if k not in ("base", "distill")}
    assert FinetuneRecipe.completed(before_bases) == FinetuneRecipe.completed(sam_only)
    for bad in ({"shipped_lr": 0.0}, {"shipped_epochs": float("inf")}, {"shipped_distill": -1.0}):
        with pytest.raises(InputError):
            FinetuneRecipe(**bad)

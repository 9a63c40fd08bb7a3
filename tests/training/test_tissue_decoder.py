"""The project decoder (SAM's decoder + a tissue head) and its CPU recipe: an untrained head is
exactly SAM, a trained one round-trips through a checkpoint and loads where decoders are chosen,
training is deterministic and learns (tiny random SAM: mechanics only)."""

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import CheckpointError, InputError
from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint, save_decoder_checkpoint
from napari_sam_histo.models.decoders import DecoderChoice, build_decoder_from_checkpoint, choose_decoder
from napari_sam_histo.models.tissue_decoder import KIND, TissueDecoder, TissueHead, save_tissue_decoder
from napari_sam_histo.training.examples import AdaptationExample
from napari_sam_histo.training.tissue_training import TissueRecipe, on_frame, train_tissue_head

DISC_EXAMPLES = 4  # the ``examples`` fixture (conftest.py)
SMALL = TissueRecipe(steps=30, batch_size=4, max_clicks=3, dagger_rounds=1, dagger_steps=10, width=8, seed=0)


@pytest.fixture(scope="module")
def trained(predictor, examples):
    return train_tissue_head(predictor, examples, SMALL)


def _decode(predictor, embedding, multimask, clicks=2):
    points, labels = np.array([[30.0, 40.0], [60.0, 20.0], [50.0, 50.0]]), np.array([1, 0, 1])
    return predictor.decode(embedding, points[:clicks], labels[:clicks], mask_input=None, multimask=multimask)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_untrained_tissue_decoder_is_exactly_sam(tiny_model, examples, precision):
    sam = Predictor(tiny_model, "sam", precision=precision)
    head = TissueHead(tiny_model.sam.mask_decoder.transformer_dim, width=8)
    module = TissueDecoder(tiny_model.sam.mask_decoder, head, corrected_clicks=None).eval()  # at every click
    tissue = Predictor(tiny_model, DecoderChoice(KIND, module, "untrained", True), precision=precision)
    for multimask in (True, False):
        a, b = _decode(sam, examples[0].embedding, multimask), _decode(tissue, examples[0].embedding, multimask)
        assert torch.equal(a.low_res_logits, b.low_res_logits)
        assert torch.equal(a.iou_predictions, b.iou_predictions)


@pytest.mark.slow
def test_training_changes_the_masks_keeps_sams_ranking_and_is_deterministic(predictor, examples, trained):
    assert trained.choice.kind == KIND and trained.choice.trained
    report = trained.report
    assert report["steps"] == SMALL.steps + SMALL.dagger_steps
    assert len(report["states"]) == 2 and report["states"][1] > report["states"][0] > 0
    assert report["train_s"] > 0 and report["recipe"]["width"] == 8
    tissue = Predictor(predictor.model, trained.choice, cache=predictor.cache, precision="fp32")
    a, b = _decode(predictor, examples[0].embedding, True, 1), _decode(tissue, examples[0].embedding, True, 1)
    assert not torch.equal(a.low_res_logits, b.low_res_logits)
    assert torch.equal(a.iou_predictions, b.iou_predictions)  # SAM's IoU ranking of its candidates
    # the corrective clicks are SAM's: from the second click on the head adds nothing (by default)
    for clicks in (2, 3):
        assert torch.equal(_decode(predictor, examples[0].embedding, False, clicks).low_res_logits,
                           _decode(tissue, examples[0].embedding, False, clicks).low_res_logits)
    every = Predictor(predictor.model, DecoderChoice(KIND, TissueDecoder(predictor.sam.mask_decoder, trained.head,
                                                                         corrected_clicks=None).eval(), "test", True),
                      cache=predictor.cache, precision="fp32")
    assert not torch.equal(_decode(predictor, examples[0].embedding, False, 2).low_res_logits,
                           _decode(every, examples[0].embedding, False, 2).low_res_logits)
    again = train_tissue_head(predictor, examples, SMALL)
    for p, q in zip(trained.head.parameters(), again.head.parameters()):
        assert torch.equal(p, q)
    # the base model's own decoder is never changed
    assert all(not p.requires_grad for p in trained.head.parameters())


@pytest.mark.slow
def test_the_fit_lowers_the_loss_on_the_training_objects(predictor, examples):
    longer = train_tissue_head(predictor, examples, TissueRecipe(steps=120, batch_size=4, max_clicks=3,
                                                                 dagger_rounds=0, width=8, lr=3e-3, seed=0))
    assert longer.report["last_loss"] < 0.8 * longer.report["first_loss"]
    untrained = train_tissue_head(predictor, examples, TissueRecipe(steps=0, max_clicks=3, dagger_rounds=0, width=8))
    assert untrained.report["last_loss"] is None and untrained.report["steps"] == 0


def test_a_checkpoint_round_trips_and_loads_where_decoders_are_chosen(tmp_path, predictor, examples, trained):
    path = save_tissue_decoder(tmp_path / "lab.pt", predictor.model, trained.head, metrics={"noc@85": 3.0},
                               provenance={"objects": 4})
    metadata, state = read_decoder_checkpoint(path)  # torch.load(weights_only=True)
    assert metadata["decoder_kind"] == "sam" and metadata["tissue_head"]["objects"] == 4
    assert all(k.startswith("tissue_head.") for k in state)
    for choice in (choose_decoder(predictor.model, str(path)), build_decoder_from_checkpoint(predictor.model, path)):
        assert choice.kind == KIND and choice.trained and choice.weights_sha256.startswith("sha256:")
        assert isinstance(choice.module, TissueDecoder)
        assert choice.module.sam.decoder is predictor.model.sam.mask_decoder  # the model's own, not a copy
        loaded = Predictor(predictor.model, choice, cache=predictor.cache, precision="fp32")
        direct = Predictor(predictor.model, trained.choice, cache=predictor.cache, precision="fp32")
        assert loaded.decoder.module.corrected_clicks == 1
        for multimask in (True, False):
            assert torch.equal(_decode(loaded, examples[1].embedding, multimask, 1).low_res_logits,
                               _decode(direct, examples[1].embedding, multimask, 1).low_res_logits)
    assert "tissue architecture" in loaded.provenance.text


def test_a_tissue_checkpoint_that_does_not_fit_is_refused_with_its_name(tmp_path, predictor, trained):
    path = save_tissue_decoder(tmp_path / "lab.pt", predictor.model, trained.head)
    metadata, state = read_decoder_checkpoint(path)
    state["tissue_head.out.weight"] = torch.zeros(1, 3, 1, 1)
    save_decoder_checkpoint(tmp_path / "bad.pt", state, metadata)
    with pytest.raises(CheckpointError, match="bad.pt.*tissue head does not load"):
        choose_decoder(predictor.model, str(tmp_path / "bad.pt"))
    metadata["base_weights_hash"] = "sha256:another"
    save_decoder_checkpoint(tmp_path / "other.pt", read_decoder_checkpoint(path)[1], metadata)
    with pytest.raises(CheckpointError, match="trained for base model"):
        choose_decoder(predictor.model, str(tmp_path / "other.pt"))


def test_a_tissue_head_trains_only_over_sams_own_decoder(tiny_model, examples):
    modified = Predictor(tiny_model, "modified", allow_untrained=True, precision="fp32")
    with pytest.raises(InputError, match="SAM's own decoder"):
        train_tissue_head(modified, examples, SMALL)


def test_bad_examples_and_settings_are_refused_with_a_message(predictor, examples):
    with pytest.raises(InputError, match="No examples"):
        train_tissue_head(predictor, [], SMALL)
    empty = AdaptationExample(examples[0].embedding, np.zeros((96, 96), bool))
    with pytest.raises(InputError, match="empty"):
        train_tissue_head(predictor, [empty], SMALL)
    wrong = AdaptationExample(examples[0].embedding, np.ones((10, 12), bool))
    with pytest.raises(InputError, match="12x10"):
        train_tissue_head(predictor, [wrong], SMALL)
    with pytest.raises(InputError, match="lr"):
        TissueRecipe(lr=0)
    with pytest.raises(InputError, match="corrected_clicks"):
        TissueRecipe(corrected_clicks=0)


def test_the_target_on_sams_frame_leaves_the_padding_out():
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # the left half
    frame, valid = on_frame(mask, (512, 1024), (100, 200), 1024)
    assert frame.shape == (256, 256) and valid[:128].all() and not valid[128:].any()
    assert float(frame[:128, :120].min()) == 1.0 and float(frame[:128, 136:].max()) == 0.0


@pytest.mark.parametrize("stop_after", [2, 4])  # checkpoints 2 and 4: in the first fit, in the DAgger round
def test_a_stopped_training_resumes_from_its_checkpoint_to_the_same_head(tmp_path, predictor, examples, trained,
                                                                         stop_after):
    from napari_sam_histo.training.tissue_training import TrainingState

    saved = []

    def on_checkpoint(state):
        torch.save(state.as_dict(), tmp_path / "state.pt")  # what a crash leaves on disk
        saved.append((state.phase, state.steps_done))

    with pytest.raises(KeyboardInterrupt):  # the process dies after checkpoint ``stop_after``
        def dying(state):
            on_checkpoint(state)
            if len(saved) == stop_after:
                raise KeyboardInterrupt

        train_tissue_head(predictor, examples, SMALL, on_checkpoint=dying, checkpoint_every=10)
    state = TrainingState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (state.phase, state.steps_done) == saved[-1] and state.phase == (0 if stop_after == 2 else 1)
    resumed = train_tissue_head(predictor, examples, SMALL, resume=state)
    assert resumed.report["resumed_at"] == {"phase": saved[-1][0], "steps_done": saved[-1][1]}
    for (name, a), b in zip(trained.head.state_dict().items(), resumed.head.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")
    assert resumed.report["steps"] == trained.report["steps"]


def test_a_state_of_another_training_is_refused(predictor, examples):
    states = []
    train_tissue_head(predictor, examples[:2], TissueRecipe(steps=10, max_clicks=2, width=8),
                      on_checkpoint=states.append, checkpoint_every=5)
    with pytest.raises(InputError, match="another training"):
        train_tissue_head(predictor, examples, SMALL, resume=states[-1])


def test_a_report_that_predates_a_setting_reads_with_its_default():
    older = {k: v for k, v in TissueRecipe(steps=50).as_dict().items() if k != "corrected_clicks"}
    completed = TissueRecipe.completed(older)
    assert completed["steps"] == 50
    assert completed["corrected_clicks"] == TissueRecipe().corrected_clicks

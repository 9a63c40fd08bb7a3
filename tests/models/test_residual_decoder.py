"""The residual decoder (SAM's frozen decoder + a trained correction) and the training pieces
that came with it: md trains a copy and infers what it trained, the float16 embedding store."""

import numpy as np
import pytest
import torch

from napari_sam_histo.models.decoders import DecoderChoice, SingleMaskDecoder
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.models.residual_decoder import ResidualMaskDecoder
from napari_sam_histo.training.trainer import Trainer

from ..training.test_training import _config


def _decode(predictor, image, points, labels, multimask):
    embedding = predictor.embed(image)
    return predictor.decode(embedding, np.array(points, float), np.array(labels), multimask=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_untrained_residual_decoder_is_exactly_sams(tiny_model, multimask):
    from napari_sam_histo.engine.predictor import Predictor

    residual = ResidualMaskDecoder.from_sam_decoder(tiny_model.sam.mask_decoder).eval()
    sam = Predictor(tiny_model, "sam", precision="fp32")
    ours = Predictor(tiny_model, DecoderChoice("residual", residual, "untrained", False), precision="fp32")
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    a = _decode(sam, image, [[10, 12], [30, 20]], [1, 0], multimask)
    b = _decode(ours, image, [[10, 12], [30, 20]], [1, 0], multimask)
    assert b.low_res_logits.shape == a.low_res_logits.shape == ((3 if multimask else 1), 256, 256)
    torch.testing.assert_close(b.low_res_logits, a.low_res_logits, rtol=0, atol=0)
    torch.testing.assert_close(b.iou_predictions, a.iou_predictions, rtol=0, atol=0)


def test_forward_best_is_the_corrected_candidate_sam_ranks_first(tiny_model):
    sam = tiny_model.sam
    residual = ResidualMaskDecoder.from_sam_decoder(sam.mask_decoder).eval()
    torch.nn.init.normal_(residual.correction.out.weight, std=0.1)  # a non-zero correction
    features = torch.randn(2, sam.mask_decoder.transformer_dim, 64, 64)
    sparse, dense = sam.prompt_encoder(points=(torch.rand(2, 1, 2) * 1024, torch.ones(2, 1, dtype=torch.long)),
                                       boxes=None, masks=None)
    pe = sam.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        best = residual.forward_best(features, pe.expand(2, -1, -1, -1), sparse, dense, multimask_output=True)
        for i in range(2):
            masks, iou = residual(features[i:i + 1], pe, sparse[i:i + 1], dense[i:i + 1], multimask_output=True)
            torch.testing.assert_close(best[i, 0], masks[0, int(iou[0].argmax())], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_residual_training_moves_only_the_correction_and_lowers_the_loss(patches_dir, tmp_path):
    model = random_model("tiny", "cpu")
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    trainer = Trainer(_config(patches_dir, tmp_path / "run", scenario="residual", lr=3e-3, max_extra_clicks=0),
                      model, log=lambda _: None)
    assert all(p.requires_grad is False for p in trainer.decoder.sam_decoder.parameters())
    trainer.precompute_embeddings()
    batch = trainer.train_patches[:2]
    losses = [trainer.train_step(batch, np.random.default_rng(0)) for _ in range(12)]
    assert losses[-1] < 0.9 * losses[0]
    for key, value in model.sam.state_dict().items():  # the base model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for key, value in trainer.decoder.sam_decoder.state_dict().items():  # and so is SAM's copy
        torch.testing.assert_close(value, before[f"mask_decoder.{key}"], rtol=0, atol=0)


def test_md_trains_a_copy_so_sams_own_decoder_stays_sams(patches_dir, tmp_path):
    model = random_model("tiny", "cpu")
    before = {k: v.clone() for k, v in model.sam.mask_decoder.state_dict().items()}
    trainer = Trainer(_config(patches_dir, tmp_path / "run", scenario="md", lr=3e-3, max_extra_clicks=0),
                      model, log=lambda _: None)
    trainer.precompute_embeddings()
    for _ in range(3):
        trainer.train_step(trainer.train_patches[:2], np.random.default_rng(0))
    assert trainer.decoder is not model.sam.mask_decoder
    changed = any(not torch.equal(v, before[k]) for k, v in trainer.decoder.state_dict().items())
    assert changed
    for key, value in model.sam.mask_decoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_md_checkpoint_answers_the_first_click_with_the_mask_it_trained(patches_dir, tmp_path):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint

    result = Trainer(_config(patches_dir, tmp_path / "run", scenario="md", epochs=1), random_model("tiny", "cpu"),
                     log=lambda _: None).run(show_progress=False)
    metadata, _ = read_decoder_checkpoint(result.best_path)
    assert metadata["mask_outputs"] == "single" and metadata["runtime"]["device"] == "cpu"
    predictor = Predictor(random_model("tiny", "cpu"), str(result.best_path), precision="fp32")
    assert isinstance(predictor.decoder.module, SingleMaskDecoder)
    image = np.zeros((48, 48, 3), np.uint8)
    first = _decode(predictor, image, [[24, 24]], [1], multimask=True)
    assert first.low_res_logits.shape[0] == 1  # token 0, not three untrained candidates


@pytest.mark.slow
def test_residual_run_with_embedding_store_validates_sam_first_and_reuses_embeddings(
        patches_dir, tmp_path):
    from napari_sam_histo.engine.predictor import Predictor

    store = tmp_path / "store"
    config = _config(patches_dir, tmp_path / "run", scenario="residual", epochs=1, embedding_store=str(store),
                     validate_start=True)
    result = Trainer(config, random_model("tiny", "cpu"), log=lambda _: None).run(show_progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.history[0]["loss"] is None and "val_noc" in result.history[0]
    entries = sorted(store.glob("*.zarr"))
    assert entries  # training and validation images, one float16 zarr each
    import zarr

    assert zarr.open_array(str(entries[0]), mode="r").dtype == np.float16
    again = Trainer(_config(patches_dir, tmp_path / "run2", scenario="residual", epochs=1, embedding_store=str(store)),
                    random_model("tiny", "cpu"), log=lambda _: None)
    again.precompute_embeddings()
    assert len(again._features) == len({p.sample.identity for p in again.train_patches})
    assert sorted(store.glob("*.zarr")) == entries  # nothing new was computed
    predictor = Predictor(random_model("tiny", "cpu"), str(result.best_path), precision="fp32")
    assert predictor.decoder.kind == "residual" and predictor.decoder.trained


def test_a_float16_store_gives_the_same_embedding_computed_or_read_back(tmp_path):
    from napari_sam_histo.engine.embedding_cache import Embedding, EmbeddingCache, EmbeddingKey

    key = EmbeddingKey("img", "whole:8x8", "tiny", "h", "p")
    features = torch.randn(1, 4, 8, 8) * 3.1415926
    computed = EmbeddingCache(store_dir=tmp_path, store_dtype="float16").get_or_compute(
        key, lambda: Embedding(features.clone(), (8, 8), (8, 8), 0.5))
    read_back = EmbeddingCache(store_dir=tmp_path, store_dtype="float16").get_or_compute(
        key, lambda: pytest.fail("the store should have held it"))
    assert not torch.equal(computed.features, features)  # rounded to float16 on the way in
    torch.testing.assert_close(read_back.features, computed.features, rtol=0, atol=0)
    assert read_back.encode_s == 0.5


def test_md_is_validated_as_its_checkpoint_runs_and_a_random_start_is_not_called_trained(
        patches_dir, tmp_path):
    from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint

    md = Trainer(_config(patches_dir, tmp_path / "md", scenario="md", epochs=0), random_model("tiny", "cpu"),
                 log=lambda _: None)
    assert isinstance(md._predictor().decoder.module, SingleMaskDecoder)
    modified = Trainer(_config(patches_dir, tmp_path / "mod", scenario="modified", epochs=0),
                       random_model("tiny", "cpu"), log=lambda _: None)
    metadata, _ = read_decoder_checkpoint(modified.save_best({"noc": 1.0}))
    assert metadata["trained"] is False  # epoch 0 of a modified run: random new layers
    residual = Trainer(_config(patches_dir, tmp_path / "res", scenario="residual", epochs=0),
                       random_model("tiny", "cpu"), log=lambda _: None)
    metadata, _ = read_decoder_checkpoint(residual.save_best({"noc": 1.0}))
    assert metadata["trained"] is True  # untrained residual == SAM: a usable decoder


def test_a_residual_checkpoint_keeps_sams_part_from_the_model_not_the_file(patches_dir, tmp_path):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint, save_decoder_checkpoint

    trainer = Trainer(_config(patches_dir, tmp_path / "run", scenario="residual", epochs=0),
                      random_model("tiny", "cpu"), log=lambda _: None)
    metadata, state = read_decoder_checkpoint(trainer.save_best({"noc": 1.0}))
    shipped = save_decoder_checkpoint(tmp_path / "half.pt", state, metadata, torch.float16)  # as shipped
    model = random_model("tiny", "cpu")
    module = Predictor(model, str(shipped), precision="fp32").decoder.module
    for key, value in module.sam_decoder.state_dict().items():  # float32, exactly the model's
        torch.testing.assert_close(value, model.sam.mask_decoder.state_dict()[key], rtol=0, atol=0)

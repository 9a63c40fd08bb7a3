"""The slide prior: a logistic read-out of the embedding fitted on accepted objects, added to a
decoder's logits (its fit, its cells, its wrapper, the adapter's use of it, its checkpoint)."""

import numpy as np
import pytest
import torch

from napari_sam_histo.adaptation.decoder_adapter import DecoderAdapter
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import CheckpointError
from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint, save_decoder_checkpoint
from napari_sam_histo.models.decoders import build_decoder_from_checkpoint
from napari_sam_histo.models.slide_prior import SlidePrior, SlidePriorDecoder, context_features, example_cells, fit_slide_prior
from napari_sam_histo.training.examples import AdaptationExample


def _features_and_mask(seed=0, size=64):
    """Embedding-like features whose channel 3 is high inside a square: a texture to learn."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size * 16, size * 16), bool)
    top, left = rng.integers(100, 400, 2)
    mask[top: top + 400, left: left + 400] = True
    features = torch.as_tensor(rng.normal(0, 1, (1, 256, size, size)), dtype=torch.float32)
    cell_mask = torch.as_tensor(mask[8::16, 8::16], dtype=torch.float32)
    features[0, 3] += 3 * cell_mask
    return features, mask


def test_the_fitted_prior_tells_the_accepted_texture_from_the_rest():
    rng = np.random.default_rng(0)
    cells, labels = zip(*(example_cells(*_features_and_mask(s), (1024, 1024), (1024, 1024), rng) for s in range(3)))
    prior = fit_slide_prior(torch.cat(cells), torch.cat(labels))
    features, mask = _features_and_mask(seed=9)
    logits = prior(features)[0, 0]
    inside = torch.as_tensor(mask[8::16, 8::16])
    interior = torch.nn.functional.max_pool2d((~inside).float()[None, None], 9, 1, 4)[0, 0] == 0  # away from the edge
    assert logits[interior].min() > 0 and logits[~inside].mean() < -1
    assert not any(p.requires_grad for p in prior.parameters())


def test_one_class_only_gives_no_prior():
    cells = torch.randn(50, 768)
    assert fit_slide_prior(cells, torch.ones(50)) is None
    assert fit_slide_prior(cells[:0], torch.ones(0)) is None


def test_cells_of_sams_padding_are_left_out_and_draws_are_bounded():
    features, _ = _features_and_mask()
    target = np.zeros((300, 600), bool)  # a wide tile: SAM's input is 512 x 1024, the rest is padding
    target[:, :300] = True
    cells, labels = example_cells(features, target, (512, 1024), (300, 600), np.random.default_rng(0), limit=10 ** 6)
    assert cells.shape == (32 * 64, 768) and labels.shape == (32 * 64,)
    assert labels.reshape(32, 64)[:, :31].all() and not labels.reshape(32, 64)[:, 33:].any()
    few, _ = example_cells(features, target, (512, 1024), (300, 600), np.random.default_rng(0), limit=100)
    assert few.shape == (100, 768)


def test_context_features_are_the_cell_and_its_neighbourhood_means():
    f = torch.zeros(2, 9, 9)
    f[0, 4, 4] = 9.0
    x = context_features(f)
    assert x.shape == (6, 9, 9)
    assert x[0, 4, 4] == 9 and x[2, 4, 4] == pytest.approx(1.0) and x[4, 4, 4] == pytest.approx(9 / 49)


def test_the_wrapper_adds_the_weighted_prior_and_is_the_decoder_at_weight_zero(tiny_model):
    decoder = tiny_model.sam.mask_decoder
    channels = tiny_model.sam.prompt_encoder.embed_dim
    prior = SlidePrior(channels)
    with torch.no_grad():
        prior.linear.bias.fill_(2.0)
    features = torch.randn(1, channels, 64, 64)
    pe = tiny_model.sam.prompt_encoder.get_dense_pe()
    sparse, dense = tiny_model.sam.prompt_encoder(points=(torch.tensor([[[100.0, 200.0]]]), torch.tensor([[1]])),
                                                  boxes=None, masks=None)
    args = {"image_embeddings": features, "image_pe": pe, "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense, "multimask_output": True}
    with torch.no_grad():
        base, base_iou = decoder(**args)
        same, _ = SlidePriorDecoder(decoder, prior, 0.0)(**args)
        shifted, iou = SlidePriorDecoder(decoder, prior, 0.25)(**args)
    assert torch.equal(same, base)
    assert torch.allclose(shifted - base, torch.full_like(base, 0.5), atol=1e-5) and torch.equal(iou, base_iou)


def _disc_examples(predictor, n, seed=0, size=128):
    """Accepted discs of one stain on a pale background (as test_adaptation's)."""
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        target = (yy - 50 - 3 * i) ** 2 + (xx - 60 - 2 * i) ** 2 < (20 + i) ** 2
        image = np.where(target[..., None], [120, 50, 150], [235, 200, 220]) + rng.normal(0, 8, (size, size, 3))
        out.append(AdaptationExample(predictor.embed(np.clip(image, 0, 255).astype(np.uint8)), target))
    return out


def test_the_adapter_judges_the_prior_alone_without_steps(tiny_model, monkeypatch):
    from napari_sam_histo.adaptation import decoder_adapter
    from napari_sam_histo.training.reclick import Reclick

    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    alone = DecoderAdapter(predictor, steps_per_object=0)
    none = DecoderAdapter(predictor, steps_per_object=0, prior_weight=0)
    monkeypatch.setattr(decoder_adapter, "reclick", lambda p, example: Reclick(5, 0.5) if p is predictor else Reclick(3, 0.6))
    for example in _disc_examples(predictor, 9):
        alone.add_example(example)
        none.add_example(example)
    assert none.update_gate() is False and none.state().base_noc is None  # nothing to judge
    assert alone.update_gate() is True and alone.state().steps == 0
    module = alone.active_predictor().decoder.module
    assert isinstance(module, SlidePriorDecoder) and module.weight == 0.25


def _gated_adapter(predictor, monkeypatch, passes=True, n=9):
    """An adapter whose gate (re-clicks mocked) has judged ``n`` examples: a third held out."""
    from napari_sam_histo.adaptation import decoder_adapter
    from napari_sam_histo.training.reclick import Reclick

    adapter = DecoderAdapter(predictor, steps_per_object=1, lr=1e-3)
    monkeypatch.setattr(decoder_adapter, "reclick",
                        lambda p, example: Reclick(5, 0.5) if p is predictor or not passes else Reclick(3, 0.6))
    examples = _disc_examples(predictor, n)
    for example in examples:
        adapter.add_example(example)
    while adapter.step() is not None:
        pass
    assert adapter.update_gate() is passes
    return adapter, examples


@pytest.mark.slow
def test_a_saved_prior_loads_back_and_a_foreign_one_is_refused(tiny_model, tmp_path, monkeypatch):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    adapter, examples = _gated_adapter(predictor, monkeypatch)
    path = adapter.save(tmp_path / "adapted.pt", slide="s.svs")
    metadata, state = read_decoder_checkpoint(path)
    assert metadata["slide_prior"]["weight"] == 0.25 and "slide_prior.linear.weight" in state
    loaded = build_decoder_from_checkpoint(tiny_model, path)
    assert isinstance(loaded.module, SlidePriorDecoder)
    points, labels = np.array([[60.0, 50.0]]), np.array([1])
    a = Predictor(tiny_model, loaded, cache=EmbeddingCache(), precision="fp32").decode(
        examples[0].embedding, points, labels).low_res_logits
    b = adapter.active_predictor().decode(examples[0].embedding, points, labels).low_res_logits
    assert torch.allclose(a, b, atol=1e-5)
    # adapting the saved decoder on the next slide fits that slide's own prior over its decoder
    again = DecoderAdapter(Predictor(tiny_model, loaded, cache=EmbeddingCache(), precision="fp32"), steps_per_object=1)
    assert not isinstance(again.decoder, SlidePriorDecoder)
    for name, change in (("foreign.pt", {"context": [1, 5]}), ("negative.pt", {"weight": -1.0}),
                         ("nan.pt", {"weight": float("nan")})):
        bad = {**metadata, "slide_prior": {**metadata["slide_prior"], **change}}
        save_decoder_checkpoint(tmp_path / name, state, bad)
        with pytest.raises(CheckpointError, match=name):
            build_decoder_from_checkpoint(tiny_model, tmp_path / name)


@pytest.mark.slow
def test_a_prior_the_gate_turned_down_is_not_saved(tiny_model, tmp_path, monkeypatch):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    adapter, _ = _gated_adapter(predictor, monkeypatch, passes=False)
    metadata, state = read_decoder_checkpoint(adapter.save(tmp_path / "adapted.pt"))
    assert "slide_prior" not in metadata and not any(k.startswith("slide_prior.") for k in state)


def test_another_accepted_object_on_the_tile_is_no_negative_and_held_out_cells_are_left_out(tiny_model):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    image = np.full((128, 128, 3), 200, np.uint8)
    embedding = predictor.embed(image)
    left, right, middle = (np.zeros((128, 128), bool) for _ in range(3))
    left[:, :40] = True
    right[:, 88:] = True
    middle[:, 56:72] = True
    adapter = DecoderAdapter(predictor, steps_per_object=0, hold_out_every=3)
    for target in (left, right, middle):  # the third (middle) is held out
        adapter.add_example(AdaptationExample(embedding, target))
    adapter._fit_prior()
    (cells, labels), = adapter.prior_fitter.cells.values()
    # one set of 1,024 cells drawn from the tile's 64 x 56 kept (the middle's 8 columns left out):
    # left (20 columns) and right (20) positive: 40/56 of them, not 20/56 as one object alone
    assert labels.shape == (1024,) and 0.64 < float(labels.mean()) < 0.79
    cells, labels = example_cells(embedding.features, left | right, embedding.input_size, embedding.original_size,
                                  np.random.default_rng(0), limit=10 ** 6, ignore=middle)
    assert labels.shape == (64 * 56,) and int(labels.sum()) == 64 * 40


@pytest.mark.slow
def test_a_prior_fitted_on_real_embeddings_finds_the_next_object(mobile_sam):
    """Behaviour, MobileSAM: fitted on three accepted discs of one stain, the prior's logits are
    higher inside a fourth disc than around it."""
    predictor = Predictor(mobile_sam, "sam", cache=EmbeddingCache(), precision="fp32")
    examples = _disc_examples(predictor, 4)
    rng = np.random.default_rng(0)
    cells, labels = zip(*(example_cells(e.embedding.features, e.target, e.embedding.input_size,
                                        e.embedding.original_size, rng) for e in examples[:3]))
    prior = fit_slide_prior(torch.cat(cells), torch.cat(labels))
    test = examples[3]
    x, y = example_cells(test.embedding.features, test.target, test.embedding.input_size,
                         test.embedding.original_size, rng, limit=10 ** 6)
    scores = x @ prior.linear.weight[0] + prior.linear.bias
    assert scores[y > 0].mean() > scores[y == 0].mean() + 1.0
    assert isinstance(examples[0], AdaptationExample)


def test_the_prior_applies_its_weight_to_the_context_features():
    """The forward pools one-channel maps (fast); it must equal the weight applied to the context
    features it was fitted on."""
    prior = SlidePrior(8)
    with torch.no_grad():
        prior.linear.weight.normal_()
        prior.linear.bias.fill_(0.3)
    features = torch.randn(2, 8, 16, 16)
    direct = torch.stack([torch.einsum("c,chw->hw", prior.linear.weight[0], context_features(f)) for f in features])
    assert torch.allclose(prior(features)[:, 0], direct + 0.3, atol=1e-4)


def test_the_prior_is_deterministic_under_a_seed_and_refitted_only_for_new_examples(tiny_model):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    examples = _disc_examples(predictor, 4)
    priors = []
    for _ in range(2):
        adapter = DecoderAdapter(predictor, steps_per_object=0, seed=3)
        for example in examples[:2]:
            adapter.add_example(example)
        first = adapter._fit_prior()
        assert adapter._fit_prior() is first  # the same training examples: not refitted
        adapter.add_example(examples[2])  # the third object is held out, on a tile of its own: the same fit
        assert torch.equal(adapter._fit_prior().linear.weight, first.linear.weight)
        adapter.add_example(examples[3])
        priors.append(adapter._fit_prior())
        assert priors[-1] is not first
    assert torch.equal(priors[0].linear.weight, priors[1].linear.weight)

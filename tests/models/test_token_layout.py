"""The decoders written in token layout for the CPU runtime: the same logits and IoUs as the
decoders' own forward for SAM's, the modified and the single-mask decoder, with and without a mask
prompt, the image side reused or not, the image's attention to the tokens taken tokens first or
not; the image embedding laid out once per tile; a decoder it does not cover keeps its layout.
Mechanics, on a tiny random SAM."""

import copy
import warnings

import numpy as np
import pytest
import torch

from napari_sam_histo.models import cpu_runtime, runtime_decoder, token_layout
from napari_sam_histo.models.decoders import SingleMaskDecoder
from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.models.residual_decoder import ResidualMaskDecoder
from napari_sam_histo.models.slide_prior import SlidePrior, SlidePriorDecoder
from napari_sam_histo.models.tissue_decoder import TissueDecoder


@pytest.fixture
def tiny():
    return random_model("tiny", "cpu", seed=3)


def _decoders(tiny):
    sam = tiny.sam.mask_decoder
    torch.manual_seed(0)
    return {"sam": sam, "modified": ModifiedMaskDecoder.from_sam_decoder(sam).eval(),
            "single": SingleMaskDecoder(ModifiedMaskDecoder.from_sam_decoder(sam).eval())}


def _inputs(pe, masked, seed=1, tokens=5):
    g = torch.Generator().manual_seed(seed)
    dim, h, w = pe.shape[1:]
    last = 3 * torch.randn(1, 1, 4 * h, 4 * w, generator=g) if masked else torch.randn(1, dim, h, w, generator=g)
    return torch.randn(1, dim, h, w, generator=g), torch.randn(1, tokens, dim, generator=g), last


@pytest.mark.parametrize("name", ["sam", "modified", "single"])
@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("tokens_first", [True, False])
def test_the_token_layout_gives_the_decoders_own_outputs(tiny, name, reuse, tokens_first):
    decoder = _decoders(tiny)[name]
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling
    for multimask in (True, False):
        for masked in (True, False):
            mask_embedding = embed_mask if masked else None
            own = runtime_decoder._Forward(decoder, multimask, pe, mask_embedding).eval()
            tokens = token_layout.TokenLayoutForward(decoder, multimask, pe, mask_embedding, reuse,
                                                     tokens_first_logits=tokens_first).eval()
            image, sparse, last = _inputs(pe, masked)
            inputs = tokens.inputs(image, sparse, last)
            # with a mask prompt and the image side reused, the first layer's three projections too
            assert len(inputs) == (6 if masked and reuse else 3)
            with torch.no_grad():
                expected = own(image, sparse, last)
                got = tokens(*inputs)
            for g, e in zip(got, expected):
                assert g.shape == e.shape  # three masks or one, as the decoder answers
                assert torch.allclose(g, e, rtol=1e-4, atol=1e-5)
            assert token_layout.check(tokens, own, (image, sparse, last)) <= token_layout.MAX_RELATIVE_ERROR
    # and a changed weight shows: the check compares with the decoder, it does not trust the rewrite
    changed = copy.deepcopy(decoder)
    with torch.no_grad():
        next(iter(changed.parameters())).add_(1.0)
    own = runtime_decoder._Forward(decoder, False, pe, embed_mask).eval()
    rewritten = token_layout.TokenLayoutForward(changed, False, pe, embed_mask).eval()
    assert token_layout.check(rewritten, own, _inputs(pe, True)) > token_layout.MAX_RELATIVE_ERROR


def test_decoders_it_does_not_cover_are_named(tiny):
    sam = tiny.sam.mask_decoder
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling
    assert token_layout.supports(sam, embed_mask) and token_layout.supports(sam, None)
    prior = SlidePriorDecoder(sam, SlidePrior(sam.transformer_dim))
    assert not token_layout.supports(prior, embed_mask)  # the prior reads the (C, H, W) embedding
    assert not token_layout.supports(ResidualMaskDecoder.from_sam_decoder(sam), embed_mask)
    assert not token_layout.supports(TissueDecoder(sam), embed_mask)
    assert not token_layout.supports(sam, torch.nn.Sequential(torch.nn.Conv2d(1, 8, 2, stride=2)))
    with pytest.raises(ValueError):
        token_layout.TokenLayoutForward(TissueDecoder(sam), False, tiny.sam.prompt_encoder.get_dense_pe())


def test_the_image_is_laid_out_once_per_embedding():
    tokens = token_layout.TileInputs()
    a, b = torch.randn(1, 8, 4, 5), torch.randn(1, 8, 4, 5)
    first = tokens(a)
    assert len(first) == 1 and first[0].shape == (1, 20, 8) and torch.equal(first[0][0, 7], a[0, :, 1, 2])
    assert tokens(a) is first  # the same tile's next click: not laid out again
    second = tokens(b)
    assert second is not first and torch.equal(second[0], token_layout.as_tokens(b))


def test_the_first_layers_projections_are_computed_once_per_tile_with_the_weights_built_with(tiny):
    sam = tiny.sam.mask_decoder
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    forward = token_layout.TokenLayoutForward(sam, False, pe, tiny.sam.prompt_encoder.mask_downscaling).eval()
    tile_inputs = token_layout.TileInputs(forward)
    image, sparse, mask = _inputs(pe, True)
    got = tile_inputs(image)
    expected = forward.inputs(image, sparse, mask)
    assert len(got) == 4 and torch.equal(got[0], expected[0])
    for g, e in zip(got[1:], expected[3:]):
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-6)
    assert tile_inputs(image) is got
    with torch.no_grad():  # the decoder trained on afterwards: its network (and these inputs) are rebuilt, not
        # changed under a running click
        sam.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.add_(1.0)
    assert torch.equal(token_layout.TileInputs(forward)(image.clone())[2], got[2])  # values: unchanged weight
    assert not torch.allclose(token_layout.TileInputs(forward)(image.clone())[1], got[1])
    assert torch.allclose(tile_inputs(image.clone())[1], got[1])


@pytest.mark.skipif(not cpu_runtime.available(), reason="the CPU runtime (openvino, onnx) is not installed")
def test_the_runtime_builds_token_layout_networks_and_falls_back_to_the_own_layout(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    sam = tiny.sam.mask_decoder
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling
    network = runtime_decoder.build_network(sam, pe, False, embed_mask)
    assert isinstance(network, runtime_decoder.TokenLayoutNetwork) and network.info["path"].find("-tokens-") > 0
    image, sparse, last = _inputs(pe, True, tokens=3)
    with torch.no_grad():
        expected = runtime_decoder._Forward(sam, False, pe, embed_mask)(image, sparse, last)
    got = network(image, sparse, last)  # called like the decoder: (1, C, H, W) in
    assert float((got[0] - expected[0]).norm() / expected[0].norm()) <= 1e-4

    monkeypatch.setattr(token_layout, "check", lambda *args: 1.0)  # a rewrite that would not match
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = runtime_decoder.build_network(sam, pe, True, embed_mask)
    assert not isinstance(plain, runtime_decoder.TokenLayoutNetwork) and "-tokens-" not in plain.info["path"]
    assert any("token layout" in str(w.message) for w in caught)
    got = plain(image, sparse, last)
    with torch.no_grad():
        expected = runtime_decoder._Forward(sam, True, pe, embed_mask)(image, sparse, last)
    assert np.allclose(got[0].numpy(), expected[0].numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not cpu_runtime.available(), reason="the CPU runtime (openvino, onnx) is not installed")
def test_preparing_runs_the_next_clicks_network_at_each_warm_token_count(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    seen = []
    original = runtime_decoder.TokenLayoutNetwork.__call__

    def counting(self, image, sparse, last):
        seen.append((self.masked, sparse.shape[1]))
        return original(self, image, sparse, last)

    monkeypatch.setattr(runtime_decoder.TokenLayoutNetwork, "__call__", counting)
    compiled = runtime_decoder.compiled_decoder(tiny.sam.mask_decoder, tiny.sam.prompt_encoder.get_dense_pe(),
                                                tiny.sam.prompt_encoder.mask_downscaling)
    compiled.prepare_now()
    warmed = [tokens for masked, tokens in seen if masked]
    assert set(runtime_decoder.WARM_TOKENS) <= set(warmed)


@pytest.mark.parametrize("tokens", [1, 4, 13])
def test_the_image_attends_to_few_tokens_tokens_first_as_sam_attends(tiny, tokens):
    from segment_anything.modeling.transformer import Attention

    torch.manual_seed(tokens)
    layer = Attention(32, num_heads=4, downsample_rate=2).eval()
    image, prompt = torch.randn(1, 50, 32), torch.randn(1, tokens, 32)
    with torch.no_grad():
        expected = layer(image, prompt, prompt)
        got = token_layout.many_queries_attention(layer, layer.q_proj(image), layer.k_proj(prompt),
                                                  layer.v_proj(prompt))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not cpu_runtime.available(), reason="the CPU runtime (openvino, onnx) is not installed")
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_the_image_attends_tokens_first_only_in_networks_that_compute_in_bf16(tiny, tmp_path, monkeypatch,
                                                                               precision):
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    built = []

    class Recording(token_layout.TokenLayoutForward):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.tokens_first_logits)

    monkeypatch.setattr(token_layout, "TokenLayoutForward", Recording)
    runtime_decoder.build_network(tiny.sam.mask_decoder, tiny.sam.prompt_encoder.get_dense_pe(), False,
                                  tiny.sam.prompt_encoder.mask_downscaling, precision)
    assert built == [precision == "bf16"]


@pytest.mark.parametrize("rest, expected", [("bf16", True), ("f32", False)])
def test_an_int8_network_computes_in_bf16_where_its_rest_does(monkeypatch, rest, expected):
    monkeypatch.setattr(cpu_runtime, "int8_rest_precision", lambda: rest)
    assert cpu_runtime.computes_in_bf16("int8") is expected
    assert cpu_runtime.computes_in_bf16("bf16") and not cpu_runtime.computes_in_bf16("f32")


def test_networks_with_either_attention_form_have_their_own_cache_keys(tiny):
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling

    def key(tokens_first):
        forward = token_layout.TokenLayoutForward(tiny.sam.mask_decoder, False, pe, embed_mask,
                                                  tokens_first_logits=tokens_first).eval()
        inputs = forward.inputs(*_inputs(pe, True))
        spec = cpu_runtime.NetworkSpec("decoder", forward, inputs, forward.input_names(), ("low_res_logits", "iou"))
        return spec.key(cpu_runtime.weights_digest(forward))

    assert key(True) != key(False) and key(True) == key(True)

"""The two ways of attending that scripts/attention-layout-probe times compute the decoders' own
outputs (so its timings compare like with like), and the probe's block-diagonal way really is
the one it swaps in. Tiny random SAM."""

import torch

from napari_sam_histo.models import token_layout
from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.models.runtime_decoder import _Forward
from tests.scripts import load_script


def test_both_ways_of_attending_give_the_decoders_own_outputs():
    probe = load_script("attention-layout-probe")
    tiny = random_model("tiny", "cpu", seed=3)
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling
    torch.manual_seed(0)
    sam = tiny.sam.mask_decoder
    g = torch.Generator().manual_seed(1)
    dim, h, w = pe.shape[1:]
    image, sparse = torch.randn(1, dim, h, w, generator=g), torch.randn(1, 7, dim, generator=g)
    mask = 3 * torch.randn(1, 1, 4 * h, 4 * w, generator=g)
    swapped = []

    def counting(layer, q, k, v):
        swapped.append(layer)
        return probe.block_diagonal_attention(layer, q, k, v)

    for decoder in (sam, ModifiedMaskDecoder.from_sam_decoder(sam).eval()):
        own = _Forward(decoder, False, pe, embed_mask).eval()
        with torch.no_grad():
            expected = own(image, sparse, mask)
            for attention in (token_layout.attention, counting):
                got = probe.token_forward(decoder, pe, embed_mask, attention)(token_layout.as_tokens(image), sparse, mask)
                for g_, e in zip(got, expected):
                    assert torch.allclose(g_, e, rtol=1e-4, atol=1e-5)
    # SAM's two-way transformer: three attentions a layer and the final one, in each of the two decoders
    assert len(swapped) == 2 * (3 * len(sam.transformer.layers) + 1)
    assert token_layout.attention is not counting  # put back after each forward


def test_the_padded_forward_gives_the_decoders_own_outputs_whatever_the_padding_holds():
    probe = load_script("attention-layout-probe")
    tiny = random_model("tiny", "cpu", seed=4)
    pe = tiny.sam.prompt_encoder.get_dense_pe()
    embed_mask = tiny.sam.prompt_encoder.mask_downscaling
    g = torch.Generator().manual_seed(2)
    dim, h, w = pe.shape[1:]
    image, sparse = torch.randn(1, dim, h, w, generator=g), torch.randn(1, 5, dim, generator=g)
    mask = 3 * torch.randn(1, 1, 4 * h, 4 * w, generator=g)
    for decoder in (tiny.sam.mask_decoder, ModifiedMaskDecoder.from_sam_decoder(tiny.sam.mask_decoder).eval()):
        own = _Forward(decoder, False, pe, embed_mask).eval()
        forward = probe.padded_forward(decoder, pe, embed_mask)
        tokens, bias = probe.padded(sparse, 12)
        assert tokens.shape == (1, 12, dim) and (bias[0, :5] == 0).all() and (bias[0, 5:] < -1e8).all()
        noisy = tokens.clone()
        noisy[:, 5:] = 50 * torch.randn(1, 7, dim, generator=g)  # what the padding holds must not matter
        with torch.no_grad():
            expected = own(image, sparse, mask)
            for padding in (tokens, noisy):
                got = forward(token_layout.as_tokens(image), padding, bias, mask)
                for g_, e in zip(got, expected):
                    assert torch.allclose(g_, e, rtol=1e-4, atol=1e-5)
        assert token_layout.attention is not None and token_layout.attention.__name__ == "attention"

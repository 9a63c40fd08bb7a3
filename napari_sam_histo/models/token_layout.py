"""A click's decoder written with the image side in token layout, for the CPU runtime's export.

SAM's decoders take the image embedding as (1, C, H, W), add the mask prompt's embedding and lay
the sum out as H*W tokens of C channels inside the two-way transformer; the transformer's
attention then splits heads by transposing the (H*W, C) projections. In the exported network those
re-layouts of the 64x64x256 image side run at every click: measured on 2 AMD EPYC cores
(AVX512-BF16, no AMX) with OpenVINO's per-layer counters, ~8 ms of transposes and reorders in a
~35 ms bf16 SAM decoder network. Here the same arithmetic takes the image embedding already as
tokens (laid out once per tile by ``ImageTokens``) and embeds the mask prompt straight into tokens (its
last 1x1 convolution as a linear layer), so the image embedding is never transposed before the
upscaling; only the attention's projections are split into heads (``attention``).

SAM's ``TwoWayTransformer.forward`` and the decoders' ``predict_masks`` are written again below
(about 40 lines) because they take and return (1, C, H, W) and lay it out inside; they use the
decoders' own layers and weights, so a trained checkpoint runs unchanged. ``check`` compares this
forward with the decoder's own before a network is built from it (float32, 2e-5 relative).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .cpu_runtime import relative_error

MAX_RELATIVE_ERROR = 2e-5  # float32, this forward against the decoder's own (measured 2.5e-7 to 2.3e-6)


def _sam_decoder_classes() -> tuple[type, ...]:
    from mobile_sam.modeling import MaskDecoder as MobileMaskDecoder
    from segment_anything.modeling import MaskDecoder

    return MaskDecoder, MobileMaskDecoder


def _transformer_classes() -> tuple[type, ...]:
    from mobile_sam.modeling.transformer import TwoWayTransformer as MobileTwoWayTransformer
    from segment_anything.modeling.transformer import TwoWayTransformer

    return TwoWayTransformer, MobileTwoWayTransformer


def _unwrap(decoder: nn.Module) -> tuple[nn.Module, bool]:
    """The decoder under a single-mask wrapper, and whether it was wrapped (then one mask always)."""
    from .decoders import SingleMaskDecoder

    if isinstance(decoder, SingleMaskDecoder):
        return decoder.decoder, True
    return decoder, False


def supports(decoder: nn.Module, mask_embedding: nn.Module | None) -> bool:
    """Whether ``decoder`` (and the prompt encoder's ``mask_downscaling``, when given) can run in
    token layout: SAM's decoder or the modified one, possibly single-mask, on SAM's two-way
    transformer; not a decoder with a slide prior (the prior reads the (C, H, W) embedding)."""
    from .modified_decoder import ModifiedMaskDecoder

    inner, _ = _unwrap(decoder)
    if not isinstance(inner, (*_sam_decoder_classes(), ModifiedMaskDecoder)):
        return False
    if not isinstance(inner.transformer, _transformer_classes()):
        return False
    if mask_embedding is None:
        return True
    last = mask_embedding[-1] if isinstance(mask_embedding, nn.Sequential) and len(mask_embedding) else None
    return isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.stride == (1, 1) \
        and last.padding == (0, 0) and last.groups == 1


def attention(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` (its projections and weights) on (1, N, C) inputs: the projections split
    into heads and attended with ``scaled_dot_product_attention``. Only the projections (at the
    layer's internal width) are split into heads, never the image embedding itself.

    Why not every head in one matrix product (the small side spread block-diagonally over the heads,
    zeros elsewhere, so that not even the projections are split): those products multiply by the
    zeros too, 8x the work for SAM's 8 heads, growing with the prompt tokens. Measured by
    ``scripts/attention-layout-probe`` on 2 AMD EPYC cores (AVX512-BF16, no AMX), SAM's bf16 decoder
    network at 8 / 16 / 32 prompt tokens: 26.3 / 28.7 / 34.4 ms block-diagonally, 22.6 / 22.8 /
    23.8 ms head by head (``docs/cpu-runtime.md``)."""
    q, k, v = layer.q_proj(q), layer.k_proj(k), layer.v_proj(v)
    heads = layer.num_heads
    batch, queries, dim = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
        return x.reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return layer.out_proj(out.transpose(1, 2).reshape(batch, queries, dim))


def two_way(transformer: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor,
            tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``TwoWayTransformer.forward`` on image tokens (1, N, C): (queries, keys)."""
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + attention(layer.cross_attn_token_to_image, q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + key_pe
        keys = layer.norm4(keys + attention(layer.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + key_pe
    queries = transformer.norm_final_attn(queries + attention(transformer.final_attn_token_to_image, q, k, keys))
    return queries, keys


class TokenLayoutForward(nn.Module):
    """One click of ``decoder`` with the image side in token layout: three tensors in (image tokens
    (1, H*W, C), sparse prompt embeddings (1, T, C), and the mask prompt (1, 1, 4H, 4W) when
    ``mask_embedding`` is given, else the dense embedding as tokens (1, H*W, C)), the decoder's two
    out (low-resolution logits, IoU predictions). The image positional encoding is a constant."""

    def __init__(self, decoder: nn.Module, multimask: bool, image_pe: torch.Tensor,
                 mask_embedding: nn.Module | None = None) -> None:
        super().__init__()
        from .modified_decoder import ModifiedMaskDecoder

        if not supports(decoder, mask_embedding):
            raise ValueError(f"{type(decoder).__name__} cannot run in token layout.")
        self.decoder, single = _unwrap(decoder)
        self.modified = isinstance(self.decoder, ModifiedMaskDecoder)
        self.multimask = bool(multimask) and not single and not self.modified
        self.grid = tuple(int(s) for s in image_pe.shape[-2:])
        self.mask_features = None if mask_embedding is None else mask_embedding[:-1]
        self.mask_projection = None if mask_embedding is None else mask_embedding[-1]
        self.register_buffer("pe_tokens", image_pe.detach().float().cpu().flatten(2).transpose(1, 2).contiguous())

    def forward(self, image_tokens, sparse, dense_or_mask):
        if self.mask_features is None:
            dense = dense_or_mask
        else:
            features = self.mask_features(dense_or_mask).flatten(2).transpose(1, 2)  # (1, N, C/16): small
            projection = self.mask_projection
            dense = F.linear(features, projection.weight.flatten(1), projection.bias)
        keys = image_tokens + dense
        d = self.decoder
        if self.modified:
            output_tokens = torch.cat([d.iou_token.weight, d.mask_token.weight], dim=0)
        else:
            output_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0), sparse), dim=1)
        hs, keys = two_way(d.transformer, keys, self.pe_tokens, tokens)
        channels = keys.shape[-1]
        if self.modified:
            iou = d.iou_prediction_head(hs[:, 0, :])[:, :1]
            keys = d.global_attention(keys, self.pe_tokens)
            feature_map = keys.transpose(1, 2).reshape(1, channels, *self.grid)
            return d.mask_head(d.upsampling(feature_map)), iou
        upscaled = d.output_upscaling(keys.transpose(1, 2).reshape(1, channels, *self.grid))
        mask_tokens = hs[:, 1:1 + d.num_mask_tokens, :]
        hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(d.output_hypernetworks_mlps)], dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.view(1, c, h * w)).view(1, -1, h, w)
        iou = d.iou_prediction_head(hs[:, 0, :])
        chosen = slice(1, None) if self.multimask else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]


def as_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, H*W, C), float32, contiguous, on the CPU."""
    return embedding.detach().to("cpu", torch.float32).flatten(2).transpose(1, 2).contiguous()


class ImageTokens:
    """The last image embedding laid out as tokens: every click on a tile passes the same embedding
    tensor, so it is laid out once per tile, not once per click."""

    def __init__(self) -> None:
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0] is embedding and last[1] == embedding.data_ptr():
            return last[2]
        tokens = as_tokens(embedding)
        self._last = (embedding, embedding.data_ptr(), tokens)
        return tokens


def check(token_forward: TokenLayoutForward, reference: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """The relative error of ``token_forward`` against ``reference`` (the decoder's own forward, taking
    the image embedding as (1, C, H, W) and the dense embedding likewise) on ``inputs`` given in
    ``reference``'s layout; float32."""
    image, sparse, last = inputs
    masked = token_forward.mask_features is not None
    with torch.no_grad():
        expected = reference(image, sparse, last)
        got = token_forward(as_tokens(image), sparse, last if masked else as_tokens(last))
    return max(relative_error(g, e) for g, e in zip(got, expected))

"""A click's decoder written with the image side in token layout, for the CPU runtime's export.

SAM's decoders take the image embedding as (1, C, H, W), add the mask prompt's embedding and lay
the sum out as H*W tokens of C channels inside the two-way transformer; the transformer's
attention then splits heads by transposing the (H*W, C) projections. In the exported network those
re-layouts of the 64x64x256 image side run at every click: measured on 2 AMD EPYC cores
(AVX512-BF16, no AMX) with OpenVINO's per-layer counters, ~8 ms of transposes and reorders in a
~35 ms bf16 SAM decoder network. Here the same arithmetic takes the image embedding already as
tokens (laid out once per tile by ``TileInputs``) and embeds the mask prompt straight into tokens (its
last 1x1 convolution as a linear layer), so the image embedding is never transposed before the
upscaling; only the attention's projections are split into heads (``attention``).

It also leaves out work that is the same at every click on a tile (``TokenLayoutForward``'s
``reuse_image_side``): the first layer's projections of the image, taken once per tile, and the
final attention's projections of the image, where only two to five output tokens are read. And
in networks that compute in bfloat16 the image's attention to the few prompt tokens takes its
logits tokens first (``many_queries_attention``), which OpenVINO runs as plain matrix products
instead of its attention kernel.

SAM's ``TwoWayTransformer.forward`` and the decoders' ``predict_masks`` are written again below
(about 50 lines) because they take and return (1, C, H, W) and lay it out inside; they use the
decoders' own layers and weights, so a trained checkpoint runs unchanged. ``check`` compares this
forward with the decoder's own before a network is built from it (float32, 2e-5 relative).
"""

from __future__ import annotations

import copy

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
    23.8 ms head by head (``docs/cpu-runtime.md``). The image's attention to the tokens alone is the
    exception in bfloat16 networks (``many_queries_attention``)."""
    return attend(layer, layer.q_proj(q), layer.k_proj(k), layer.v_proj(v))


def attend(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` of ``layer`` on its inputs already projected (1, N, internal width)."""
    heads = layer.num_heads
    batch, queries, dim = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
        return x.reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return layer.out_proj(out.transpose(1, 2).reshape(batch, queries, dim))


def few_queries_attention(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` of a few queries ``q`` (1, S, C) on the image's many tokens ``k``, ``v``
    (1, N, C), with the image side never projected: the products are taken in the other order.
    Each head's logits ``(q Wq_h)(k Wk_h)^T`` are ``k ((q Wq_h) Wk_h)^T`` (the key bias adds the same
    number to a query's every logit, which the softmax ignores), and as a head's weights sum to 1
    its output ``P (v Wv_h^T + b_h)`` is ``(P v) Wv_h^T + b_h``. For SAM's 8 heads and S queries that
    is 2 * 8 * S * N * C multiply-adds where projecting the image takes 2 * N * C * C / 2: about
    half at S = 5, a fifth at S = 2; the same arithmetic up to float32 rounding.

    The logits are taken as (N, heads * S), the image's tokens first, and the softmax over that first
    axis: written the other way round (queries first) OpenVINO fuses the two products and the
    softmax into one attention kernel that took 1.4 ms here, against 0.3 ms for the two products as
    plain matrix products (SAM's bf16 network on 2 AMD EPYC cores, per-layer counters)."""
    heads = layer.num_heads
    projected = layer.q_proj(q)[0]  # (S, D)
    count, dim = projected.shape
    per_head, channels = dim // heads, k.shape[-1]
    q_heads = projected.reshape(count, heads, per_head).transpose(0, 1)  # (heads, S, D / heads)
    k_weight = layer.k_proj.weight.reshape(heads, per_head, channels)
    queries = ((q_heads @ k_weight) * per_head ** -0.5).reshape(heads * count, channels)
    weights = torch.softmax(k[0] @ queries.transpose(0, 1), dim=0)  # (N, heads * S)
    mixed = (weights.transpose(0, 1) @ v[0]).reshape(heads, count, channels)
    out = mixed @ layer.v_proj.weight.reshape(heads, per_head, channels).transpose(1, 2) \
        + layer.v_proj.bias.reshape(heads, 1, per_head)
    return layer.out_proj(out.transpose(0, 1).reshape(1, count, dim))


def many_queries_attention(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` of ``layer`` with the image's many queries ``q`` (1, N, D) on a few keys and
    values ``k``, ``v`` (1, T, D), all three already projected, the logits taken tokens first:
    (heads, T, N), the softmax over the tokens' axis. SAM's attention splits the image's queries into
    heads, (heads, N, D / heads), and OpenVINO fuses the two products and the softmax into one
    attention kernel, which with so few keys took 2.1 ms in SAM's bf16 network where these plain
    matrix products and the softmax take ~0.4 ms (2 AMD EPYC cores, per-layer counters, 12 tokens).
    The keys are spread block-diagonally over the heads (``attention`` says why not everywhere):
    the zeros cost less than that kernel's overhead in bfloat16, more in float32, so the package
    uses this form only in networks that compute in bfloat16 (``runtime_decoder.build_network``).
    The same arithmetic up to float32 rounding (the scale is applied to the keys instead of the
    logits)."""
    heads = layer.num_heads
    count, dim = k.shape[1], k.shape[2]
    per_head = dim // heads
    # each head's keys in its own block of channels, zeros elsewhere: (heads * T, D)
    blocks = torch.repeat_interleave(torch.eye(heads, dtype=k.dtype, device=k.device), per_head, dim=1).unsqueeze(1)
    k_blocks = (k[0].unsqueeze(0) * blocks).reshape(heads * count, dim) * per_head ** -0.5
    logits = k_blocks @ q[0].transpose(0, 1)  # (heads * T, N)
    weights = torch.softmax(logits.reshape(heads, count, q.shape[1]), dim=1)  # (heads, T, N)
    v_heads = v[0].reshape(count, heads, per_head).permute(1, 2, 0)  # (heads, D / heads, T)
    out = (v_heads @ weights).reshape(dim, q.shape[1])  # (D, N)
    return layer.out_proj(out.transpose(0, 1)).unsqueeze(0)


def first_layer_projections(layer: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three projections of the image side that the two-way transformer's first layer takes,
    on image tokens ``keys`` (1, N, C): the token-to-image attention's keys and values, the
    image-to-token attention's queries."""
    to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    return to_image.k_proj(keys + key_pe), to_image.v_proj(keys), to_token.q_proj(keys + key_pe)


def two_way(transformer: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor, tokens: torch.Tensor,
            first_layer: tuple[torch.Tensor, ...] | None = None, read: int | None = None,
            tokens_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``TwoWayTransformer.forward`` on image tokens (1, N, C): (queries, keys). With
    ``first_layer`` the first layer's projections of ``keys`` are given (``first_layer_projections``),
    not computed; with ``read`` only the first ``read`` queries are returned, their final attention
    on the image taken the other way round (``few_queries_attention``); with ``tokens_first`` the
    image's attention to the tokens takes its logits tokens first (``many_queries_attention``)."""
    queries = tokens
    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        given = first_layer if index == 0 else None
        k = None if given is not None else keys + key_pe
        q = queries + tokens
        if given is not None:
            attended = attend(to_image, to_image.q_proj(q), given[0], given[1])
        else:
            attended = attention(to_image, q, k, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + tokens
        if tokens_first:
            image_queries = given[2] if given is not None else to_token.q_proj(k)
            attended = many_queries_attention(to_token, image_queries, to_token.k_proj(q), to_token.v_proj(queries))
        elif given is not None:
            attended = attend(to_token, given[2], to_token.k_proj(q), to_token.v_proj(queries))
        else:
            attended = attention(to_token, k, q, queries)
        keys = layer.norm4(keys + attended)
    final = transformer.final_attn_token_to_image
    if read is None:
        q, k = queries + tokens, keys + key_pe
        return transformer.norm_final_attn(queries + attention(final, q, k, keys)), keys
    queries, tokens = queries[:, :read], tokens[:, :read]
    attended = few_queries_attention(final, queries + tokens, keys + key_pe, keys)
    return transformer.norm_final_attn(queries + attended), keys


class TokenLayoutForward(nn.Module):
    """One click of ``decoder`` with the image side in token layout: the image tokens (1, H*W, C),
    the sparse prompt embeddings (1, T, C), and the mask prompt (1, 1, 4H, 4W) when
    ``mask_embedding`` is given, else the dense embedding as tokens (1, H*W, C), in; the decoder's two
    outputs (low-resolution logits, IoU predictions) out. The image positional encoding is a constant.

    With ``reuse_image_side`` (the default) it does less of the work that is the same at every click
    on a tile: with a mask prompt it also takes the first layer's three projections of the image
    tokens (``first_layer_projections``, computed once per tile: ``TileInputs``) and adds to each
    the projection of the mask prompt's embedding (that embedding ends in a linear layer, so its
    projection is its 16 hidden channels times the two weight matrices multiplied out: a 16-wide
    product where the image side's is 256 wide); and the final attention is computed only for the
    output tokens whose result is read (``few_queries_attention``). Measured on 2 AMD EPYC cores
    (AVX512-BF16), SAM's next-click network in bf16: ~2.5 ms less of ~19 ms
    (``docs/cpu-runtime.md``). With ``tokens_first_logits`` the image's attention to the prompt
    tokens takes its logits tokens first (``many_queries_attention``; the package asks for it in
    bfloat16 networks only). The same arithmetic up to float32 rounding (tested)."""

    def __init__(self, decoder: nn.Module, multimask: bool, image_pe: torch.Tensor,
                 mask_embedding: nn.Module | None = None, reuse_image_side: bool = True,
                 tokens_first_logits: bool = True) -> None:
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
        self.reuse_image_side = bool(reuse_image_side)
        self.tokens_first_logits = bool(tokens_first_logits)
        self.register_buffer("pe_tokens", image_pe.detach().float().cpu().flatten(2).transpose(1, 2).contiguous())

    @property
    def takes_first_layer(self) -> bool:
        """Whether the forward takes the first layer's projections of the image tokens as well."""
        return self.reuse_image_side and self.mask_features is not None

    def read_tokens(self) -> int:
        """How many of the output tokens (IoU token first, then the mask tokens) make the outputs."""
        if self.modified:
            return 1  # its masks come from the image side; the IoU token alone is read
        return 1 + (self.decoder.num_mask_tokens if self.multimask else 1)

    def first_layer_projections(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first layer's projections of ``image_tokens`` alone, as ``forward`` takes them."""
        return first_layer_projections(self.decoder.transformer.layers[0], image_tokens, self.pe_tokens)

    def forward(self, image_tokens, sparse, dense_or_mask, *first_layer):
        first = None
        if self.mask_features is None:
            dense = dense_or_mask
        else:
            features = self.mask_features(dense_or_mask).flatten(2).transpose(1, 2)  # (1, N, C/16): small
            weight, bias = self.mask_projection.weight.flatten(1), self.mask_projection.bias
            dense = F.linear(features, weight, bias)
            if self.takes_first_layer:  # each projection of (image + dense) is the image's plus the dense's
                if len(first_layer) != 3:
                    raise TypeError("this forward takes the first layer's three projections of the image tokens "
                                    "after its three inputs (``inputs``)")
                layer = self.decoder.transformer.layers[0]
                to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
                first = tuple(given + F.linear(features, linear.weight @ weight, linear.weight @ bias)
                              for given, linear in zip(first_layer, (to_image.k_proj, to_image.v_proj,
                                                                     to_token.q_proj)))
        keys = image_tokens + dense
        d = self.decoder
        if self.modified:
            output_tokens = torch.cat([d.iou_token.weight, d.mask_token.weight], dim=0)
        else:
            output_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0), sparse), dim=1)
        read = self.read_tokens() if self.reuse_image_side else None
        hs, keys = two_way(d.transformer, keys, self.pe_tokens, tokens, first, read, self.tokens_first_logits)
        channels = keys.shape[-1]
        if self.modified:
            iou = d.iou_prediction_head(hs[:, 0, :])[:, :1]
            keys = d.global_attention(keys, self.pe_tokens)
            feature_map = keys.transpose(1, 2).reshape(1, channels, *self.grid)
            return d.mask_head(d.upsampling(feature_map)), iou
        upscaled = d.output_upscaling(keys.transpose(1, 2).reshape(1, channels, *self.grid))
        iou = d.iou_prediction_head(hs[:, 0, :])
        chosen = slice(1, None) if self.multimask else slice(0, 1)
        # the hypernetworks of the masks returned only
        mlps = list(enumerate(d.output_hypernetworks_mlps))[chosen]
        hyper = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in mlps], dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.view(1, c, h * w)).view(1, -1, h, w)
        return masks, iou[:, chosen]

    def input_names(self) -> tuple[str, ...]:
        """The names of ``forward``'s inputs, in their order (the exported network's)."""
        names = ("image_tokens", "sparse", "mask" if self.mask_features is not None else "dense_tokens")
        return names + (("first_keys", "first_values", "first_queries") if self.takes_first_layer else ())

    def inputs(self, image: torch.Tensor, sparse: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The forward's inputs from the decoder's own: the image embedding (1, C, H, W), the sparse
        embeddings, and the mask prompt or the dense embedding (1, C, H, W)."""
        image_tokens = as_tokens(image)
        extra = self.first_layer_projections(image_tokens) if self.takes_first_layer else ()
        return image_tokens, sparse, last if self.mask_features is not None else as_tokens(last), *extra


def as_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, H*W, C), float32, contiguous, on the CPU."""
    return embedding.detach().to("cpu", torch.float32).flatten(2).transpose(1, 2).contiguous()


class TileInputs:
    """What a network takes from the last image embedding (1, C, H, W): the embedding laid out as
    tokens and, for a forward that takes them (``TokenLayoutForward.takes_first_layer``), the first
    layer's projections of those tokens. Every click on a tile passes the same embedding tensor, so
    this is computed once per tile, not once per click (MobileSAM's on 2 AMD EPYC cores: 1.6 ms for
    the tokens, 7 ms more with the projections, paid by the first click with a mask prompt on a tile;
    each click after it saves ~4 ms). The projections are computed with a copy of the first layer
    (its weights as they were when the network was built, as the network's own are)."""

    def __init__(self, forward: TokenLayoutForward | None = None) -> None:
        self._first_layer = None
        if forward is not None and forward.takes_first_layer:
            layer = forward.decoder.transformer.layers[0]
            # only the two cross-attentions ``first_layer_projections`` reads, not the layer's MLP
            self._first_layer = copy.deepcopy(nn.ModuleDict({
                "cross_attn_token_to_image": layer.cross_attn_token_to_image,
                "cross_attn_image_to_token": layer.cross_attn_image_to_token})).float().cpu().eval()
            self._key_pe = forward.pe_tokens.detach().clone()
        self._last: tuple[torch.Tensor, int, tuple[torch.Tensor, ...]] | None = None

    def __call__(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0] is embedding and last[1] == embedding.data_ptr():
            return last[2]
        tokens = as_tokens(embedding)
        inputs = (tokens,)
        if self._first_layer is not None:
            with torch.inference_mode():
                inputs += tuple(t.contiguous() for t in first_layer_projections(self._first_layer, tokens,
                                                                                 self._key_pe))
        self._last = (embedding, embedding.data_ptr(), inputs)
        return inputs


def check(token_forward: TokenLayoutForward, reference: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """The relative error of ``token_forward`` against ``reference`` (the decoder's own forward, taking
    the image embedding as (1, C, H, W) and the dense embedding likewise) on ``inputs`` given in
    ``reference``'s layout; float32."""
    with torch.no_grad():
        expected = reference(*inputs)
        got = token_forward(*token_forward.inputs(*inputs))
    return max(relative_error(g, e) for g, e in zip(got, expected))

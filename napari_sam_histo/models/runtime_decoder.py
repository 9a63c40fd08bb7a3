"""A click's decoder compiled by the CPU runtime (``models.cpu_runtime``), PyTorch where it cannot be.

The decoder module the predictor runs (SAM's own, ``md``, ``modified``, a trained checkpoint of
those, with or without a slide prior) is exported with the number of prompt tokens left free, with
the prompt encoder's embedding of the mask prompt inside (measured ~25 % of a click's work on 2 CPU
cores when it ran in PyTorch), one network per ``multimask_output`` value (a Python flag) and per
mask prompt given or not, built at first use or ahead of time (``prepare``), cached on disk like the
encoder and checked against the module at two prompt-token counts. SAM's decoder and the modified
one (not with a slide prior) are exported in token layout (``models.token_layout``): the image
embedding enters as tokens laid out once per tile, so no click re-lays out the image side, and the
next-click network also takes the first layer's projections of the image, computed once per tile
(``token_layout.TileInputs``). Measured
on 2 AVX512 cores (``docs/cpu-runtime.md``): SAM's decoder and the modified decoder run 2-3x faster
than the same module in float32 PyTorch in float32 (relative error ~1e-6), and in bfloat16
(``precision``; ~1e-2, the same clicks in the benchmark) 1.5-2.5x faster than the bfloat16 PyTorch
copy the predictor used on such CPUs.

Not compiled, and run by PyTorch: a decoder whose forward branches on its inputs (the tissue
decoder corrects only the first clicks of an object: a traced graph would freeze that branch),
the residual decoder (its correction sizes its grid with Python arithmetic on a shape),
one with layers in training mode, and one whose weights changed after it was built (checked at each call, as
the encoder copy is). A failing build or a refused network warns once and that decoder stays in
PyTorch: a click never fails because of this.
"""

from __future__ import annotations

import json
import threading
import warnings
import weakref
from itertools import chain

import torch
from torch import nn

from . import cpu_runtime, token_layout
from .fast_encoder import start_build, tensors_fingerprint

_CHECK_TOKENS = (3, 6)  # prompt-token counts the network is checked at (built at the first)


def _start(target, *args) -> threading.Thread:
    """A build in the background, waited for at exit like the encoder's (``fast_encoder.start_build``)."""
    return start_build("runtime-decoder-build", target, *args)


def exportable(module: nn.Module) -> bool:
    """Whether ``module``'s forward is the same graph for every click (no branch on its inputs)."""
    from mobile_sam.modeling import MaskDecoder as MobileMaskDecoder
    from segment_anything.modeling import MaskDecoder

    from .decoders import SingleMaskDecoder
    from .modified_decoder import ModifiedMaskDecoder
    from .slide_prior import SlidePriorDecoder

    if isinstance(module, (SingleMaskDecoder, SlidePriorDecoder)):
        return exportable(module.decoder)
    # not the residual decoder: its correction computes its grid side with Python's ``round`` on
    # a shape, which the exporter cannot trace
    return isinstance(module, (MaskDecoder, MobileMaskDecoder, ModifiedMaskDecoder))


def weighted_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of ``module`` that hold weights of their own."""
    return [sub for sub in module.modules()
            if any(True for _ in chain(sub.parameters(recurse=False), sub.buffers(recurse=False)))]


class _Forward(nn.Module):
    """The decoder with its keyword call, its multimask flag and the image's positional encoding
    fixed: three tensors in, two out. The positional encoding is the same for every tile of a
    model, so it is a constant of the network, which the runtime lays out once at compile time
    (as an input it was re-laid out at every click: ~10 % of SAM's bf16 decoder on 2 AVX512 cores).
    With ``mask_embedding`` (the prompt encoder's ``mask_downscaling``) the last input is the mask
    prompt (1, 1, 256, 256), embedded inside the network; else the dense prompt embedding."""

    def __init__(self, decoder: nn.Module, multimask: bool, image_pe: torch.Tensor,
                 mask_embedding: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.multimask = multimask
        self.mask_embedding = mask_embedding
        self.register_buffer("image_pe", image_pe.detach().float().cpu().clone())  # in the cache key's weights

    def forward(self, image_embeddings, sparse, dense_or_mask):
        dense = dense_or_mask if self.mask_embedding is None else self.mask_embedding(dense_or_mask)
        low_res, iou = self.decoder(image_embeddings=image_embeddings, image_pe=self.image_pe,
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=self.multimask)
        return low_res, iou


def _example(image_pe: torch.Tensor, tokens: int, masked: bool) -> tuple[torch.Tensor, ...]:
    """Example inputs in the decoder's own layout: image and dense embeddings as (1, C, H, W)."""
    generator = torch.Generator().manual_seed(tokens)
    dim, h, w = image_pe.shape[1:]
    last = torch.randn(1, 1, 4 * h, 4 * w, generator=generator) if masked else torch.randn(1, dim, h, w,
                                                                                          generator=generator)
    return (torch.randn(1, dim, h, w, generator=generator), torch.randn(1, tokens, dim, generator=generator), last)


class TokenLayoutNetwork:
    """A network compiled from ``token_layout.TokenLayoutForward``, called like the decoder's
    (``_Forward``'s) with the image embedding, and the dense embedding, as (1, C, H, W): what the
    network takes from each is computed once per tensor (``token_layout.TileInputs``), so once per
    tile."""

    def __init__(self, network: cpu_runtime.CompiledNetwork, forward: token_layout.TokenLayoutForward) -> None:
        self.network = network
        self.masked = forward.mask_features is not None
        self._image = token_layout.TileInputs(forward)
        self._dense = token_layout.TileInputs()

    @property
    def info(self) -> dict:
        return self.network.info

    def to_tokens(self, image: torch.Tensor, sparse: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image_tokens, *first_layer = self._image(image)
        return image_tokens, sparse, last if self.masked else self._dense(last)[0], *first_layer

    def __call__(self, image: torch.Tensor, sparse: torch.Tensor, last: torch.Tensor):
        return self.network(*self.to_tokens(image, sparse, last))


def build_network(decoder: nn.Module, image_pe: torch.Tensor, multimask: bool,
                  mask_embedding: nn.Module | None = None, precision: str = cpu_runtime.PRECISION,
                  int8_calibration: dict | None = None) -> cpu_runtime.CompiledNetwork | TokenLayoutNetwork:
    """The compiled network of ``decoder`` for one ``multimask`` value, taking the mask prompt
    through ``mask_embedding`` when given, else the dense embedding, in ``precision`` ("int8" with
    ``int8_calibration``, its convolutions' calibration: ``int8_convolutions``)
    (``RuntimeRefused`` where it differs from the modules by more than that precision's
    ``cpu_runtime.MAX_RELATIVE_ERRORS``, at any checked prompt-token count). Decoders that
    ``token_layout`` supports are exported in token layout (the image side never transposed at a
    click) when their token-layout forward matches their own, else in their own layout."""
    masked = mask_embedding is not None
    tokens_first = token_layout.supports(decoder, mask_embedding)
    with torch.inference_mode(False), torch.no_grad():  # export traces: no inference tensors
        forward = _Forward(decoder, multimask, image_pe, mask_embedding).eval()
        example = _example(image_pe, _CHECK_TOKENS[0], masked)
        exported, names = forward, ("image_embeddings", "sparse", "mask" if masked else "dense")
        if tokens_first:
            # the image's attention to the tokens taken tokens first: faster in bfloat16 at an object's
            # first clicks, slower in float32 (SAM's next-click network at 8 / 16 tokens on 2 AMD EPYC
            # cores: 13.7 / 14.7 against 16.3 / 15.1 ms in bf16, 27.4 / 29.6 against 26.2 / 27.7 ms in
            # f32 limited to AVX2; docs/cpu-runtime.md)
            candidate = token_layout.TokenLayoutForward(
                decoder, multimask, image_pe, mask_embedding,
                tokens_first_logits=cpu_runtime.computes_in_bf16(precision)).eval()
            error = token_layout.check(candidate, forward, example)
            tokens_first = error <= token_layout.MAX_RELATIVE_ERROR
            if not tokens_first:  # exported in the decoder's own layout: slower, the same masks
                warnings.warn(f"{type(decoder).__name__} in token layout differs from its own forward by "
                              f"{error:.2g} (relative); its network keeps the decoder's layout.", RuntimeWarning,
                              stacklevel=2)
        if tokens_first:
            exported = candidate
            example = candidate.inputs(*example)
            names = candidate.input_names()
        spec = cpu_runtime.NetworkSpec(
            f"decoder-{type(decoder).__name__}-{'multi' if multimask else 'single'}{'-masked' if masked else ''}"
            f"{'-tokens' if tokens_first else ''}",
            exported, example, names, ("low_res_logits", "iou"), {"sparse": {1: "tokens"}}, precision,
            int8_calibration if precision == "int8" else None)
        compiled = cpu_runtime.compile_network(spec)
        network = TokenLayoutNetwork(compiled, candidate) if tokens_first else compiled
        if not compiled.info["from_cache"]:
            for tokens in _CHECK_TOKENS[1:]:  # the token axis really is free in the compiled graph
                inputs = _example(image_pe, tokens, masked)
                error = max(cpu_runtime.relative_error(o, r) for o, r in zip(network(*inputs), forward(*inputs)))
                if not error <= cpu_runtime.MAX_RELATIVE_ERRORS[precision]:
                    raise cpu_runtime.RuntimeRefused(
                        f"with {tokens} prompt tokens its output in {precision} differs from PyTorch's by "
                        f"{error:.2g} (relative)")
    return network


# (multimask, masked) of the networks built ahead of a first click: a first click asks for three
# masks without a mask prompt, the next ones for one mask from the previous logits
_VARIANTS = ((True, False), (False, True), (False, False), (True, True))
_PREPARED = _VARIANTS[:2]
_INT8_VARIANT = (False, True)  # the next-click network, the one ``scripts/int8-calibrate`` records
# Prompt-token counts (an object's clicks + SAM's padding point) the prepared network for the
# clicks after the first runs once when it is built: the first inference at a new token count costs
# the runtime ~7 ms more (SAM's bf16 decoder on 2 AMD EPYC cores: 32 against 25 ms), and every click
# of an object brings a new count. Objects of up to 25 clicks then never pay it (~0.6 s of
# background work for SAM's decoder, ~2.5 s for the modified one; a click meanwhile waits for at most
# one of these runs).
WARM_TOKENS = range(3, 27)


class CompiledDecoder:
    """The compiled networks of one decoder module with the prompt encoder's mask embedding, one
    per (multimask, mask prompt or not) as clicks ask for them, built once each."""

    def __init__(self, decoder: nn.Module, image_pe: torch.Tensor, mask_embedding: nn.Module,
                 precision: str = cpu_runtime.PRECISION, int8_calibration: dict | None = None) -> None:
        if (precision == "int8") != bool(int8_calibration):
            raise ValueError("int8_calibration is given with precision 'int8', and only then")
        self.precision = precision
        self._int8_calibration = int8_calibration
        self._decoder = weakref.ref(decoder)
        self._mask_embedding = weakref.ref(mask_embedding)
        self._image_pe = image_pe.detach().float().cpu().clone()
        # taken once: each click checks these layers' modes and these tensors' storage and versions
        # (walking the modules at every click cost ~2.5 ms, a tenth of a bf16 SAM click on 2 cores)
        self._layers = weighted_layers(decoder) + weighted_layers(mask_embedding)
        self._tensors = [t for m in (decoder, mask_embedding) for t in chain(m.parameters(), m.buffers())]
        self._fingerprint = tensors_fingerprint(self._tensors)
        self._networks: dict[tuple[bool, bool], cpu_runtime.CompiledNetwork | TokenLayoutNetwork] = {}
        self._done = {variant: threading.Event() for variant in _VARIANTS}
        self._claimed: set[tuple[bool, bool]] = set()
        self._lock = threading.Lock()
        self.error: str | None = None  # a build failed or was refused: PyTorch for good
        self.stale = False  # the weights changed since: PyTorch for good
        self.info: dict = {}  # of the last network built: backend, precision, relative_error, build_s


    def network(self, multimask: bool, masked: bool = False, wait: bool = True,
                ) -> cpu_runtime.CompiledNetwork | TokenLayoutNetwork | None:
        """The network for ``multimask`` taking a mask prompt (``masked``) or the dense embedding,
        built now if needed (``wait=False``: started in the background, None until done), or None
        where PyTorch must run."""
        variant = (bool(multimask), bool(masked))
        decoder, mask_embedding = self._decoder(), self._mask_embedding()
        if decoder is None or mask_embedding is None or any(layer.training for layer in self._layers) \
                or self.error or self.stale:
            return None
        if self._claim(variant):
            if not wait:
                _start(self._build, variant)
                return None
            self._build(variant)
        elif not self._done[variant].is_set():
            if not wait:
                return None
            self._done[variant].wait()
        network = self._networks.get(variant)
        if network is None:
            return None
        if tensors_fingerprint(self._tensors) != self._fingerprint:
            self.stale = True
            self._networks.clear()
            return None
        return network

    def prepare(self) -> threading.Thread:
        """Build the networks a first and a second click use, in a background thread."""
        return _start(self.prepare_now)

    def prepare_now(self) -> None:
        """Build the networks a first and a second click use, now, and run the second one at the
        token counts of an object's next clicks (``WARM_TOKENS``)."""
        for multimask, masked in _PREPARED:
            self.network(multimask, masked)
        self._warm(_PREPARED[1])

    def _warm(self, variant: tuple[bool, bool]) -> None:
        network = self.network(*variant)
        if network is None:
            return
        image, _, last = _example(self._image_pe, WARM_TOKENS[0], variant[1])
        with torch.inference_mode():
            for tokens in WARM_TOKENS:
                network(image, torch.zeros(1, tokens, image.shape[1]), last)

    def _claim(self, variant: tuple[bool, bool]) -> bool:
        with self._lock:
            if variant in self._claimed:
                return False
            self._claimed.add(variant)
            return True

    def _build(self, variant: tuple[bool, bool]) -> None:
        multimask, masked = variant
        try:
            decoder, mask_embedding = self._decoder(), self._mask_embedding()
            if decoder is not None and mask_embedding is not None:
                # int8 for the network the calibration was recorded with (every click after an
                # object's first); the first click's network in what the rest of the int8 one runs in
                precision = self.precision if variant == _INT8_VARIANT or self.precision != "int8" \
                    else cpu_runtime.int8_rest_precision()
                network = build_network(decoder, self._image_pe, multimask, mask_embedding if masked else None,
                                        precision, self._int8_calibration)
                self._networks[variant] = network
                self.info = dict(network.info)
        except Exception as err:  # noqa: BLE001 - any failure means: PyTorch, never a failed click
            self.error = f"{type(err).__name__}: {err}"
            warnings.warn(f"The CPU runtime could not be used for the decoder ({self.error}); it runs in "
                          "PyTorch (slower, same results).", RuntimeWarning, stacklevel=2)
        finally:
            self._done[variant].set()


_lock = threading.Lock()
_compiled: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], CompiledDecoder]] = weakref.WeakKeyDictionary()


def compiled_decoder(decoder: nn.Module, image_pe: torch.Tensor, mask_embedding: nn.Module,
                     precision: str = cpu_runtime.PRECISION, int8_calibration: dict | None = None,
                     ) -> CompiledDecoder:
    """The one ``CompiledDecoder`` of ``decoder`` in ``precision`` (and ``int8_calibration``) in
    this process (predictors on the same decoder module share it, so each network is built once);
    ``mask_embedding`` is the model's prompt encoder's ``mask_downscaling``."""
    key = (precision, json.dumps(int8_calibration, sort_keys=True))
    with _lock:
        entries = _compiled.setdefault(decoder, {})
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = CompiledDecoder(decoder, image_pe, mask_embedding, precision, int8_calibration)
        return entry


def forget(decoder: nn.Module) -> None:
    """Drop ``decoder``'s networks (and any failure): the next use builds afresh."""
    with _lock:
        _compiled.pop(decoder, None)

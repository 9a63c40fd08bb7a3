"""The thin stateful bridge between pixels and SAM: embed a tile once, decode each click.

Shared by the annotator and the benchmark, so what is measured is what the user runs.
``embed`` runs the image encoder (counted in ``encoder_calls``); ``decode`` runs only the prompt
encoder and the chosen decoder, with the previous low-resolution logits as the mask prompt.
With ``encoder_mode="auto"`` (default) MobileSAM's encoder runs as an optimized float32 copy on a
CPU (``models.fast_encoder``: compiled by the OpenVINO runtime where it is installed, 2x a raw
PyTorch forward on 2 AVX512 cores, else a TorchScript copy; same embeddings to ~1e-6), built on
the first tile or ahead of time by ``prepare_encoder``; the module itself runs wherever the copy
cannot be used. With ``decoder_mode="auto"`` the decoder of a real SAM architecture runs on a CPU
as a network compiled by the same runtime (``models.runtime_decoder``; in bfloat16 where the CPU
has it natively and ``precision`` is "auto" or "bf16", else float32; with "auto" or "int8" a
decoder shipped with int8 calibration computes its calibrated convolutions in int8,
``models.int8_convolutions``), PyTorch where it cannot (no runtime, a decoder that branches on its
inputs, weights being trained).
"""

from __future__ import annotations

import copy
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch.nn import functional as F

from ..models import cpu_runtime, fast_encoder, int8_convolutions, runtime_decoder
from ..models.architectures import SAM_ARCHITECTURES
from ..models.decoders import DecoderChoice, Provenance, choose_decoder, provenance
from ..models.device import bf16_is_fast, optimized_encoder_is_fast
from ..models.point_prompts import PointPrompts
from ..models.registry import LoadedModel
from ..slides.boxes import TileBox
from ..slides.reader import ImageSource
from ..slides.rgb import PREPROCESSING_ID, to_rgb_uint8
from .embedding_cache import Embedding, EmbeddingCache, EmbeddingKey
from .protocols import EmbeddingStore

PRECISIONS = ("auto", "fp32", "bf16")  # the encoder's
# the decoder's: "int8" is bf16 with the calibrated convolutions of a decoder shipped with int8
# calibration in int8 (bf16 alone for any other decoder)
DECODER_PRECISIONS = (*PRECISIONS, "int8")
# How the image encoder runs: "optimized" is a traced, frozen float32 copy (models.fast_encoder),
# "eager" the module itself; "auto" picks optimized where it is measured faster (CPU, MobileSAM)
# and the encoder runs in float32 (a bf16 encoder stays eager, under autocast).
ENCODER_MODES = ("auto", "eager", "optimized")
# How the decoder runs: "runtime" is the decoder compiled by the CPU runtime in the decoder's
# precision (models.runtime_decoder), "pytorch" the module itself; "auto" picks the runtime on a CPU where it
# is installed, for the real SAM architectures (their decoders are one architecture, measured
# faster there; the test SAM is not), for a decoder whose weights do not change while it is used.
DECODER_MODES = ("auto", "pytorch", "runtime")
# Whether precision "auto" runs the runtime's decoder networks in bfloat16 on a CPU with native
# bfloat16 (else float32). The benchmark (docs/cpu-runtime.md) measured NoC@85 within 0.2 of float32
# for SAM's decoder, md and modified on at least two sources each, and never more than 0.12 clicks
# worse on any of four; the click ran 1.4-2.9x faster. The encoder stays float32 (the cache's key).
RUNTIME_BF16_AUTO = True
# Whether precision "auto" computes a calibrated decoder's convolutions in int8 through the
# runtime (the rest of its network in bfloat16 where the CPU has it natively, else in float32): the
# shipped modified decoder's clicks need NoC@80/85/90 within 0.1 of float32's on OCDC, EBHI-Seg and
# GlaS (also capped at AVX2), and its network runs ~18 % faster than in bf16 (docs/cpu-runtime.md).
RUNTIME_INT8_AUTO = True
_CHANGING_DECODERS = ("adapted", "training")  # DecoderChoice.source of decoders refitted while in use


@dataclass
class Prediction:
    """Decoder output for one set of prompts."""

    low_res_logits: torch.Tensor  # (K, 256, 256): feed one back as the next mask prompt
    iou_predictions: torch.Tensor  # (K,)


class Predictor:
    """One model + one decoder on one device; stateless about clicks (``ClickSession`` holds them)."""

    def __init__(
        self,
        model: LoadedModel,
        decoder: DecoderChoice | str = "sam",
        cache: EmbeddingStore | None = None,
        precision: str = "auto",
        encoder_precision: str = "fp32",
        allow_untrained: bool = False,
        encoder_mode: str = "auto",
        decoder_mode: str = "auto",
    ) -> None:
        if precision not in DECODER_PRECISIONS or encoder_precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {DECODER_PRECISIONS}, encoder_precision one of {PRECISIONS}")
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {ENCODER_MODES}")
        if decoder_mode not in DECODER_MODES:
            raise ValueError(f"decoder_mode must be one of {DECODER_MODES}")
        self.model = model
        # the precision asked for ("auto", "fp32", "bf16", "int8"): a predictor made from this one for
        # another decoder (adaptation) passes it on, and "auto" resolves for that decoder anew
        self.precision = precision
        self.sam = model.sam
        self.device = model.device
        self.decoder = decoder if isinstance(decoder, DecoderChoice) else choose_decoder(model, decoder, allow_untrained)
        self.cache: EmbeddingStore = cache if cache is not None else EmbeddingCache()
        fast_bf16 = bf16_is_fast(self.device)
        # "auto" is resolved here, once, as for the encoder: ``decoder_mode`` says what was chosen,
        # ``last_decoder_path`` what ran for the last click ("pytorch" while a network is built,
        # or for good where it failed, was refused or its weights changed)
        runtime = decoder_mode == "runtime" or (
            decoder_mode == "auto" and self.device.type == "cpu"
            and model.arch in SAM_ARCHITECTURES and self.decoder.source not in _CHANGING_DECODERS)
        runtime = runtime and self.device.type == "cpu" and cpu_runtime.available() \
            and runtime_decoder.exportable(self.decoder.module)
        self.decoder_mode = "runtime" if runtime else "pytorch"
        # the decoder's precision: "auto" is bfloat16 where the CPU computes it natively, for the
        # runtime only where RUNTIME_BF16_AUTO says the benchmark allows it (docs/cpu-runtime.md);
        # the runtime's bf16 network and the PyTorch bf16 copy it falls back to agree
        auto_bf16 = fast_bf16 and (RUNTIME_BF16_AUTO or not runtime)
        # "int8" is bf16 around the int8 convolutions where bf16 is native, float32 elsewhere
        # (``cpu_runtime.int8_rest_precision``), and so is its PyTorch fallback
        self.decoder_bf16 = precision == "bf16" or (precision == "int8" and fast_bf16) \
            or (precision == "auto" and auto_bf16)
        # int8 convolutions: asked for, or "auto" through the runtime (where "auto" means bf16, or
        # where the CPU has no native bf16); only for a decoder whose very weights were calibrated
        # (``decoder_precision`` says what was chosen)
        int8_calibration = None
        if runtime and (precision == "int8" or (precision == "auto" and RUNTIME_INT8_AUTO
                                                and (self.decoder_bf16 or not fast_bf16))):
            int8_calibration = int8_convolutions.calibration_for(cpu_runtime.weights_digest(self.decoder.module))
            if int8_calibration:  # 7-bit weights where the CPU may sum int8 products in 16 bits
                int8_calibration = int8_convolutions.for_this_cpu(int8_calibration, fast_bf16)
        self.decoder_precision = "int8" if int8_calibration else "bf16" if self.decoder_bf16 else "fp32"
        self.encoder_bf16 = encoder_precision == "bf16" or (encoder_precision == "auto" and fast_bf16)
        if encoder_mode == "optimized" and self.encoder_bf16:
            raise ValueError("encoder_mode='optimized' runs the encoder in float32; use encoder_precision='fp32'")
        # "auto" is resolved here, once: what was chosen is ``encoder_mode`` ("optimized"/"eager");
        # what really ran for the last tile (eager when the copy failed or went stale) is
        # ``last_encoder_path``.
        optimized = encoder_mode == "optimized" or (
            encoder_mode == "auto" and not self.encoder_bf16 and optimized_encoder_is_fast(self.device, model.arch))
        self.encoder_mode = "optimized" if optimized else "eager"
        # False (the dock): a tile is encoded eagerly while the optimized copy is still being built,
        # so no click waits for the build; True (benchmarks): every tile runs the same path
        # (and likewise a click runs the PyTorch decoder while its compiled network is built)
        self.wait_for_optimized_encoder = True
        self.last_encoder_path: str | None = None
        self.last_decoder_path: str | None = None
        # bf16 inference runs on a bf16 copy of the decoder: autocast would re-cast every weight
        # at every click (measured: 55 ms vs 43 ms per SAM-decoder click on 2 CPU cores, with
        # masks matching fp32 at IoU > 0.99). Weights changed later (training) need a new Predictor.
        self.decoder_dtype = torch.bfloat16 if self.decoder_bf16 else torch.float32
        self._decoder = self.decoder.module
        if self.decoder_bf16:
            self._decoder = copy.deepcopy(self.decoder.module).to(torch.bfloat16).eval()
        self.encoder_calls = 0
        self.last_decoder_s = 0.0
        self._encoder_lock = threading.Lock()
        self.image_size = int(self.sam.image_encoder.img_size)
        with torch.inference_mode():
            # contiguous once here: the runtime decoder would otherwise copy it at every click
            self._dense_pe = self.sam.prompt_encoder.get_dense_pe().contiguous()
        self._point_prompts = PointPrompts(self.sam.prompt_encoder)
        with torch.inference_mode():
            self._no_mask_dense = self.sam.prompt_encoder.no_mask_embed.weight.detach().float().cpu().reshape(
                1, -1, 1, 1).expand(1, -1, *self._dense_pe.shape[-2:]).contiguous()
        network_precision = {"int8": "int8", "bf16": "bf16", "fp32": "f32"}[self.decoder_precision]
        self._compiled_decoder = runtime_decoder.compiled_decoder(
            self.decoder.module, self._dense_pe, self.sam.prompt_encoder.mask_downscaling,
            network_precision, int8_calibration) if runtime else None

    @cached_property
    def provenance(self) -> Provenance:
        """What draws with this predictor: model and weights hash, the decoder as chosen, its
        architecture and its file's hash (taken when the decoder was loaded; nothing is read here),
        and one line of text for a status bar."""
        return provenance(self.model, self.decoder)

    # -- encoder ------------------------------------------------------------------------------
    @property
    def preprocessing_id(self) -> str:
        # The optimized encoder shares the fp32 key: it is the same float32 math in another order
        # (relative error ~2e-6, refused above 1e-4), as eager itself is across thread counts and
        # CPUs, and far below the float16 store's rounding; a stored eager embedding stays valid.
        return f"{PREPROCESSING_ID}:{'bf16' if self.encoder_bf16 else 'fp32'}:{self.image_size}"

    def prepare_encoder(self, background: bool = True, decoder: bool = True) -> None:
        """Build the optimized encoder now (in a background thread by default), so that the first
        tile does not wait for it (a few seconds: ``fast_encoder.status``); with ``decoder`` also
        the decoder's compiled networks (``prepare_decoder``), so that the first click does not."""
        if decoder:
            self.prepare_decoder(background)
        if self.encoder_mode != "optimized":
            return
        if background:
            fast_encoder.prepare(self.sam.image_encoder, self.image_size, self.device)
        else:
            with torch.inference_mode():
                fast_encoder.optimized_encoder(self.sam.image_encoder, self.image_size, self.device)

    def prepare_decoder(self, background: bool = True) -> None:
        """Build the decoder's compiled networks now (in a background thread by default). No-op
        when the decoder runs in PyTorch."""
        if self._compiled_decoder is None:
            return
        if background:
            self._compiled_decoder.prepare()
        else:
            self._compiled_decoder.prepare_now()

    @property
    def decoder_backend(self) -> str:
        """What runs the decoder: the runtime and its version, or "pytorch"."""
        if self._compiled_decoder is None:
            return "pytorch"
        return self._compiled_decoder.info.get("backend") or cpu_runtime.runtime_label()

    @property
    def encoder_backend(self) -> str:
        """What runs the optimized encoder copy ("torchscript", the runtime), "eager" otherwise."""
        if self.encoder_mode != "optimized":
            return "eager"
        return fast_encoder.status(self.sam.image_encoder).get("backend") or "not built yet"

    def _encoder_for(self, pixels: torch.Tensor):
        """The module to run on ``pixels``: the optimized copy when chosen and valid, else eager."""
        if self.encoder_mode == "optimized" and pixels.dtype == torch.float32:
            optimized = fast_encoder.optimized_encoder(self.sam.image_encoder, self.image_size, self.device,
                                                       wait=self.wait_for_optimized_encoder)
            if optimized is not None and tuple(pixels.shape) == (1, 3, self.image_size, self.image_size):
                return optimized, "optimized"
        return self.sam.image_encoder, "eager"

    def key_for(self, image_identity: str, tile_key: str) -> EmbeddingKey:
        return EmbeddingKey(image_identity, tile_key, self.model.name, self.model.weights_hash, self.preprocessing_id)

    def embedding_for(self, source: ImageSource, box: TileBox, computing=None) -> Embedding:
        """The cached embedding of ``box`` in ``source``, computing it (once) if needed.
        ``computing``, when given, is a context-manager factory entered only while the tile is
        really being read and encoded (not on a cache hit): a UI shows its progress with it."""
        key = self.key_for(source.identity, box.key())

        def compute() -> Embedding:
            with computing() if computing is not None else nullcontext():
                return self.embed(source.read_region(box))

        return self.cache.get_or_compute(key, compute, device=self.device)

    def embedding_for_array(self, image, identity: str) -> Embedding:
        """The cached embedding of a whole in-memory image (benchmark samples)."""
        rgb = to_rgb_uint8(image)
        key = self.key_for(identity, f"whole:{rgb.shape[1]}x{rgb.shape[0]}")
        return self.cache.get_or_compute(key, lambda: self.embed(rgb), device=self.device)

    def _autocast(self, enabled: bool):
        if not enabled:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def preprocess(self, image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(normalised, padded (1, 3, S, S) input on the device, resized (h, w), original (h, w)).
        The image is resized so its longest side is the model's input size S (1024), then padded."""
        rgb = to_rgb_uint8(image)
        original_size = rgb.shape[:2]
        h, w = self._resized_shape(original_size)
        # a read-only tile (a cached slide region) is copied: PyTorch warns on read-only arrays
        pixels = torch.from_numpy(np.require(rgb, requirements="W")).to(self.device).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(original_size):
            # SAM's ResizeLongestSide resizes with PIL bilinear on uint8; antialiased bilinear
            # in torch matches it closely and keeps the work on the model's device.
            pixels = F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)
            pixels = pixels.clamp(0, 255).round()
        pixels = (pixels - self.sam.pixel_mean) / self.sam.pixel_std
        pixels = F.pad(pixels, (0, self.image_size - w, 0, self.image_size - h))
        return pixels, (h, w), tuple(original_size)

    def embed(self, image) -> Embedding:
        """Run the image encoder on one image (see ``preprocess``)."""
        started = time.perf_counter()
        with torch.inference_mode():
            pixels, input_size, original_size = self.preprocess(image)
            encoder, path = self._encoder_for(pixels)
            with self._encoder_lock, self._autocast(self.encoder_bf16):
                self.encoder_calls += 1
                self.last_encoder_path = path
                features = encoder(pixels).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return Embedding(features, input_size, original_size, time.perf_counter() - started)

    def _resized_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        scale = self.image_size / max(size)
        return int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)

    # -- decoder ------------------------------------------------------------------------------
    def decode(
        self,
        embedding: Embedding,
        points_xy: np.ndarray,
        labels: np.ndarray,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Prompt encoder + decoder. ``points_xy`` are (x, y) pixel positions in the tile,
        ``labels`` 1 (positive) / 0 (negative); ``mask_input`` is a previous (256, 256) logit map.
        The runtime network embeds the mask prompt itself (``last_decoder_s`` then includes that
        embedding, a few percent of the network)."""
        scale_y = embedding.input_size[0] / embedding.original_size[0]
        scale_x = embedding.input_size[1] / embedding.original_size[1]
        scaled = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2) * np.array([scale_x, scale_y], np.float32)
        masks = None if mask_input is None else mask_input.reshape(1, 1, *mask_input.shape[-2:]).to(self.device)
        network = None if self._compiled_decoder is None else self._compiled_decoder.network(
            multimask, masks is not None, wait=self.wait_for_optimized_encoder)
        with torch.inference_mode():
            if network is not None:  # it embeds the mask prompt itself
                sparse = self._point_prompts(scaled, labels)  # SAM's prompt encoder, in numpy
                dense = self._no_mask_dense
                started = time.perf_counter()
                low_res, iou = network(embedding.features, sparse, dense if masks is None else masks)
                self.last_decoder_s = time.perf_counter() - started
                self.last_decoder_path = "runtime"
                return Prediction(low_res[0], iou[0])
            coords = torch.as_tensor(scaled, device=self.device)
            point_labels = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
            sparse, dense = self.sam.prompt_encoder(points=(coords[None], point_labels[None]), boxes=None, masks=masks)
            low_res, iou = self.run_decoder(embedding.features, sparse, dense, multimask)
        return Prediction(low_res[0], iou[0])

    def run_decoder(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                    multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's forward alone, in the predictor's precision; float32 out. Its duration is
        kept in ``last_decoder_s`` (decoder-only seconds per click, as the benchmark reports)."""
        dtype = self.decoder_dtype
        started = time.perf_counter()
        network = None if self._compiled_decoder is None else self._compiled_decoder.network(
            multimask, wait=self.wait_for_optimized_encoder)
        if network is not None:
            low_res, iou = network(features, sparse, dense)
            self.last_decoder_path = "runtime"
            self.last_decoder_s = time.perf_counter() - started
            return low_res, iou
        self.last_decoder_path = "pytorch"
        with torch.inference_mode():
            low_res, iou = self._decoder(
                image_embeddings=features.to(self.device, dtype),
                image_pe=self._dense_pe.to(dtype),
                sparse_prompt_embeddings=sparse.to(dtype),
                dense_prompt_embeddings=dense.to(dtype),
                multimask_output=multimask,
            )
            low_res, iou = low_res.float(), iou.float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_decoder_s = time.perf_counter() - started
        return low_res, iou

    def upscale(self, embedding: Embedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(256, 256) logits -> (H, W) float32 logits at the tile's own resolution (SAM's
        postprocessing); on the CPU through OpenCV (``restore_logits_cpu``)."""
        with torch.inference_mode():
            if low_res_logits.device.type == "cpu":
                return torch.from_numpy(restore_logits_cpu(low_res_logits.detach().float().numpy(), self.image_size,
                                                           embedding.input_size, embedding.original_size))
            return restore_logits(low_res_logits, self.image_size, embedding.input_size, embedding.original_size)


def restore_logits(low_res_logits: torch.Tensor, image_size: int, input_size, original_size) -> torch.Tensor:
    """Low-resolution logits -> (H, W) logits of the original image: up to the padded model input,
    crop the padding, resize to the original size (SAM's ``postprocess_masks``). Differentiable."""
    logits = low_res_logits.reshape(1, 1, *low_res_logits.shape[-2:]).float()
    logits = F.interpolate(logits, (image_size, image_size), mode="bilinear", align_corners=False)
    return _to_original(logits, input_size, original_size)


def _to_original(logits: torch.Tensor, input_size, original_size) -> torch.Tensor:
    """(1, 1, S, S) logits at the model's input size -> (H, W): the padding cropped, resized to the
    original size."""
    logits = logits[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        logits = F.interpolate(logits, tuple(original_size), mode="bilinear", align_corners=False)
    return logits[0, 0]


def restore_logits_cpu(low_res_logits: np.ndarray, image_size: int, input_size, original_size) -> np.ndarray:
    """``restore_logits`` for a (256, 256) float32 array, its upscaling to the model's input size by
    OpenCV's bilinear resize: the same half-pixel-centred interpolation as PyTorch's
    ``align_corners=False`` (within 1e-5, tested). Why not PyTorch's: after the decoder network
    PyTorch's threads wake for its ~1M outputs, several times its 0.8 ms back to back; with OpenCV's
    the click's work around the network fell from 1.13-1.21x the network's time to 1.10-1.11x in
    ``perf`` on 2 AMD EPYC cores (``docs/cpu-runtime.md``). A tile of another size than the model's
    input is then resized by PyTorch, as in ``restore_logits`` (OpenCV's differs there by up to 1e-4)."""
    import cv2

    logits = cv2.resize(np.ascontiguousarray(low_res_logits, dtype=np.float32).reshape(low_res_logits.shape[-2:]),
                        (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(_to_original(torch.from_numpy(logits)[None, None], input_size, original_size).numpy())

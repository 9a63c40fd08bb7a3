"""int8 3x3 convolutions for a compiled decoder network, from calibration shipped beside its weights.

The modified decoder's upsampling path spends most of its click in 3x3 convolutions, which run at
the CPU's bfloat16 peak (docs/cpu-runtime.md). Computed in int8 (AVX512-VNNI), the four 3x3
convolutions of its first two blocks (64x64 and 128x128) take about half the time, and so do those
blocks' 1x1 shortcuts and the last block's (256x256) first 3x3 convolution; that block's second
one stays in bfloat16: quantized too, it kept one OCDC object just under the benchmark's IoU 0.85.
Everything else in the network stays as compiled. On a CPU without native bfloat16 the rest runs in float32
(``cpu_runtime.int8_rest_precision``) and the weights are 7-bit (``for_this_cpu``): AVX2 alone has
no VNNI.

How: each chosen convolution gets an OpenVINO ``FakeQuantize`` operation on its input (per tensor,
256 levels, the range calibrated once on benchmark clicks of sources the decoder is not tested on,
``scripts/int8-calibrate``), and its weights become int8 with a scale per output channel
(symmetric, over their own largest magnitude, in the levels NNCF chose); OpenVINO then runs the
convolution in int8. Written here rather than calling NNCF (OpenVINO's quantization library) at
run time: NNCF needs the calibration inputs (megabytes per click), while its result is four
numbers per convolution that ship in a small JSON file.

The calibration is valid for the weights it was made with only: the file names their
``cpu_runtime.weights_digest``, and a decoder with other weights (a trained or a project decoder)
has none, so it runs in bfloat16.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

SUFFIX = ".int8.json"  # beside the shipped decoder: decoder-modified-vit_t.pt -> decoder-modified-vit_t.int8.json
FORMAT = 2  # of the calibration file
GRAPH = 1  # how ``quantize`` changes a network, part of its cache key: bumped, cached int8 networks rebuild


class CalibrationError(ValueError):
    """A calibration file or its convolutions do not fit the network."""


def calibration_files() -> list[Path]:
    from .shipped import RESOURCES

    return sorted(Path(RESOURCES).glob(f"*{SUFFIX}"))


@cache
def _read(path: Path) -> dict:
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT or not isinstance(data.get("convolutions"), dict):
        raise CalibrationError(f"{path}: not an int8 calibration of format {FORMAT}")
    return data


def calibration_for(weights: str, files: list[Path] | None = None) -> dict[str, dict] | None:
    """The int8 calibration of each convolution to quantize, by its name in the exported network
    (``{"input_range": [low, high], "weight_levels": 255 or 127, "weight_range": fraction}``, and
    ``"native_bf16_only": true`` for one computed in int8 only where bfloat16 is native:
    ``for_this_cpu``), for
    the decoder of these very ``weights`` (its ``cpu_runtime.weights_digest``); None where none
    was calibrated."""
    for path in calibration_files() if files is None else files:
        try:
            data = _read(path)
        except (OSError, ValueError):
            continue  # a damaged file: no int8, the decoder runs in bfloat16
        if data.get("weights") == weights:
            return data["convolutions"]
    return None


SEVEN_BIT = {"weight_levels": 127, "weight_range": 0.9921259880065918}  # as NNCF writes 7-bit weights


def for_this_cpu(calibration: dict[str, dict], native_bf16: bool) -> dict[str, dict]:
    """``calibration`` as this CPU runs it safely. Where bfloat16 is native (AVX512-BF16, AMX), the
    CPU also has VNNI, which sums int8 products in 32 bits: the calibration as made. Elsewhere int8
    products may be summed in pairs into 16 bits (AVX2's ``vpmaddubsw``), which 8-bit weights can
    overflow; there every convolution gets 7-bit weights (127 levels), as NNCF gives some anyway.
    Measured on the AMD EPYC capped at AVX2 (docs/cpu-runtime.md), with the first two blocks' 3x3
    convolutions in int8: with the calibration as made, one OCDC object of ten fell just under IoU
    0.85 (NoC@85 3.00 against float32's 1.90); with 7-bit weights the same NoC as float32 on OCDC,
    0.04 fewer clicks on EBHI-Seg. A convolution calibrated ``"native_bf16_only"`` is left out there
    (it stays in float32): the modified decoder's last block's first convolution, with which GlaS
    needed 0.36 more clicks than float32 for IoU 0.85 there. With the shipped calibration's other six
    that OCDC object (IoU 0.857 in float32) falls under 0.85, as with 8-bit weights; EBHI-Seg and
    GlaS stay within 0.15."""
    if native_bf16:
        return calibration
    return {name: dict(spec, **SEVEN_BIT) if spec["weight_levels"] != SEVEN_BIT["weight_levels"] else dict(spec)
            for name, spec in calibration.items() if not spec.get("native_bf16_only", False)}


def quantize(model, calibration: dict[str, dict]):
    """``model`` (an OpenVINO model, changed in place and returned) with the named convolutions in
    int8 as NNCF chose: the input fake-quantized per tensor in 256 levels over its calibrated range,
    the weights as int8 times a scale per output channel, symmetric, in ``weight_levels`` levels over
    ``weight_range`` of their largest magnitude (NNCF gives some convolutions 7-bit weights, 127
    levels, so that CPUs without VNNI cannot overflow their 16-bit sums). ``CalibrationError``
    where a name is not a convolution with constant weights in the network."""
    from openvino import opset13 as ops

    convolutions = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Convolution"}
    missing = sorted(set(calibration) - set(convolutions))
    if missing:
        raise CalibrationError(f"the network has no convolution {missing[0]!r} (calibrated for another export)")
    for name, spec in calibration.items():
        conv = convolutions[name]
        weights = conv.input(1).get_source_output()
        if weights.get_node().get_type_name() != "Constant":
            raise CalibrationError(f"convolution {name!r} has no constant weights")
        w = weights.get_node().get_data().astype(np.float32)
        largest = np.abs(w).reshape(w.shape[0], -1).max(axis=1).reshape(-1, *([1] * (w.ndim - 1)))
        top = (int(spec["weight_levels"]) - 1) // 2  # 127, or 63 for 7-bit weights
        scale = np.maximum(largest * np.float32(spec["weight_range"]) / top, np.float32(1e-12)).astype(np.float32)
        integers = np.clip(np.round(w / scale), -top, top).astype(np.int8)
        # int8 weights and their per-channel scale, as NNCF stores them: OpenVINO reads the pair as
        # int8 weights (a FakeQuantize on float weights of 127 levels it would run in bf16)
        weight = ops.multiply(ops.convert(ops.constant(integers), "f32"), ops.constant(scale))
        low, high = (np.float32(v) for v in spec["input_range"])
        activation = ops.fake_quantize(conv.input(0).get_source_output(), low, high, low, high, 256)
        conv.input(0).replace_source_output(activation.output(0))
        conv.input(1).replace_source_output(weight.output(0))
    model.validate_nodes_and_infer_types()
    return model

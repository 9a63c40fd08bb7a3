"""int8 convolutions from shipped calibration: found only for the very weights calibrated, put into
the compiled next-click network as quantizers on the named convolutions (their own cache entry,
close to PyTorch), refused for a network without those convolutions (the clicks then run in
PyTorch), chosen by precision "auto" through the runtime, the rest of the network in bf16 where
the CPU has it natively and in f32 where it does not. Mechanics on tiny SAMs; the shipped file
against the shipped decoder with the real weights."""

import json

import numpy as np
import pytest
import torch

from napari_sam_histo.engine import predictor as predictor_module
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.models import cpu_runtime, int8_convolutions, runtime_decoder
from napari_sam_histo.models.decoders import DecoderChoice, choose_decoder
from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder
from napari_sam_histo.models.registry import random_model

pytestmark = pytest.mark.skipif(not cpu_runtime.available(), reason="the CPU runtime (openvino, onnx) is not installed")

CONVOLUTIONS = [f"/upsampling/upsampling.{b}/{c}/Conv/WithoutBiases" for b in (0, 1) for c in ("conv1", "conv2")]


@pytest.fixture(autouse=True)
def runtime_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu_runtime.CPU_RUNTIME_ENV, raising=False)


@pytest.fixture
def modified():
    """A tiny model and a modified decoder built from its SAM decoder."""
    model = random_model("tiny", "cpu", seed=5)
    torch.manual_seed(0)
    decoder = ModifiedMaskDecoder.from_sam_decoder(model.sam.mask_decoder).eval()
    return model, decoder


def _spec(low=-4.0, high=4.0):
    return {"input_range": [low, high], "weight_levels": 255, "weight_range": 1.0}


def _calibration(tmp_path, decoder, names=CONVOLUTIONS, low=-4.0, high=4.0):
    path = tmp_path / f"decoder-test{int8_convolutions.SUFFIX}"
    path.write_text(json.dumps({"format": int8_convolutions.FORMAT, "weights": cpu_runtime.weights_digest(decoder),
                                "convolutions": {n: _spec(low, high) for n in names}}))
    return path


def _tile(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 420, 3), dtype=np.uint8)


def test_calibration_is_found_for_the_very_weights_only(tmp_path, modified):
    _model, decoder = modified
    path = _calibration(tmp_path, decoder)
    weights = cpu_runtime.weights_digest(decoder)
    assert int8_convolutions.calibration_for(weights, [path]) == {n: _spec() for n in CONVOLUTIONS}
    with torch.no_grad():
        decoder.mask_head.bias.add_(0.1)  # other weights (training): the calibration is not theirs
    assert int8_convolutions.calibration_for(cpu_runtime.weights_digest(decoder), [path]) is None
    damaged = tmp_path / f"damaged{int8_convolutions.SUFFIX}"
    damaged.write_text("{not json")
    assert int8_convolutions.calibration_for(weights, [damaged]) is None


def test_the_next_click_network_computes_the_named_convolutions_in_int8(tmp_path, modified):
    import openvino as ov

    model, decoder = modified
    calibration = int8_convolutions.calibration_for(cpu_runtime.weights_digest(decoder), [_calibration(tmp_path, decoder)])
    image_pe = model.sam.prompt_encoder.get_dense_pe()
    mask_embedding = model.sam.prompt_encoder.mask_downscaling
    int8 = runtime_decoder.build_network(decoder, image_pe, False, mask_embedding, "int8", calibration)
    bf16 = runtime_decoder.build_network(decoder, image_pe, False, mask_embedding, "bf16")
    assert int8.info["precision"] == "int8" and int8.info["path"] != bf16.info["path"]  # its own cache entry
    saved = ov.Core().read_model(f"{int8.info['path']}/network.xml")
    quantized = {t.get_node().get_friendly_name() for op in saved.get_ops() if op.get_type_name() == "FakeQuantize"
                 for t in op.output(0).get_target_inputs()}
    assert quantized == set(CONVOLUTIONS)  # inputs and weights of those four, nothing else
    assert int8.info["relative_error"] <= cpu_runtime.MAX_RELATIVE_ERRORS["int8"]
    with pytest.raises(ValueError):
        runtime_decoder.build_network(decoder, image_pe, False, mask_embedding, "int8", None)


def test_a_calibration_of_another_network_is_refused_and_clicks_run_in_pytorch(tmp_path, modified, monkeypatch):
    model, decoder = modified
    path = _calibration(tmp_path, decoder, names=["/upsampling/upsampling.9/conv1/Conv/WithoutBiases"])
    monkeypatch.setattr(int8_convolutions, "calibration_files", lambda: [path])
    choice = DecoderChoice("modified", decoder, "file", True)
    runtime = Predictor(model, choice, precision="int8", decoder_mode="runtime")
    assert runtime.decoder_precision == "int8"
    embedding = runtime.embed(_tile())
    points, labels = np.array([[50.0, 60.0], [90.0, 20.0]]), np.array([1, 0])
    first = runtime.decode(embedding, points[:1], labels[:1], multimask=True)  # the first click's network: bf16
    assert runtime.last_decoder_path == "runtime"
    with pytest.warns(RuntimeWarning, match="no convolution"):
        runtime.decode(embedding, points, labels, mask_input=first.low_res_logits[0])
    assert runtime.last_decoder_path == "pytorch"


def test_auto_chooses_int8_only_for_a_calibrated_decoder_through_the_runtime(tmp_path, modified, monkeypatch):
    model, decoder = modified
    path = _calibration(tmp_path, decoder)
    monkeypatch.setattr(int8_convolutions, "calibration_files", lambda: [path])
    monkeypatch.setattr(predictor_module, "bf16_is_fast", lambda device: True)
    choice = DecoderChoice("modified", decoder, "file", True)
    assert Predictor(model, choice, decoder_mode="runtime").decoder_precision == "int8"
    assert Predictor(model, choice, precision="bf16", decoder_mode="runtime").decoder_precision == "bf16"
    assert Predictor(model, choice, precision="fp32", decoder_mode="runtime").decoder_precision == "fp32"
    assert Predictor(model, choice, decoder_mode="pytorch").decoder_precision == "bf16"  # no runtime, no int8
    assert Predictor(model, "sam", precision="int8", decoder_mode="runtime").decoder_precision == "bf16"  # none
    # a CPU without native bf16: int8 convolutions with the rest in f32, and f32 where none are calibrated
    monkeypatch.setattr(predictor_module, "bf16_is_fast", lambda device: False)
    on_avx2 = Predictor(model, choice, decoder_mode="runtime")
    assert on_avx2.decoder_precision == "int8" and on_avx2.decoder_dtype == torch.float32  # its PyTorch fallback
    # with 7-bit weights: such a CPU may sum int8 products in pairs into 16 bits
    assert {spec["weight_levels"] for spec in on_avx2._compiled_decoder._int8_calibration.values()} == {127}
    assert Predictor(model, choice, precision="int8", decoder_mode="runtime").decoder_dtype == torch.float32
    assert Predictor(model, "sam", decoder_mode="runtime").decoder_precision == "fp32"
    assert Predictor(model, "sam", precision="int8", decoder_mode="runtime").decoder_precision == "fp32"
    assert Predictor(model, choice, decoder_mode="pytorch").decoder_precision == "fp32"
    assert Predictor(model, choice, precision="fp32", decoder_mode="runtime").decoder_precision == "fp32"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_an_int8_network_runs_the_rest_in_bf16_only_where_the_cpu_has_it(tmp_path, modified, monkeypatch, native_bf16):
    from napari_sam_histo.models import device

    model, decoder = modified
    monkeypatch.setattr(device, "bf16_is_fast", lambda d: native_bf16)
    rest = "bf16" if native_bf16 else "f32"
    assert cpu_runtime.int8_rest_precision() == rest
    hints = []
    compile_model = cpu_runtime._compile

    def recording(network, precision="f32"):
        hints.append(precision)
        return compile_model(network, precision)

    monkeypatch.setattr(cpu_runtime, "_compile", recording)
    import openvino as ov

    seen = []
    original = ov.Core.compile_model

    def compiled_with(self, network, device_name=None, config=None):
        seen.append((config or {}).get("INFERENCE_PRECISION_HINT"))
        return original(self, network, device_name, config)

    monkeypatch.setattr(ov.Core, "compile_model", compiled_with)
    compiled = runtime_decoder.CompiledDecoder(decoder, model.sam.prompt_encoder.get_dense_pe(),
                                               model.sam.prompt_encoder.mask_downscaling, "int8",
                                               {n: _spec() for n in CONVOLUTIONS})
    assert compiled.network(False, True) is not None and compiled.network(True, False) is not None
    # the next-click network in int8 with the rest as the CPU allows, the first click's all in that precision
    assert hints == ["int8", rest] and seen == [rest, rest]


def test_the_shipped_calibration_belongs_to_the_shipped_modified_decoder(mobile_sam):
    def calibration(name):
        return int8_convolutions.calibration_for(cpu_runtime.weights_digest(choose_decoder(mobile_sam, name).module))

    shortcuts = {f"/upsampling/upsampling.{b}/shortcut/Conv/WithoutBiases" for b in (0, 1)}
    last_block_first = {"/upsampling/upsampling.2/conv1/Conv/WithoutBiases"}
    assert calibration("modified").keys() == set(CONVOLUTIONS) | shortcuts | last_block_first
    assert calibration("md") is None


def test_the_command_line_offers_the_decoder_precisions_the_predictor_takes():
    from napari_sam_histo.cli.options import PRECISIONS

    assert PRECISIONS == predictor_module.DECODER_PRECISIONS
    with pytest.raises(ValueError):
        Predictor(random_model("tiny", "cpu"), "sam", encoder_precision="int8")


def test_weights_become_7_bit_where_int8_products_may_be_summed_in_16_bits():
    calibration = {"a": _spec(), "b": {"input_range": [-1.0, 2.0], "weight_levels": 127, "weight_range": 0.5}}
    assert int8_convolutions.for_this_cpu(calibration, native_bf16=True) == calibration
    seven = int8_convolutions.for_this_cpu(calibration, native_bf16=False)
    assert seven["a"] == {"input_range": [-4.0, 4.0], **int8_convolutions.SEVEN_BIT}
    assert seven["b"] == calibration["b"]  # already 7-bit: as NNCF chose
    assert calibration["a"]["weight_levels"] == 255  # the shipped calibration is not changed


def test_a_convolution_calibrated_native_bf16_only_stays_out_of_int8_elsewhere(mobile_sam):
    calibration = {"a": _spec(), "c": dict(_spec(), native_bf16_only=True)}
    assert int8_convolutions.for_this_cpu(calibration, native_bf16=True).keys() == {"a", "c"}
    assert int8_convolutions.for_this_cpu(calibration, native_bf16=False).keys() == {"a"}
    # the shipped calibration: the last block's first convolution only with VNNI
    shipped = int8_convolutions.calibration_for(cpu_runtime.weights_digest(choose_decoder(mobile_sam, "modified").module))
    marked = {name for name, spec in shipped.items() if spec.get("native_bf16_only")}
    assert marked == {"/upsampling/upsampling.2/conv1/Conv/WithoutBiases"}

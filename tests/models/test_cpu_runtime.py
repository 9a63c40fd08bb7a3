"""The CPU runtime (OpenVINO) behind the encoder copy and the decoders: the same float32 outputs as
PyTorch, the same cache keys, networks cached on disk by weights and runtime version and rebuilt
when either changes or the file is damaged, refused beyond the tolerance, and PyTorch whenever the
runtime is missing, off, refused or outdated by changed weights. Mechanics only, on tiny SAMs."""

import sys
import threading
import warnings

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.models import cpu_runtime, fast_encoder, runtime_decoder
from napari_sam_histo.models.decoders import (
    DecoderChoice,
    SingleMaskDecoder,
    choose_decoder,
)
from napari_sam_histo.models.device import bf16_is_fast
from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.models.residual_decoder import ResidualMaskDecoder
from napari_sam_histo.models.tissue_decoder import TissueDecoder
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array

pytestmark = pytest.mark.skipif(not cpu_runtime.available(), reason="the CPU runtime (openvino, onnx) is not installed")


@pytest.fixture(autouse=True)
def runtime_cache(tmp_path, monkeypatch):
    """Each test builds into a disk cache of its own."""
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cpu_runtime.CPU_RUNTIME_ENV, raising=False)
    return tmp_path / "cache" / cpu_runtime.CACHE_FOLDER


@pytest.fixture
def tiny():
    """A fresh tiny model per test: compiled networks are kept per module."""
    return random_model("tiny", "cpu", seed=3)


def _tile(seed: int = 0, size=(300, 420)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _small_spec(seed: int = 0) -> cpu_runtime.NetworkSpec:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1)).eval()
    return cpu_runtime.NetworkSpec("test", module, (torch.randn(1, 3, 16, 16),), ("x",), ("y",))


# -- the encoder --------------------------------------------------------------------------------
@pytest.mark.slow
def test_runtime_encoder_gives_eager_embeddings_under_the_same_cache_key(tiny):
    eager = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager")
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    image = _tile()
    reference = eager.embed(image).features
    out = fast.embed(image).features
    state = fast_encoder.status(tiny.sam.image_encoder)
    assert fast.last_encoder_path == "optimized" and state["backend"].startswith("openvino")
    assert fast.encoder_backend == state["backend"]
    assert state["relative_error"] <= 1e-5 and _relative(out, reference) <= 1e-4
    assert fast.key_for("slide", "tile") == eager.key_for("slide", "tile")


def test_a_precomputed_store_stays_valid_for_the_runtime_encoder(tiny, tmp_path):
    """An embedding stored by the eager encoder is what the runtime path finds (no encoding), and
    what the runtime would compute agrees with it within the store's float16 rounding."""
    source, box = from_array(_tile(2, (1024, 1024)), "slide-a"), TileBox(0, 0, 0, 1024, 1024)
    store = tmp_path / "store"
    eager = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager", cache=EmbeddingCache(store_dir=store))
    stored = eager.embedding_for(source, box)
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized",
                     cache=EmbeddingCache(store_dir=store))
    found = fast.embedding_for(source, box)
    assert fast.encoder_calls == 0
    computed = fast.embed(source.read_region(box))
    assert fast.last_encoder_path == "optimized" and fast.encoder_backend.startswith("openvino")
    assert _relative(computed.features, stored.features) <= 1e-4
    torch.testing.assert_close(computed.features, found.features, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_a_refused_encoder_network_warns_once_and_the_torchscript_copy_runs(tiny, monkeypatch):
    monkeypatch.setitem(cpu_runtime.MAX_RELATIVE_ERRORS, "f32", -1.0)  # any network is then too far off
    reference = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager").embed(_tile()).features
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    with pytest.warns(RuntimeWarning, match="CPU runtime could not be used for the image encoder") as caught:
        first = fast.embed(_tile()).features
        second = fast.embed(_tile()).features
    assert len([w for w in caught if "CPU runtime" in str(w.message)]) == 1
    assert fast.last_encoder_path == "optimized" and fast.encoder_backend == "torchscript"
    assert _relative(first, reference) <= 1e-4 and torch.equal(first, second)


@pytest.mark.slow
def test_without_the_runtime_the_encoder_copy_is_torchscript_and_decoders_run_in_pytorch(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    assert not cpu_runtime.available()
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized", decoder_mode="runtime")
    assert fast.decoder_mode == "pytorch" and fast.decoder_backend == "pytorch"
    embedding = fast.embed(_tile())
    assert fast.encoder_backend == "torchscript"
    prediction = fast.decode(embedding, np.array([[50.0, 60.0]]), np.array([1]))
    assert fast.last_decoder_path == "pytorch" and prediction.low_res_logits.shape[-2:] == (256, 256)


def test_the_environment_turns_the_runtime_off(tiny, monkeypatch):
    assert Predictor(tiny, "sam", decoder_mode="runtime").decoder_mode == "runtime"
    monkeypatch.setenv(cpu_runtime.CPU_RUNTIME_ENV, "0")
    assert not cpu_runtime.available()
    assert Predictor(tiny, "sam", decoder_mode="runtime").decoder_mode == "pytorch"


# -- the disk cache -----------------------------------------------------------------------------
def test_a_network_is_cached_by_weights_and_runtime_version_and_rebuilt_when_either_changes(runtime_cache,
                                                                                           monkeypatch):
    spec = _small_spec()
    first = cpu_runtime.compile_network(spec)
    again = cpu_runtime.compile_network(spec)
    assert not first.info["from_cache"] and again.info["from_cache"]
    assert again.info["path"] == first.info["path"] and len(list(runtime_cache.iterdir())) == 1
    torch.testing.assert_close(again(*spec.inputs), spec.module(*spec.inputs), rtol=1e-4, atol=1e-5)

    with torch.no_grad():
        spec.module[0].weight.add_(0.25)  # other weights: another network
    changed = cpu_runtime.compile_network(spec)
    assert not changed.info["from_cache"] and changed.info["path"] != first.info["path"]
    torch.testing.assert_close(changed(*spec.inputs), spec.module(*spec.inputs), rtol=1e-4, atol=1e-5)

    real_version = cpu_runtime.runtime_version
    monkeypatch.setattr(cpu_runtime, "runtime_version", lambda: real_version() + "-next")
    upgraded = cpu_runtime.compile_network(spec)
    assert not upgraded.info["from_cache"] and upgraded.info["path"] not in (first.info["path"], changed.info["path"])
    assert len(list(runtime_cache.iterdir())) == 3


def test_a_damaged_cached_network_is_rebuilt_never_run(runtime_cache):
    spec = _small_spec()
    built = cpu_runtime.compile_network(spec)
    weights_file = runtime_cache / built.info["path"].rsplit("/", 1)[-1] / "network.bin"
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    rebuilt = cpu_runtime.compile_network(spec)
    assert not rebuilt.info["from_cache"]
    torch.testing.assert_close(rebuilt(*spec.inputs), spec.module(*spec.inputs), rtol=1e-4, atol=1e-5)
    assert cpu_runtime.compile_network(spec).info["from_cache"]


def test_a_network_beyond_the_tolerance_is_refused_and_not_saved(runtime_cache, monkeypatch):
    monkeypatch.setitem(cpu_runtime.MAX_RELATIVE_ERRORS, "f32", -1.0)
    with pytest.raises(cpu_runtime.RuntimeRefused, match="differs from PyTorch's"):
        cpu_runtime.compile_network(_small_spec())
    assert not runtime_cache.exists() or not [p for p in runtime_cache.iterdir() if not p.name.startswith(".")]


def test_settings_that_change_no_weight_shape_are_part_of_the_key():
    a, b = _small_spec(), _small_spec()
    b.module[1].approximate = "tanh"  # GELU's flavour: same weights, other outputs
    digest = cpu_runtime.weights_digest(a.module)
    assert digest == cpu_runtime.weights_digest(b.module)
    assert a.key(digest) != b.key(digest)


# -- the decoders -------------------------------------------------------------------------------
def _decoders(tiny):
    modified = choose_decoder(tiny, "modified", allow_untrained=True)
    residual = ResidualMaskDecoder.from_sam_decoder(tiny.sam.mask_decoder).eval()
    with torch.no_grad():  # a correction that is not zero, as a trained one
        for parameter in residual.correction.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    single = SingleMaskDecoder(ModifiedMaskDecoder.from_sam_decoder(tiny.sam.mask_decoder).eval())
    return {"sam": "sam", "modified": modified, "residual": DecoderChoice("residual", residual, "untrained", False),
            "single": DecoderChoice("sam", single, "untrained", False)}


@pytest.mark.parametrize("name", ["sam", "modified", "single"])
@pytest.mark.slow
def test_runtime_decoders_give_pytorch_float32_masks_for_every_click(tiny, name):
    choice = _decoders(tiny)[name]
    runtime = Predictor(tiny, choice, precision="fp32", decoder_mode="runtime", allow_untrained=True)
    pytorch = Predictor(tiny, choice, precision="fp32", decoder_mode="pytorch", allow_untrained=True)
    assert runtime.decoder_mode == "runtime" and pytorch.decoder_mode == "pytorch"
    embedding = pytorch.embed(_tile())
    previous = None
    for clicks in (1, 2, 4):  # the number of prompt tokens changes from click to click
        # with and without a mask prompt, which the runtime network embeds itself
        points = np.array([[30.0 + 50 * i, 40.0 + 30 * i] for i in range(clicks)])
        labels = np.array([1] + [i % 2 for i in range(1, clicks)])
        for multimask, masked in ((True, False), (False, True), (False, False), (True, True)):
            mask = previous if masked and previous is not None else None
            a = runtime.decode(embedding, points, labels, mask_input=mask, multimask=multimask)
            b = pytorch.decode(embedding, points, labels, mask_input=mask, multimask=multimask)
            assert runtime.last_decoder_path == "runtime" and pytorch.last_decoder_path == "pytorch"
            assert a.low_res_logits.shape == b.low_res_logits.shape
            assert _relative(a.low_res_logits, b.low_res_logits) <= 1e-4
            torch.testing.assert_close(a.iou_predictions, b.iou_predictions, rtol=1e-4, atol=1e-5)
        previous = b.low_res_logits[0]
    assert runtime.decoder_backend.startswith("openvino")


def test_auto_picks_the_runtime_decoder_for_real_architectures_only(tiny, monkeypatch):
    assert Predictor(tiny, "sam").decoder_mode == "pytorch"  # the test SAM was not measured
    real = random_model("vit_t", "cpu")
    auto = Predictor(real, "sam")
    native = bf16_is_fast(real.device)  # auto: the runtime's bf16 networks where the CPU has native bf16
    assert auto.decoder_mode == "runtime" and auto.decoder_bf16 == native and auto.encoder_bf16 is False
    exact = Predictor(real, "sam", precision="fp32")
    assert exact.decoder_mode == "runtime" and not exact.decoder_bf16 and exact.decoder_dtype == torch.float32
    bf16 = Predictor(real, "sam", precision="bf16")  # the runtime in bfloat16, the PyTorch fallback too
    assert bf16.decoder_mode == "runtime" and bf16.decoder_bf16 and bf16.decoder_dtype == torch.bfloat16
    adapted = DecoderChoice("sam", real.sam.mask_decoder, "adapted", True)  # refitted while in use
    assert Predictor(real, adapted).decoder_mode == "pytorch"
    with pytest.raises(ValueError):
        Predictor(real, "sam", decoder_mode="fast")


def test_a_bf16_decoder_network_is_its_own_cache_entry_and_close_to_float32(tiny):
    f32 = Predictor(tiny, "sam", precision="fp32", decoder_mode="runtime")
    bf16 = Predictor(tiny, "sam", precision="bf16", decoder_mode="runtime")
    pytorch = Predictor(tiny, "sam", precision="fp32", decoder_mode="pytorch")
    embedding = pytorch.embed(_tile())
    points, labels = np.array([[50.0, 60.0], [90.0, 20.0]]), np.array([1, 0])
    reference = pytorch.decode(embedding, points, labels).low_res_logits
    a, b = f32.decode(embedding, points, labels), bf16.decode(embedding, points, labels)
    assert f32.last_decoder_path == "runtime" and bf16.last_decoder_path == "runtime"
    assert _relative(b.low_res_logits, reference) <= cpu_runtime.MAX_RELATIVE_ERRORS["bf16"]
    assert _relative(a.low_res_logits, reference) <= cpu_runtime.MAX_RELATIVE_ERRORS["f32"]
    built = {runtime_decoder.compiled_decoder(tiny.sam.mask_decoder, f32._dense_pe,
                                              tiny.sam.prompt_encoder.mask_downscaling, p).info["path"]
             for p in ("f32", "bf16")}
    assert len(built) == 2  # keyed by precision: the float32 network is never replaced by the bf16 one
    with pytest.raises(ValueError):
        cpu_runtime.NetworkSpec("x", tiny.sam.mask_decoder, (), (), (), precision="int8")


def test_decoders_that_branch_on_their_inputs_stay_in_pytorch(tiny):
    tissue = TissueDecoder(tiny.sam.mask_decoder)
    assert not runtime_decoder.exportable(tissue)
    residual = _decoders(tiny)["residual"]
    assert not runtime_decoder.exportable(residual.module)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # not tried, so no failed build to warn about
        predictor = Predictor(tiny, residual, decoder_mode="runtime", allow_untrained=True)
        predictor.decode(predictor.embed(_tile()), np.array([[50.0, 60.0]]), np.array([1]))
    assert predictor.decoder_mode == "pytorch" and predictor.last_decoder_path == "pytorch"
    assert runtime_decoder.exportable(SingleMaskDecoder(tiny.sam.mask_decoder))
    choice = DecoderChoice("tissue", tissue.eval(), "untrained", False)
    assert Predictor(tiny, choice, decoder_mode="runtime", allow_untrained=True).decoder_mode == "pytorch"


def test_a_refused_decoder_warns_once_and_clicks_run_in_pytorch(tiny, monkeypatch):
    monkeypatch.setitem(cpu_runtime.MAX_RELATIVE_ERRORS, "f32", -1.0)
    runtime = Predictor(tiny, "sam", precision="fp32", decoder_mode="runtime")
    pytorch = Predictor(tiny, "sam", precision="fp32", decoder_mode="pytorch")
    embedding = pytorch.embed(_tile())
    points, labels = np.array([[50.0, 60.0]]), np.array([1])
    with pytest.warns(RuntimeWarning, match="CPU runtime could not be used for the decoder") as caught:
        outs = [runtime.decode(embedding, points, labels, multimask=m) for m in (False, True, False)]
    assert len([w for w in caught if "CPU runtime" in str(w.message)]) == 1
    assert runtime.last_decoder_path == "pytorch"
    assert torch.equal(outs[0].low_res_logits, pytorch.decode(embedding, points, labels).low_res_logits)


def test_changed_decoder_weights_never_run_a_stale_network(tiny):
    runtime = Predictor(tiny, "sam", precision="fp32", decoder_mode="runtime")
    embedding = runtime.embed(_tile())
    points, labels = np.array([[50.0, 60.0]]), np.array([1])
    runtime.decode(embedding, points, labels)
    assert runtime.last_decoder_path == "runtime"
    with torch.no_grad():  # what an optimizer step does
        tiny.sam.mask_decoder.iou_token.weight.add_(0.5)
    after = runtime.decode(embedding, points, labels)
    assert runtime.last_decoder_path == "pytorch"
    reference = Predictor(tiny, "sam", precision="fp32", decoder_mode="pytorch").decode(embedding, points, labels)
    assert torch.equal(after.low_res_logits, reference.low_res_logits)


def test_a_predictor_that_does_not_wait_clicks_in_pytorch_while_the_network_builds(tiny):
    runtime = Predictor(tiny, "sam", precision="fp32", decoder_mode="runtime")
    runtime.wait_for_optimized_encoder = False  # as the dock sets it
    embedding = runtime.embed(_tile())
    points, labels = np.array([[50.0, 60.0]]), np.array([1])
    runtime.decode(embedding, points, labels)
    assert runtime.last_decoder_path == "pytorch"  # the build started in the background
    compiled = _compiled(tiny)
    for _ in range(600):
        if compiled.network(False, False, wait=False) is not None:
            break
        threading.Event().wait(0.1)
    runtime.decode(embedding, points, labels)
    assert runtime.last_decoder_path == "runtime"


@pytest.mark.slow
def test_prepare_builds_the_decoder_networks_ahead_of_the_first_click(tiny):
    runtime = Predictor(tiny, "sam", precision="fp32", decoder_mode="runtime")
    runtime.prepare_decoder(background=False)
    compiled = _compiled(tiny)
    # a first click (three masks, no mask prompt) and the next ones (one mask, from the last logits)
    assert compiled.network(True, False, wait=False) is not None and compiled.network(False, True, wait=False)
    runtime.wait_for_optimized_encoder = False
    embedding = runtime.embed(_tile())
    first = runtime.decode(embedding, np.array([[50.0, 60.0]]), np.array([1]), multimask=True)
    assert runtime.last_decoder_path == "runtime"
    runtime.decode(embedding, np.array([[50.0, 60.0], [90.0, 20.0]]), np.array([1, 0]),
                   mask_input=first.low_res_logits[0])
    assert runtime.last_decoder_path == "runtime"


def _compiled(model) -> runtime_decoder.CompiledDecoder:
    return runtime_decoder.compiled_decoder(model.sam.mask_decoder, model.sam.prompt_encoder.get_dense_pe(),
                                            model.sam.prompt_encoder.mask_downscaling)


@pytest.mark.slow
def test_an_embed_worker_builds_one_encoder_network_and_no_decoder_network(runtime_cache):
    from napari_sam_histo.cohort.encoder_worker import EncoderPlugin, ModelRecipe

    plugin = EncoderPlugin()
    recipe = ModelRecipe("vit_t", "cpu", random_weights=True)  # MobileSAM's shapes: auto picks the copy
    predictor = plugin.predictor(recipe)
    assert plugin.predictor(recipe) is predictor  # one per worker, shared by its threads
    assert predictor.encoder_backend.startswith("openvino")  # built before the first batch
    built = sorted(path.name.split("-")[0] + "-" + path.name.split("-")[1] for path in runtime_cache.iterdir())
    assert built == ["image-encoder"]  # the decoder never runs in a worker: nothing built for it


def test_point_prompts_in_numpy_are_sams_own(tiny):
    from napari_sam_histo.models.point_prompts import PointPrompts

    encoder = tiny.sam.prompt_encoder
    prompts = PointPrompts(encoder)
    rng = np.random.default_rng(0)
    for n in (1, 2, 7):
        points = rng.uniform(0, 1024, (n, 2)).astype(np.float32)
        labels = rng.integers(0, 2, n)
        with torch.no_grad():
            sparse, _ = encoder(points=(torch.from_numpy(points)[None], torch.from_numpy(labels)[None]), boxes=None,
                                masks=None)
        ours = prompts(points, labels)
        assert ours.shape == sparse.shape and ours.dtype == torch.float32
        torch.testing.assert_close(ours, sparse, rtol=1e-4, atol=2e-5)

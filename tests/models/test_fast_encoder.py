"""The optimized (traced + frozen) float32 image encoder: same embeddings as eager, chosen by "auto"
on a CPU for MobileSAM, never stale, never failing a click, one build per model across threads."""

import threading
import warnings

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.models import fast_encoder
from napari_sam_histo.models.device import FAST_ENCODER_ENV
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.slides.boxes import TileBox

TILE = TileBox(0, 1024, 1024, 1024, 1024)  # real H&E of the CMU-1 region


def _tile(seed: int = 0, size=(300, 420)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def tiny():
    """A fresh tiny model per test: the optimized copy is kept per encoder module."""
    return random_model("tiny", "cpu", seed=3)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_optimized_tiny_encoder_matches_eager(tiny):
    eager = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager")
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    image = _tile()
    reference = eager.embed(image).features
    assert eager.last_encoder_path == "eager"
    out = fast.embed(image).features
    assert fast.last_encoder_path == "optimized"
    _close(out, reference)
    state = fast_encoder.status(tiny.sam.image_encoder)
    assert state["state"] == "built" and state["relative_error"] < 1e-5 and state["build_s"] > 0


@pytest.mark.slow
def test_auto_uses_the_optimized_real_mobile_sam_encoder_with_eager_embeddings(mobile_sam, sample_source):
    fast = Predictor(mobile_sam, "sam", cache=EmbeddingCache(), precision="fp32")
    eager = Predictor(mobile_sam, "sam", cache=EmbeddingCache(), precision="fp32", encoder_mode="eager")
    assert fast.encoder_mode == "optimized" and eager.encoder_mode == "eager"
    assert fast.preprocessing_id == eager.preprocessing_id  # same fp32 math: one cache key
    a, b = fast.embedding_for(sample_source, TILE), eager.embedding_for(sample_source, TILE)
    assert (fast.last_encoder_path, eager.last_encoder_path) == ("optimized", "eager")
    _close(a.features, b.features)
    assert a.input_size == b.input_size and a.original_size == b.original_size


def test_auto_stays_eager_when_disabled_on_bf16_and_for_unmeasured_architectures(tiny, mobile_sam, monkeypatch):
    assert Predictor(tiny, "sam").encoder_mode == "eager"  # the test model is not a measured architecture
    assert Predictor(mobile_sam, "sam", encoder_precision="bf16").encoder_mode == "eager"
    with pytest.raises(ValueError):
        Predictor(mobile_sam, "sam", encoder_precision="bf16", encoder_mode="optimized")
    with pytest.raises(ValueError):
        Predictor(mobile_sam, "sam", encoder_mode="fast")
    pixels = torch.zeros(1, 3, 1024, 1024)
    assert Predictor(mobile_sam, "sam")._encoder_for(pixels)[1] == "optimized"
    monkeypatch.setenv(FAST_ENCODER_ENV, "0")
    predictor = Predictor(mobile_sam, "sam")
    assert predictor.encoder_mode == "eager"
    assert predictor._encoder_for(pixels) == (mobile_sam.sam.image_encoder, "eager")


def test_a_failed_build_warns_once_and_the_encoder_runs_eagerly(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(fast_encoder, "build_optimized", broken)
    eager = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager").embed(_tile()).features
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    with pytest.warns(RuntimeWarning, match="no TorchScript here") as caught:
        first = fast.embed(_tile()).features
        second = fast.embed(_tile()).features
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert fast.last_encoder_path == "eager"
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert fast_encoder.status(tiny.sam.image_encoder)["state"] == "failed"


def test_a_copy_that_disagrees_with_eager_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(fast_encoder, "build_optimized", lambda encoder, size, device: (encoder, 0.5))
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    with pytest.warns(RuntimeWarning, match="differs from the eager"):
        fast.embed(_tile())
    assert fast.last_encoder_path == "eager"


def test_changed_weights_never_run_a_stale_copy(tiny):
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    fast.embed(_tile())
    assert fast.last_encoder_path == "optimized"
    with torch.no_grad():  # what an optimizer step does: an in-place update
        next(tiny.sam.image_encoder.parameters()).add_(0.5)
    after = fast.embed(_tile()).features
    assert fast.last_encoder_path == "eager"
    reference = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager").embed(_tile()).features
    assert torch.equal(after, reference)
    assert fast_encoder.status(tiny.sam.image_encoder)["state"] == "stale"


def test_training_mode_runs_eagerly(tiny):
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    tiny.sam.image_encoder.train()
    try:
        fast.embed(_tile())
        assert fast.last_encoder_path == "eager"
        assert fast_encoder.status(tiny.sam.image_encoder)["state"] == "not built"
    finally:
        tiny.sam.image_encoder.eval()


def test_two_threads_embedding_at_once_build_once_and_agree(tiny, monkeypatch):
    builds = []
    real_build = fast_encoder.build_optimized

    def counting(*args):
        builds.append(threading.current_thread().name)
        return real_build(*args)

    monkeypatch.setattr(fast_encoder, "build_optimized", counting)
    # two predictors on one model: no shared predictor lock, only the module's one build
    predictors = [Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized") for _ in range(2)]
    image = _tile(1)
    results, start = [None, None], threading.Barrier(2)

    def work(i):
        start.wait()
        results[i] = predictors[i].embed(image).features

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not [w for w in caught if "optimized image encoder" in str(w.message)]  # no fallback
    assert len(builds) == 1
    assert [p.last_encoder_path for p in predictors] == ["optimized", "optimized"]
    assert torch.equal(results[0], results[1])
    reference = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager").embed(image).features
    _close(results[0], reference)


def test_prepare_builds_in_the_background(tiny):
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    thread = fast_encoder.prepare(tiny.sam.image_encoder, fast.image_size, fast.device)
    assert thread is not None
    assert fast_encoder.prepare(tiny.sam.image_encoder, fast.image_size, fast.device) is None  # one build
    fast.embed(_tile())  # waits for the build in flight rather than running a second one
    thread.join()
    assert fast.last_encoder_path == "optimized"


def test_exit_waits_for_a_background_build(tiny, monkeypatch):
    """napari quit while the copy builds must not abort the process (a daemon thread inside
    TorchScript at interpreter teardown): the atexit hook waits for the build, within a bound."""
    release = threading.Event()
    real_build = fast_encoder.build_optimized

    def slow(*args):
        release.wait(30)
        return real_build(*args)

    monkeypatch.setattr(fast_encoder, "build_optimized", slow)
    thread = fast_encoder.prepare(tiny.sam.image_encoder, 64, torch.device("cpu"))
    fast_encoder._wait_for_builds(timeout=0.2)  # bounded: returns although the build goes on
    assert thread.is_alive()
    threading.Timer(0.3, release.set).start()
    fast_encoder._wait_for_builds(timeout=60)
    assert not thread.is_alive() and fast_encoder.status(tiny.sam.image_encoder)["state"] in ("built", "failed")


def test_a_predictor_that_does_not_wait_runs_eager_while_the_copy_builds(tiny, monkeypatch):
    release = threading.Event()
    real_build = fast_encoder.build_optimized

    def slow(*args):
        release.wait(30)  # the build is in flight until the test lets it finish
        return real_build(*args)

    monkeypatch.setattr(fast_encoder, "build_optimized", slow)
    fast = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    fast.wait_for_optimized_encoder = False  # as the dock sets it
    reference = Predictor(tiny, "sam", precision="fp32", encoder_mode="eager").embed(_tile()).features
    _close(fast.embed(_tile()).features, reference)  # no wait: the build started in the background
    assert fast.last_encoder_path == "eager" and fast_encoder.status(tiny.sam.image_encoder)["state"] == "building"
    release.set()
    for _ in range(300):
        if fast_encoder.status(tiny.sam.image_encoder)["state"] == "built":
            break
        threading.Event().wait(0.1)
    fast.embed(_tile())
    assert fast.last_encoder_path == "optimized"


def test_perf_times_raw_and_end_to_end_encoder_in_one_run(tiny, monkeypatch):
    from napari_sam_histo import perf
    from napari_sam_histo.perf import _synthetic_tile, _time_encoder, format_report
    from napari_sam_histo.slides.reader import from_array

    pauses = []
    monkeypatch.setattr(perf.time, "sleep", pauses.append)
    predictor = Predictor(tiny, "sam", precision="fp32", encoder_mode="optimized")
    cache = predictor.cache
    timing = _time_encoder(predictor, from_array(_synthetic_tile(), "t"), TileBox(0, 0, 0, 1024, 1024), runs=1,
                           pause_s=0.25)
    assert timing["raw_s"] > 0 and timing["end_to_end_s"] > 0 and timing["build_s"] > 0
    assert pauses == [0.25] * 4  # before each timed call (a warm-up and a timed run of each path)
    assert predictor.cache is cache and len(cache) == 0  # timed on empty caches of its own
    assert predictor.encoder_calls == 2 and predictor.last_encoder_path == "optimized"
    decoder = {"backend": "openvino 2026.4.1", "precision": "fp32", "click_p50_s": 0.02, "click_p95_s": 0.03,
               "raw_p50_s": 0.01, "pytorch_fp32_click_p50_s": 0.05, "pytorch_fp32_raw_p50_s": 0.04, "trained": False}
    report = {"model": "m", "weights": "w", "device": "cpu", "cpu": "Some CPU", "cpu_features": "avx2",
              "torch_threads": 2, "clicks": 20, "pause_s": 0.1, "encoder_s_per_tile": 1.0, "encoder_raw_fp32_s_per_tile": 2.0,
              "encoder_speedup_vs_raw": 2.0, "encoder_mode": "optimized", "encoder_precision": "fp32",
              "encoder_backend": "torchscript", "encoder_build_s": 4.0, "encoder_calls_per_tile": 1,
              "decoders": {"sam": decoder}}
    text = format_report(report)
    assert "raw fp32 eager encoder forward      2.00 s" in text and "2.00x" in text and "built once in 4.0 s" in text
    assert "Some CPU (avx2)" in text and "fp32 encoder, torchscript)" in text
    assert "each call 0.1 s after the one before" in text
    assert "openvino 2026.4.1" in text and "2.50x" in text  # the click's speed-up over PyTorch fp32

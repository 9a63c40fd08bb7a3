"""Training and inference agree on what ran: native-bf16 detection, the runtime every report
records (precision, device, versions), resume on another runtime refused, the on-disk embedding
store reused across runs and still charged in SPCe2e."""

import json
import threading

import pytest
import torch

from napari_sam_histo.cli import main
from napari_sam_histo.errors import InputError
from napari_sam_histo.evaluation import runtime as runtime_module
from napari_sam_histo.evaluation.benchmark import run_benchmark
from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig, build_methods
from napari_sam_histo.models.device import bf16_is_fast

from .test_benchmark import Oracle, make_dataset
from .test_benchmark_report_folder import rows

# -- bf16_is_fast ---------------------------------------------------------------------------------

def fake_cuda(monkeypatch, capability, native, keyword=True):
    """A CUDA GPU of ``capability`` whose bf16 is ``native`` (emulated bf16 is always 'supported')."""
    calls = []

    def is_bf16_supported(*args, **kwargs):
        if kwargs and not keyword:
            raise TypeError("is_bf16_supported() got an unexpected keyword argument 'including_emulation'")
        calls.append(kwargs)
        return native or kwargs.get("including_emulation", True)

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


def test_emulated_bf16_on_a_pre_ampere_gpu_is_not_fast(monkeypatch):
    fake_cuda(monkeypatch, (7, 5), native=False)  # a T4: bf16 'supported' through emulation only
    assert torch.cuda.is_bf16_supported() is True
    assert bf16_is_fast(torch.device("cuda")) is False


def test_native_bf16_on_ampere_and_newer_is_fast(monkeypatch):
    calls = fake_cuda(monkeypatch, (8, 0), native=True)
    assert bf16_is_fast(torch.device("cuda")) is True
    assert calls == [{"including_emulation": False}]
    fake_cuda(monkeypatch, (9, 0), native=False)  # capability alone is not enough
    assert bf16_is_fast(torch.device("cuda:0")) is False


def test_an_older_torch_without_the_keyword_falls_back(monkeypatch):
    fake_cuda(monkeypatch, (8, 6), native=True, keyword=False)
    assert bf16_is_fast(torch.device("cuda")) is True
    fake_cuda(monkeypatch, (7, 0), native=True, keyword=False)
    assert bf16_is_fast(torch.device("cuda")) is False


def test_cpu_bf16_follows_onednn_and_mps_is_never_fast(monkeypatch):
    for answer in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda answer=answer: answer)
        assert bf16_is_fast(torch.device("cpu")) is answer
    assert bf16_is_fast(torch.device("mps")) is False


# -- the runtime in the report --------------------------------------------------------------------

def sam_method(tiny_model, precision, name):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.evaluation.runner import SamClickModel

    return SamClickModel(Predictor(tiny_model, "sam", precision=precision), name)


def test_the_device_is_named_gpu_or_cpu_model(monkeypatch):
    class FakePredictor:
        device, decoder_precision, encoder_bf16, encoder_mode = torch.device("cuda"), "bf16", False, "eager"

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert runtime_module.predictor_runtime(FakePredictor()) == {
        "decoder_precision": "bf16", "encoder_precision": "fp32", "encoder_mode": "eager", "device_type": "cuda",
        "device_name": "NVIDIA H200"}
    assert runtime_module.cpu_model() and runtime_module.device_name(torch.device("cpu")) == runtime_module.cpu_model()


def test_summary_table_and_console_record_what_ran(tmp_path, tiny_model):
    import napari_sam_histo

    config = BenchmarkConfig(str(make_dataset(tmp_path / "d", n=1)), str(tmp_path / "r"), max_clicks=2)
    summary = run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")])
    runtime = summary["runtime"]
    assert runtime["torch"] == torch.__version__ and runtime["napari_sam_histo"] == napari_sam_histo.__version__
    assert runtime["decoder_precision"] == "fp32" and runtime["encoder_precision"] == "fp32"
    assert runtime["device_type"] == "cpu" and runtime["device_name"] == runtime_module.cpu_model()
    assert runtime["methods"]["tiny+sam"]["cpu_threads"] == torch.get_num_threads()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["runtime"] == runtime
    first = (tmp_path / "r" / "table.txt").read_text().splitlines()[0]
    assert first.startswith("runtime: decoder fp32, encoder fp32 on cpu (" + runtime_module.cpu_model())
    assert f"torch {torch.__version__}, napari-sam-histo {napari_sam_histo.__version__}" in first


def test_methods_that_differ_are_recorded_one_by_one(tmp_path, tiny_model):
    from napari_sam_histo.evaluation.report import format_table

    methods = [sam_method(tiny_model, "fp32", "a"), sam_method(tiny_model, "bf16", "b"), Oracle()]
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d", n=1)), str(tmp_path / "r"), max_clicks=2)
    summary = run_benchmark(config, methods=methods)
    runtime = summary["runtime"]
    assert runtime["decoder_precision"] == "mixed" and runtime["encoder_precision"] == "fp32"
    assert {n: m["decoder_precision"] for n, m in runtime["methods"].items()} == {"a": "fp32", "b": "bf16"}
    lines = format_table(summary).splitlines()
    assert lines[0].endswith("per method:")
    assert lines[1].startswith("  a: decoder fp32") and lines[2].startswith("  b: decoder bf16")
    assert lines[3].split()[:2] == ["Method", "NoC@80"]


def test_a_report_without_a_runtime_says_so():
    from napari_sam_histo.evaluation.report import format_table

    summary = {"thresholds": [0.9], "methods": {}}
    assert format_table(summary).splitlines()[0] == "runtime: not recorded"


def test_resume_on_another_precision_is_refused_and_the_report_kept(tmp_path, tiny_model):
    data = make_dataset(tmp_path / "d", n=3)
    config = BenchmarkConfig(str(data), str(tmp_path / "r"), max_clicks=2)
    cancel = threading.Event()
    run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")], cancel=cancel,
                  progress=lambda done, total: done == 1 and cancel.set())
    before = {name: (tmp_path / "r" / name).read_bytes() for name in ("samples.csv", "summary.json")}
    with pytest.raises(InputError) as caught:
        run_benchmark(config, methods=[sam_method(tiny_model, "bf16", "tiny+sam")], existing="resume")
    message = str(caught.value)
    assert "another runtime" in message and "tiny+sam" in message
    assert "decoder fp32" in message and "decoder bf16" in message and "--overwrite" in message
    assert {name: (tmp_path / "r" / name).read_bytes() for name in before} == before
    # The same runtime resumes.
    resumed = run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")], existing="resume")
    assert resumed["methods"]["tiny+sam"]["n_samples"] == 3 and not resumed["partial"]


def test_resume_on_another_torch_is_refused_and_an_unrecorded_runtime_resumes(tmp_path, tiny_model):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d", n=2)), str(tmp_path / "r"), max_clicks=2, limit=1)
    run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")])
    path = tmp_path / "r" / "summary.json"
    summary = json.loads(path.read_text())
    summary["runtime"]["torch"] = "1.13.0"
    path.write_text(json.dumps(summary))
    config.limit = None
    with pytest.raises(InputError, match="differs in torch"):
        run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")], existing="resume")
    del summary["runtime"]  # a report from before runtimes were recorded
    path.write_text(json.dumps(summary))
    resumed = run_benchmark(config, methods=[sam_method(tiny_model, "fp32", "tiny+sam")], existing="resume")
    assert resumed["methods"]["tiny+sam"]["n_samples"] == 2 and resumed["runtime"]["torch"] == torch.__version__


# -- the command line: --precision and --embedding-store ------------------------------------------

@pytest.fixture
def tiny_load(monkeypatch, tiny_model):
    """``--model tiny`` loads the session's tiny random model (no weights on disk needed)."""
    import napari_sam_histo.models.registry as registry

    monkeypatch.setattr(registry, "load_model", lambda name, device=None: tiny_model)


def test_cli_precision_reaches_the_decoder_and_the_report(tmp_path, capsys, tiny_load):
    data = make_dataset(tmp_path / "d", n=1)
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["benchmark", str(data), "--model", "tiny", "--max-clicks", "2", "--quiet",
                     "--precision", precision, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["precision"] == precision
        assert summary["runtime"]["decoder_precision"] == precision
        printed = capsys.readouterr().out
        assert printed.startswith(f"runtime: decoder {precision}, encoder fp32 on cpu (")
    assert main(["benchmark", str(data), "--model", "tiny", "--max-clicks", "2", "--quiet",
                 "--precision", "bf16", "--out", str(tmp_path / "fp32"), "--resume"]) == 2
    assert "another runtime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", str(data), "--precision", "fp16", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_embedding_store_is_reused_by_a_later_run_and_still_charged(tmp_path, capsys, tiny_load):
    data = make_dataset(tmp_path / "d", n=2)
    store = tmp_path / "store"
    common = ["benchmark", str(data), "--model", "tiny", "--max-clicks", "3", "--quiet", "--precision", "fp32",
              "--embedding-store", str(store)]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "summary.json").read_text())["methods"]["tiny-random+sam"]
    assert first["encoder_calls"] == 2 and first["embeddings_from_store"] == 0
    assert len(list(store.glob("*.zarr"))) == 2
    capsys.readouterr()

    assert main(common + ["--out", str(tmp_path / "b")]) == 0  # a later run: fresh models and caches
    second = json.loads((tmp_path / "b" / "summary.json").read_text())["methods"]["tiny-random+sam"]
    assert second["encoder_calls"] == 0 and second["embeddings_from_store"] == 2
    assert "2 embeddings read from it" in capsys.readouterr().out
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    ious = [{k: v for k, v in r.items() if k.startswith("iou_") or k == "sample"} for r in a]
    assert ious == [{k: v for k, v in r.items() if k.startswith("iou_") or k == "sample"} for r in b]  # exact

    # Each sample of the second run is charged at the encoder seconds recorded in the store.
    recorded = [_recorded_encode_s(p) for p in store.glob("*.zarr")]
    assert all(s > 0 for s in recorded)
    assert sum(float(r["total_s"]) for r in b) >= sum(recorded)


def _recorded_encode_s(path) -> float:
    import zarr

    return float(zarr.open_array(str(path), mode="r").attrs["encode_s"])


@pytest.mark.slow
def test_the_store_is_reused_only_on_the_device_and_dtype_that_wrote_it(tmp_path, monkeypatch, tiny_model,
                                                                        tiny_load):
    data = make_dataset(tmp_path / "d", n=1)
    store = str(tmp_path / "store")

    def run(out, **kwargs):
        config = BenchmarkConfig(str(data), str(tmp_path / out), models=["tiny"], max_clicks=2, precision="fp32",
                                 embedding_store=store, **kwargs)
        return run_benchmark(config, methods=build_methods(config))["methods"]["tiny-random+sam"]

    assert run("a")["encoder_calls"] == 1
    assert run("b")["encoder_calls"] == 0
    assert run("c", embedding_store_dtype="float16")["encoder_calls"] == 1  # not the float32 entries
    assert run("d", embedding_store_dtype="float16")["embeddings_from_store"] == 1
    monkeypatch.setattr(runtime_module, "cpu_model", lambda: "Another CPU")  # the store moved to another machine
    moved = run("e")
    assert moved["encoder_calls"] == 1 and moved["embeddings_from_store"] == 0

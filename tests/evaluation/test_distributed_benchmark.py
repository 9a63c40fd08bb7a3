"""The benchmark on dask.distributed (a real LocalCluster of 2 worker processes, real MobileSAM):
the same report as one process (same samples, clicks, IoUs, NoC, skips, summary), resume across
schedulers, cancel, and a failing task named by its image."""

import csv
import json
import threading

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from distributed import WorkerPlugin

from napari_sam_histo.cohort.cluster import cluster_client
from napari_sam_histo.evaluation.benchmark import run_benchmark
from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig
from napari_sam_histo.evaluation.distributed_benchmark import BenchmarkWorkerError

from .test_benchmark import _disk

TIMING_COLUMNS = ("decoder_s_per_click", "total_s")


def make_hard_dataset(root, n=4, broken_after=None):
    """``n`` images where MobileSAM needs 2-3 clicks (a two-lobed target beside a look-alike), and
    an unreadable image (garbage bytes, a good mask) sorted after ``img{broken_after}``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    size = (96, 112)
    for i in range(n):
        target = _disk(size, (40 + 3 * i, 40), 14) | _disk(size, (58, 60 + 2 * i), 10)
        other = _disk(size, (30, 80 - i), 12) | _disk(size, (75, 25), 9)
        image = rng.integers(60, 140, size + (3,), dtype=np.uint8)
        image[target] = np.clip(image[target].astype(int) + 50 + 10 * i, 0, 255)
        image[other] = np.clip(image[other].astype(int) + 45, 0, 255)
        iio.imwrite(root / "images" / f"img{i}.png", image)
        iio.imwrite(root / "masks" / f"img{i}.png", (target * 255).astype(np.uint8))
    if broken_after is not None:
        (root / "images" / f"img{broken_after}x.png").write_bytes(b"not a png at all")
        iio.imwrite(root / "masks" / f"img{broken_after}x.png", (target * 255).astype(np.uint8))
    return root


def config_for(data, out, **kwargs):
    return BenchmarkConfig(str(data), str(out), models=["vit_t"], max_clicks=5, device="cpu", **kwargs)


class one_torch_thread:
    """The single-process runs use one torch thread, as each worker does (``cohort.cluster``): the
    same runtime, so a report made here may be resumed on the cluster and the other way round."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def rows(folder):
    with open(folder / "samples.csv", newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(stream)]


def comparable(summary):
    """The summary without what may differ between two runs of one protocol: seconds, folder,
    where it ran."""
    summary = json.loads(json.dumps(summary))
    for key in ("out_dir", "scheduler", "workers", "limit"):
        summary["config"].pop(key)
    summary["runtime"].pop("distributed", None)
    for m in summary["methods"].values():
        m.pop("spc_decoder_s")
        m.pop("spc_total_s")
    return summary


@pytest.fixture(scope="module")
def cluster(mobile_sam):
    """A LocalCluster of 2 worker processes, reached by its address as a remote cluster is (one
    cluster for the module: starting one costs seconds of CPU on a small machine)."""
    with cluster_client("local", 2) as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def single_methods(mobile_sam):
    """``build_methods`` of ``config_for``, built once for this module's single-process runs (the
    optimized encoder takes seconds to build); ``fresh`` empties their embedding cache and zeroes
    their counts, so that each run is that of a new process."""
    from napari_sam_histo.evaluation.benchmark_config import build_methods

    methods = build_methods(config_for("unused", "unused"))

    def fresh():
        for method in methods:
            method.predictor.cache.clear()
            method.predictor.encoder_calls = method.store_loads = 0
        return methods

    return fresh


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster, single_methods):
    """One dataset (4 images and an unreadable one) benchmarked in this process and on the cluster."""
    root = tmp_path_factory.mktemp("distributed")
    data = make_hard_dataset(root / "data", broken_after=1)
    single, spread, events = [], [], []
    with one_torch_thread():
        single_summary = run_benchmark(config_for(data, root / "single"), single_methods(), on_result=single.append)
    spread_summary = run_benchmark(config_for(data, root / "spread", scheduler=cluster, workers=2),
                                   on_result=spread.append, progress=lambda done, total: events.append((done, total)))
    return {"root": root, "data": data, "single": single, "spread": spread, "events": events, "scheduler": cluster,
            "single_summary": single_summary, "spread_summary": spread_summary}


@pytest.mark.slow
def test_the_cluster_writes_the_report_one_process_writes(runs):
    root, single, spread = runs["root"], runs["single"], runs["spread"]
    assert [(r.method, r.sample_id) for r in spread] == [(r.method, r.sample_id) for r in single]
    assert [r.sample_id for r in single] == ["img0", "img1", "img2", "img3"]
    assert max(len(r.clicks) for r in single) >= 2  # clicks after the first are compared too
    for a, b in zip(single, spread):
        assert b.clicks == a.clicks  # same rows, columns and signs
        np.testing.assert_allclose(b.ious, a.ious, rtol=0, atol=1e-6)
    assert rows(root / "spread") == rows(root / "single")  # NoC at every threshold, IoU per click, order
    assert comparable(runs["spread_summary"]) == comparable(runs["single_summary"])
    assert comparable(json.loads((root / "spread" / "summary.json").read_text())) == comparable(
        runs["single_summary"])
    assert runs["spread_summary"]["methods"]["vit_t+sam"]["encoder_calls"] == 4
    assert runs["events"] == [(i, 5) for i in range(1, 6)]  # one event per image, in order, as one process


def test_the_report_says_how_many_workers_ran(runs):
    summary = runs["spread_summary"]
    assert summary["runtime"]["distributed"] == {"scheduler": runs["scheduler"], "workers": 2}
    assert summary["runtime"]["methods"]["vit_t+sam"]["cpu_threads"] == 1
    assert summary["config"]["scheduler"] == runs["scheduler"] and summary["config"]["workers"] == 2
    assert not summary["partial"]
    first = (runs["root"] / "spread" / "table.txt").read_text().splitlines()[0]
    assert first.endswith(f"; 2 dask workers ({runs['scheduler']})")


def test_an_unreadable_image_is_skipped_as_in_one_process(runs):
    single = runs["single_summary"]["methods"]["vit_t+sam"]["skipped"]
    spread = runs["spread_summary"]["methods"]["vit_t+sam"]["skipped"]
    assert spread == single and list(spread) == ["img1x"]
    assert spread["img1x"].startswith("the image file could not be read")
    assert [r["sample"] for r in rows(runs["root"] / "spread")] == ["img0", "img1", "img1x", "img2", "img3"]
    assert rows(runs["root"] / "spread")[2]["status"] == "skipped"


@pytest.mark.slow
def test_a_cancelled_cluster_run_resumes_in_one_process_and_then_on_the_cluster(runs, cluster, single_methods):
    """Cancel, resume in this process for one more image and the unreadable one, resume on the
    cluster: the report of the uninterrupted run (another scheduler, the same runtime: accepted)."""
    root, data = runs["root"], runs["data"]
    out = root / "resumed"
    cancel = threading.Event()
    partial = run_benchmark(config_for(data, out, scheduler=cluster), cancel=cancel,
                            progress=lambda done, total: done == 1 and cancel.set())
    assert partial["partial"] and partial["methods"]["vit_t+sam"]["n_samples"] == 1
    assert json.loads((out / "summary.json").read_text())["partial"]
    assert [r["sample"] for r in rows(out)] == ["img0"]
    ran = []
    with one_torch_thread():
        run_benchmark(config_for(data, out, limit=3), single_methods(), existing="resume", on_result=ran.append)
    assert [r.sample_id for r in ran] == ["img1"] and [r["sample"] for r in rows(out)] == ["img0", "img1", "img1x"]
    ran = []
    summary = run_benchmark(config_for(data, out, scheduler=cluster), existing="resume", on_result=ran.append)
    assert [r.sample_id for r in ran] == ["img2", "img3"]  # img0, img1 were not run again
    assert rows(out) == rows(root / "single")
    assert comparable(summary) == comparable(runs["single_summary"])
    assert summary["methods"]["vit_t+sam"]["encoder_calls"] == 4  # 1 + 1 + 2, counted across the three runs


class FailOn(WorkerPlugin):
    """Makes ``run_sample`` raise on the workers for one sample, as a bug in a decoder would."""

    name = "test-fail-on"

    def __init__(self, sample_id):
        self.sample_id = sample_id

    def setup(self, worker):
        import napari_sam_histo.evaluation.distributed_benchmark as module

        real, failing_id = module.run_sample, self.sample_id

        def run_sample(method, sample, *args, **kwargs):
            if sample.sample_id == failing_id:
                raise RuntimeError("the decoder broke")
            return real(method, sample, *args, **kwargs)

        self.real, module.run_sample = real, run_sample

    def teardown(self, worker):
        import napari_sam_histo.evaluation.distributed_benchmark as module

        module.run_sample = self.real


@pytest.mark.slow
def test_a_failing_task_names_its_image_and_leaves_the_report_before_it(runs, cluster, tmp_path):
    from distributed import Client

    data = make_hard_dataset(tmp_path / "data", n=2)
    out = tmp_path / "r"
    with Client(cluster) as client:
        client.register_plugin(FailOn("img1"))
        try:
            with pytest.raises(BenchmarkWorkerError) as caught:
                run_benchmark(config_for(data, out, scheduler=cluster))
        finally:
            client.unregister_worker_plugin(FailOn.name)
    message = str(caught.value)
    assert str(data / "images" / "img1.png") in message and "the decoder broke" in message
    assert str(out) in message
    assert json.loads((out / "summary.json").read_text())["partial"]
    assert [r["sample"] for r in rows(out)] == ["img0"]

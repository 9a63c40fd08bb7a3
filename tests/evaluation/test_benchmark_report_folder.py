"""A report folder that already holds a report: refused, resumed, or overwritten; never truncated."""

import csv
import json
import threading

import pytest

from napari_sam_histo.cli import main
from napari_sam_histo.errors import InputError
from napari_sam_histo.evaluation.benchmark import run_benchmark
from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig

from .test_benchmark import Oracle, Stuck, make_dataset

TIMING = ("spc_decoder_s", "spc_total_s")


def tiny_methods(tiny_model):
    """Two methods on the tiny random model (a fresh predictor each time, as in a new process)."""
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.evaluation.runner import SamClickModel

    predictor = Predictor(tiny_model, "sam", precision="fp32")
    return [SamClickModel(predictor, "tiny+sam"), SamClickModel(predictor, "tiny+sam/points", mask_prompt=False)]


def comparable(summary: dict) -> dict:
    """The summary without what differs between two runs of the same protocol (time, folder)."""
    summary = json.loads(json.dumps(summary))
    summary["config"].pop("out_dir")
    for m in summary["methods"].values():
        for key in TIMING:
            m.pop(key)
    return summary


def rows(folder):
    return list(csv.DictReader(open(folder / "samples.csv", newline="")))


def test_a_second_run_into_a_report_folder_is_refused_and_the_report_kept(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"))
    run_benchmark(config, methods=[Oracle()])
    before = {name: (tmp_path / "r" / name).read_bytes() for name in ("samples.csv", "summary.json")}
    with pytest.raises(InputError) as caught:
        run_benchmark(config, methods=[Stuck()])
    message = str(caught.value)
    assert str(tmp_path / "r") in message and "--resume" in message and "--overwrite" in message
    assert "choose another folder" in message
    assert {name: (tmp_path / "r" / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_report(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"), max_clicks=3)
    run_benchmark(config, methods=[Oracle()])
    summary = run_benchmark(config, methods=[Stuck()], existing="overwrite")
    assert list(summary["methods"]) == ["stuck"]
    assert [r["method"] for r in rows(tmp_path / "r")] == ["stuck"] * 3


def test_an_empty_or_unrelated_folder_is_not_a_report(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"))
    assert run_benchmark(config, methods=[Oracle()])["methods"]["oracle"]["n_samples"] == 3
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_resume_after_a_cancel_gives_the_summary_of_an_uninterrupted_run(tmp_path, tiny_model):
    data = make_dataset(tmp_path / "d", n=3)
    straight = run_benchmark(BenchmarkConfig(str(data), str(tmp_path / "a"), max_clicks=3),
                             methods=tiny_methods(tiny_model))

    config = BenchmarkConfig(str(data), str(tmp_path / "b"), max_clicks=3)
    cancel = threading.Event()
    partial = run_benchmark(config, methods=tiny_methods(tiny_model), cancel=cancel,
                            progress=lambda done, total: done == 1 and cancel.set())
    assert partial["partial"] and partial["methods"]["tiny+sam"]["n_samples"] == 1
    ran = []
    resumed = run_benchmark(config, methods=tiny_methods(tiny_model), existing="resume", on_result=ran.append)
    assert sorted({r.sample_id for r in ran}) == ["s1", "s2"]  # s0 was not run again
    assert comparable(resumed) == comparable(straight)
    assert resumed["methods"]["tiny+sam"]["encoder_calls"] == 3  # 1 before the cancel + 2 after
    assert comparable(json.loads((tmp_path / "b" / "summary.json").read_text())) == comparable(straight)
    keys = [(r["method"], r["sample"]) for r in rows(tmp_path / "b")]
    assert len(keys) == len(set(keys)) == 6
    assert sorted(keys) == sorted((r["method"], r["sample"]) for r in rows(tmp_path / "a"))


def test_resume_keeps_skipped_samples_and_redoes_a_line_cut_short(tmp_path):
    data = make_dataset(tmp_path / "d", n=3)
    (data / "masks" / "s2.png").unlink()  # skipped: no mask
    config = BenchmarkConfig(str(data), str(tmp_path / "r"))
    straight = run_benchmark(config, methods=[Oracle()])
    csv_path = tmp_path / "r" / "samples.csv"
    text = csv_path.read_text()
    lines = text.splitlines(keepends=True)
    assert lines[2].startswith("oracle,s1,ok")
    csv_path.write_text("".join(lines[:2]) + lines[2][:15])  # killed while writing s1's row
    ran = []
    resumed = run_benchmark(config, methods=[Oracle()], existing="resume", on_result=ran.append)
    assert [r.sample_id for r in ran] == ["s1"]
    assert resumed["methods"]["oracle"]["skipped"] == straight["methods"]["oracle"]["skipped"]
    assert resumed["methods"]["oracle"]["n_samples"] == 2
    assert [r["sample"] for r in rows(tmp_path / "r")] == ["s0", "s1", "s2"]


def test_resume_with_another_protocol_is_refused(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"), max_clicks=5)
    run_benchmark(config, methods=[Oracle()])
    before = (tmp_path / "r" / "samples.csv").read_bytes()
    config.max_clicks = 7
    with pytest.raises(InputError, match="max_clicks = 5.*max_clicks = 7"):
        run_benchmark(config, methods=[Oracle()], existing="resume")
    config.max_clicks, config.thresholds = 5, (0.5,)
    with pytest.raises(InputError, match="thresholds"):
        run_benchmark(config, methods=[Oracle()], existing="resume")
    assert (tmp_path / "r" / "samples.csv").read_bytes() == before


# -- the command line ----------------------------------------------------------------------------

@pytest.fixture
def tiny_cli(monkeypatch, tiny_model):
    """``benchmark`` on the command line with the tiny model in place of the named ones."""
    import napari_sam_histo.evaluation.benchmark as benchmark

    monkeypatch.setattr(benchmark, "build_methods", lambda config: tiny_methods(tiny_model)[:1])


@pytest.mark.slow
def test_cli_refuses_an_existing_report_then_resumes_it(tmp_path, capsys, tiny_cli):
    data = make_dataset(tmp_path / "d", n=3)
    common = ["benchmark", str(data), "--max-clicks", "3", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--limit", "1"]) == 0  # as if interrupted after 1
    capsys.readouterr()
    before = (tmp_path / "b" / "samples.csv").read_bytes()
    assert main(common + ["--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-sam-histo: The report folder") and str(tmp_path / "b") in err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "b" / "samples.csv").read_bytes() == before

    assert main(common + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    straight = json.loads((tmp_path / "a" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert comparable(resumed) == comparable(straight)
    assert [r["sample"] for r in rows(tmp_path / "b")] == ["s0", "s1", "s2"]

    assert main(common + ["--out", str(tmp_path / "b"), "--overwrite", "--limit", "1"]) == 0
    assert [r["sample"] for r in rows(tmp_path / "b")] == ["s0"]
    with pytest.raises(SystemExit):  # one or the other
        main(common + ["--out", str(tmp_path / "b"), "--resume", "--overwrite"])


def test_cli_lists_the_first_skipped_samples_with_their_reasons(tmp_path, capsys, tiny_cli):
    data = make_dataset(tmp_path / "d", n=1)
    for i in range(7):
        (data / "images" / f"z{i}.png").write_bytes((data / "images" / "s0.png").read_bytes())  # no masks
    assert main(["benchmark", str(data), "--max-clicks", "2", "--quiet", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "skipped 7 samples:" in out
    listed = [line for line in out.splitlines() if line.startswith("  z")]
    assert len(listed) == 5 and listed[0].startswith("  z0: no mask was found for the image ")
    assert "… and 2 more (all are listed in samples.csv)" in out

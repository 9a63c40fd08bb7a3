import json

import pytest

from napari_sam_histo.cli import main


def test_weights_list_names_the_default(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "vit_t" in out and "vit_b_histopathology" in out and "MobileSAM" in out


def test_weights_path_of_a_missing_model(empty_cache, capsys):
    assert main(["weights", "path", "vit_h"]) == 1
    assert "not on disk" in capsys.readouterr().out


def test_bad_input_is_one_line_not_a_traceback(capsys):
    assert main(["perf", "--model", "vit_zz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-sam-histo: Unknown model 'vit_zz'") and "Traceback" not in err


@pytest.mark.slow
def test_perf_json_has_the_agreed_fields(capsys):
    assert main(["perf", "--model", "tiny", "--random-weights", "--device", "cpu", "--json",
                 "--clicks", "20", "--encoder-runs", "1", "--pause", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pause_s"] == 0.0
    for key in ("model", "device", "encoder_s_per_tile", "sam_decoder_click_p50_s", "sam_decoder_raw_p50_s",
                "modified_decoder_click_p50_s", "modified_decoder_raw_p50_s", "encoder_calls_per_tile"):
        assert key in report
    assert report["encoder_calls_per_tile"] == 1
    assert report["device"] == "cpu" and report["modified_decoder_trained"] is False
    assert main(["perf", "--model", "tiny", "--random-weights", "--device", "cpu", "--precision", "bf16",
                 "--clicks", "20", "--encoder-runs", "1"]) == 0
    text = capsys.readouterr().out
    assert "torch click" in text and all(f"{name:10} pytorch            bf16" in text for name in ("sam", "modified"))


@pytest.mark.slow
def test_headless_demo_writes_a_mask_and_a_summary(tmp_path, capsys, mobile_sam):
    import imageio.v3 as iio

    assert main(["demo", "--headless", "--out", str(tmp_path), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("demo: vit_t on cpu") and "ran 1x" in line
    mask = iio.imread(tmp_path / "mask.png")
    assert mask.shape == (1024, 1024) and 0 < (mask > 0).mean() < 1
    assert (tmp_path / "overlay.png").is_file()


@pytest.mark.slow
def test_benchmark_cli_is_deterministic_and_prints_the_papers_table(tmp_path, capsys, mobile_sam):
    import csv

    from ..evaluation.test_benchmark import make_dataset

    data = make_dataset(tmp_path / "data", n=2)
    rows = []
    for run in ("a", "b"):
        assert main(["benchmark", str(data), "--model", "vit_t", "--device", "cpu", "--max-clicks", "5",
                     "--out", str(tmp_path / run), "--quiet"]) == 0
        with open(tmp_path / run / "samples.csv") as stream:
            rows.append([(r["sample"], r["clicks"], r["iou_1"], r["final_iou"]) for r in csv.DictReader(stream)])
    assert rows[0] == rows[1] and len(rows[0]) == 2
    out = capsys.readouterr().out
    assert "NoC@80" in out and "vit_t+sam" in out and "report:" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["methods"]["vit_t+sam"]["encoder_calls"] == 2


def test_benchmark_cli_bad_dataset_is_one_line(tmp_path, capsys):
    assert main(["benchmark", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "Dataset not found" in capsys.readouterr().err


def test_project_list_and_a_refused_remove(tmp_path, capsys):
    assert main(["project", "list", str(tmp_path)]) == 0
    assert "0 object(s) on 0 slide(s)" in capsys.readouterr().out
    assert main(["project", "remove", str(tmp_path), "--slide", "a.svs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-sam-histo: ") and "no object of 'a.svs'" in err and "Traceback" not in err
    assert main(["project", "remove", str(tmp_path)]) == 2  # neither --slide nor --object
    assert "--slide NAME or --object ID" in capsys.readouterr().err

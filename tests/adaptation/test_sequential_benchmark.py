"""The sequential benchmark: objects of one case clicked in order, with and without adaptation
(tiny random SAM: mechanics only; what adaptation gains is measured by the CLI, not asserted)."""

import csv
import json

import numpy as np
import pytest

from napari_sam_histo.adaptation.sequential_benchmark import WARM_UP, group_samples, run_benchmark
from napari_sam_histo.errors import InputError

from ..case_dataset import write_case_dataset


def _dataset(root, cases):
    return write_case_dataset(root, cases, 64, lambda i: (10 + i, 40 + i, 12, 44))


def test_objects_are_grouped_by_case_in_name_order_and_small_cases_left_out(tmp_path):
    root = _dataset(tmp_path / "d", {"caseA": 7, "caseB": 3})
    groups = group_samples(root)
    assert list(groups) == ["caseA"]  # caseB has fewer than WARM_UP + 1 objects
    assert [s.sample_id for s in groups["caseA"]] == [f"caseA-{i:02d}" for i in range(7)]


@pytest.mark.slow
def test_both_runs_click_every_object_and_score_those_after_the_warm_up(tmp_path, tiny_model):
    root = _dataset(tmp_path / "d", {"caseA": WARM_UP + 2})
    out = tmp_path / "out"
    summary = run_benchmark(root, out, model=tiny_model, decoder="sam", max_clicks=3, steps_per_object=1,
                            log=lambda message: None)
    for run in ("base", "adapted"):
        assert summary[run]["n_objects"] == 2 and summary[run]["n_groups"] == 1
        assert sorted(int(i) for i in summary[run]["noc85_by_index"]) == list(range(1, WARM_UP + 3))
    assert summary["base"]["adapt_s_per_object"] == 0.0 and summary["adapted"]["adapt_s_per_object"] > 0
    with open(out / "objects.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * (WARM_UP + 2)
    assert all(r["copy_in_use"] == "0" for r in rows if r["run"] == "base")
    assert json.loads((out / "summary.json").read_text())["warm_up"] == WARM_UP
    assert (out / "noc-by-object.png").stat().st_size > 1000 and "| adapted |" in (out / "table.md").read_text()


def test_a_dataset_without_a_long_enough_case_is_refused_with_a_message(tmp_path, tiny_model):
    root = _dataset(tmp_path / "d", {"caseA": 3})
    with pytest.raises(InputError, match="at least"):
        run_benchmark(root, tmp_path / "out", model=tiny_model, log=lambda message: None)


@pytest.mark.slow
def test_the_slide_refiner_is_offered_after_its_gate_and_the_objects_say_so(tmp_path, tiny_model):
    """The objects' colour tells them apart (dark square on pale), so a refiner can beat the tiny
    SAM: it learns from every object, is judged on objects 2-4 and offered from object 5 on (the
    table's last column); ``--no-gate`` offers it from the second object; a bad ``accepted`` is refused.
    (It wins by rewriting the tiny SAM's noise from the colour: the agreement rule is off here.)"""
    root = _dataset(tmp_path / "d", {"caseA": WARM_UP + 2})
    summary = run_benchmark(root, tmp_path / "out", model=tiny_model, decoder="sam", max_clicks=4,
                            steps_per_object=0, prior_weight=0, accepted="reference", min_agreement=0.0,
                            log=lambda message: None)
    with open(tmp_path / "out" / "objects.csv") as stream:
        rows = [r for r in csv.DictReader(stream) if r["run"] == "adapted"]
    offered = [r["refiner_offered"] == "1" for r in rows]
    assert not any(offered[:4])  # three objects judged before it can be offered
    assert all(offered[4:])  # and then it wins on these colour-plain objects
    assert summary["accepted"] == "reference" and summary["refiner"] is True
    assert summary["adapted"]["refined_share"] == np.mean(offered[WARM_UP:])
    assert "refiner offered" in (tmp_path / "out" / "table.md").read_text()
    ungated = run_benchmark(root, tmp_path / "out2", model=tiny_model, decoder="sam", max_clicks=2,
                            steps_per_object=0, prior_weight=0, gated=False, min_agreement=0.0,
                            log=lambda message: None)
    with open(tmp_path / "out2" / "objects.csv") as stream:
        rows = [r for r in csv.DictReader(stream) if r["run"] == "adapted"]
    assert [r["refiner_offered"] for r in rows[:2]] == ["0", "1"] and ungated["adapted"]["refined_share"] == 1.0
    with pytest.raises(InputError, match="accepted 'later'"):
        run_benchmark(root, tmp_path / "out3", model=tiny_model, accepted="later", log=lambda message: None)

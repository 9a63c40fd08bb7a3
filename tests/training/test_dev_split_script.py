"""scripts/dev-split: a dataset's copy without the cases learning-curve reports test on."""

import csv
import json

import pytest

from napari_sam_histo.training.learning_curve import load_objects

from ..case_dataset import write_case_dataset
from ..scripts import load_script


@pytest.fixture(scope="module")
def dev_split():
    return load_script("dev-split")


def test_the_copy_leaves_out_every_tested_case_and_keeps_the_rest(tmp_path, dev_split, capsys):
    data = write_case_dataset(tmp_path / "d", {"a": 2, "b": 3, "c": 1, "d": 2}, 32, lambda i: (4, 20, 4, 20))
    for name, tested in (("r0", ["d/a"]), ("r1", ["d/c"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"seeds_detail": {"0": {"test_groups": tested}}}))
    out = tmp_path / "dev"
    assert dev_split.main([str(data), str(tmp_path / "r0"), str(tmp_path / "r1"), "--out", str(out)]) == 0
    with open(out / "manifest.csv", newline="") as stream:
        assert sorted({row["case_id"] for row in csv.DictReader(stream)}) == ["b", "d"]
    objects = load_objects(out, "case_id")
    assert len(objects) == 5 and {p.group for p in objects} == {"dev/b", "dev/d"}
    assert "5 of 8 objects in 2 groups" in capsys.readouterr().out
    assert dev_split.main([str(data), str(tmp_path / "r0"), "--out", str(out)]) == 2  # never over a copy
    assert "exists already" in capsys.readouterr().err
    assert dev_split.main([str(data), str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "not a learning-curve report" in capsys.readouterr().err

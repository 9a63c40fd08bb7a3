"""The learning-curve benchmark's mechanics on tiny data with a tiny random SAM: whole groups on one
side of the split, seeds that reproduce, k too large skipped with a line, the report's columns.
(What a project decoder gains is measured by the CLI on real data, not asserted here.)"""

import csv
import json

import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.training.learning_curve import (
    SAM,
    TABLE_COLUMNS,
    format_table,
    load_objects,
    project_held_out,
    run_learning_curve,
    split,
    table_rows,
)
from napari_sam_histo.training.tissue_training import TissueRecipe

from ..case_dataset import write_case_dataset

TINY = TissueRecipe(steps=5, batch_size=2, max_clicks=2, dagger_rounds=1, dagger_steps=2, width=8)
LATER_SETTING = "weight_decay"  # one of TINY's settings at its default, as if added after a report was written


def _dataset(root, cases):
    return write_case_dataset(root, cases, 48, lambda i: (8 + i % 5, 30 + i % 5, 10, 34))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("lc") / "d", {f"case{c}": 2 + c % 3 for c in range(10)})


def test_the_split_never_puts_a_group_on_both_sides_and_seeds_reproduce(dataset):
    patches = load_objects(dataset, "case_id")
    splits = {}
    for seed in (0, 1, 2):
        train, test = split(patches, seed, 0.3)
        assert train and test
        assert not {p.group for p in train} & {p.group for p in test}
        assert len(train) + len(test) == len(patches)
        again = split(load_objects(dataset, "case_id"), seed, 0.3)
        assert [p.sample.sample_id for p in again[0]] == [p.sample.sample_id for p in train]
        assert [p.sample.sample_id for p in again[1]] == [p.sample.sample_id for p in test]
        splits[seed] = {p.group for p in test}
    assert len({frozenset(s) for s in splits.values()}) > 1  # another seed, another split
    train, test = split(patches, 0, 0.3, test_objects=2)
    assert len(test) == 2 and not {p.group for p in train} & {p.group for p in test}


class _Object:
    def __init__(self, name, group):
        self.name, self.group = name, group


def test_a_project_of_k_objects_holds_out_other_groups_first_then_its_own_later_objects():
    train = [_Object(f"{g}{i}", g) for g, n in (("a", 4), ("b", 2), ("c", 5)) for i in range(n)]
    train = [train[i] for i in (0, 4, 1, 2, 3, 5, 6, 7, 8, 9, 10)]  # a0 b0 a1 a2 a3 b1 c0 .. c4
    held, by = project_held_out(train, 3)  # groups a and b trained on: one of group c (a quarter of 4)
    assert by == "other groups" and [o.name for o in held] == ["c0"]
    held, by = project_held_out(train, 6)  # a quarter of 8: two, from c
    assert by == "other groups" and [o.name for o in held] == ["c0", "c1"]
    held, by = project_held_out(train, 7)  # every group trained on: the next objects, never one of the 7
    assert by == "same groups" and [o.name for o in held] == ["c1", "c2", "c3"]
    assert project_held_out(train, 11) == ([], "")


def _entry(noc, offered=None):
    entry = {"n": 4, "noc@80": noc, "noc@85": noc, "noc@90": noc, "miou@1": 0.5, "miou@5": 0.6, "miou@10": 0.7}
    if offered:
        entry.update({"offered": offered, "offered_noc@85": noc if offered == "decoder" else 10.0})
    return entry


def test_as_offered_is_the_decoder_where_its_held_out_check_passed_and_sam_elsewhere():
    per_seed = {"0": {"sam": _entry(10.0), "k": {"5": _entry(8.0, "decoder")}},
                "1": {"sam": _entry(10.0), "k": {"5": _entry(12.0, "sam")}}}
    row = [r for r in table_rows(per_seed) if r["k"] == 5][0]
    assert row["noc@85"] == 10.0 and row["ratio"] == 1.0
    assert row["offered_noc@85"] == 9.0 and row["offered_ratio"] == 0.9
    assert row["offered_per_seed"] == ["decoder", "SAM"]
    assert "| 9.00 (0.90x) | decoder / SAM |" in format_table(table_rows(per_seed))
    for entry in per_seed["1"]["k"].values():  # a report written before the check: nothing claimed
        del entry["offered"], entry["offered_noc@85"]
    row = [r for r in table_rows(per_seed) if r["k"] == 5][0]
    assert row["offered_noc@85"] is None and row["offered_per_seed"] == []


@pytest.mark.slow
def test_the_report_has_its_columns_and_a_k_too_large_is_skipped_with_a_line(tmp_path, dataset, tiny_model):
    lines = []
    out = tmp_path / "out"
    summary = run_learning_curve(dataset, out, group_by="case_id", shots=[2, 4, 500], seeds=2, max_clicks=2,
                                 model=tiny_model, recipe=TINY, precision="fp32", log=lines.append,
                                 save_decoders=True)
    assert any("k=500 skipped" in line and "training groups hold" in line for line in lines)
    assert len(summary["skipped"]) == 2 and summary["seeds"] == [0, 1] and not summary["partial"]
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    methods = [row.split(" | ")[0].strip("| ") for row in table[2:]]
    ks = [row.split(" | ")[1] for row in table[2:]]
    assert methods == [SAM, "tissue decoder", "tissue decoder"] and ks == ["–", "2", "4"]
    stored = json.loads((out / "summary.json").read_text())
    for seed in ("0", "1"):
        detail = stored["seeds_detail"][seed]
        assert not set(detail["train_groups"]) & set(detail["test_groups"])
        assert set(detail["k"]) == {"2", "4"}
        assert detail["k"]["4"]["train_s"] > 0 and detail["k"]["4"]["n"] == detail["sam"]["n"]
        for k in ("2", "4"):  # judged on training-side objects as a project would; offered accordingly
            scores = detail["k"][k]
            held = scores["held_out"]
            assert held["objects"] >= 1 and held["better"] == (held["decoder_noc"] < held["sam_noc"])
            assert scores["offered"] == ("decoder" if held["better"] else "sam")
            assert scores["offered_noc@85"] == (scores["noc@85"] if held["better"] else detail["sam"]["noc@85"])
    assert any("held out as a project would" in line for line in lines)
    with open(out / "objects.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["method"] for r in rows} == {SAM, "tissue decoder"}
    assert (out / "noc85-vs-k.png").stat().st_size > 1000
    assert (out / "tissue-head-seed1-k4.pt").is_file()


def test_a_dataset_of_one_group_or_bad_shots_is_refused_with_a_message(tmp_path, tiny_model):
    one = _dataset(tmp_path / "one", {"caseA": 6})
    with pytest.raises(InputError, match="one group"):
        run_learning_curve(one, tmp_path / "out", model=tiny_model, recipe=TINY, log=None)
    with pytest.raises(InputError, match="shots"):
        run_learning_curve(one, tmp_path / "out", shots=[0], model=tiny_model, recipe=TINY, log=None)


@pytest.mark.slow
def test_seeds_run_apart_join_into_one_report_and_a_repeated_seed_is_refused(tmp_path, dataset, tiny_model):
    from napari_sam_histo.training.learning_curve import join_reports

    runs = {}
    for seed in (0, 1):
        runs[seed] = run_learning_curve(dataset, tmp_path / f"s{seed}", shots=[2], seeds=1, first_seed=seed,
                                        max_clicks=2, model=tiny_model, recipe=TINY, precision="fp32", log=None)
        assert runs[seed]["seeds"] == [seed] and not runs[seed]["partial"]
    joined = join_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "joined")
    assert joined["seeds"] == [0, 1]
    tissue = [r for r in joined["rows"] if r["k"] == 2][0]
    assert tissue["seeds"] == 2
    assert tissue["noc85_per_seed"] == [runs[0]["seeds_detail"]["0"]["k"]["2"]["noc@85"],
                                        runs[1]["seeds_detail"]["1"]["k"]["2"]["noc@85"]]
    def count_rows(folder):
        with open(folder / "objects.csv") as stream:
            return len(list(csv.DictReader(stream)))

    assert count_rows(tmp_path / "joined") == sum(count_rows(tmp_path / f"s{s}") for s in (0, 1))
    with pytest.raises(InputError, match="repeats seed 0 at k=2"):
        join_reports([tmp_path / "s0", tmp_path / "s0"], tmp_path / "again")
    # a report that predates a recipe setting was run with it off (its default): it joins with that, not with it on
    stored = json.loads((tmp_path / "s1" / "summary.json").read_text())
    for value, joins in ((None, True), (TINY.as_dict()[LATER_SETTING] * 2, False)):
        if value is None:
            stored["recipe"].pop(LATER_SETTING)
        else:
            stored["recipe"][LATER_SETTING] = value
        (tmp_path / "s1" / "summary.json").write_text(json.dumps(stored))
        if joins:
            assert join_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "older")["seeds"] == [0, 1]
        else:
            with pytest.raises(InputError, match="other recipe"):
                join_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "older")
    stored["recipe"][LATER_SETTING] = TINY.as_dict()[LATER_SETTING]
    (tmp_path / "s1" / "summary.json").write_text(json.dumps(stored))
    # another k on the same seed (the same split) joins in: one zero-shot row per object, both k
    run_learning_curve(dataset, tmp_path / "s0k3", shots=[3], seeds=1, first_seed=0, max_clicks=2,
                       model=tiny_model, recipe=TINY, precision="fp32", log=None)
    merged = join_reports([tmp_path / "s0", tmp_path / "s0k3", tmp_path / "s1"], tmp_path / "merged")
    assert set(merged["seeds_detail"]["0"]["k"]) == {"2", "3"} and set(merged["seeds_detail"]["1"]["k"]) == {"2"}
    assert {r["k"] for r in merged["rows"] if r["k"] is not None} == {2, 3}
    assert count_rows(tmp_path / "merged") == count_rows(tmp_path / "joined") + count_rows(tmp_path / "s0k3") // 2


@pytest.mark.slow
@pytest.mark.parametrize("base", ["modified", "auto"])
def test_a_fine_tuning_from_a_shipped_decoder_reports_that_decoder_untrained_too(tmp_path, dataset, tiny_model,
                                                                                 shipped_modified, base):
    from napari_sam_histo.training.decoder_finetune import FinetuneRecipe
    from napari_sam_histo.training.learning_curve import base_label

    out = tmp_path / "out"
    summary = run_learning_curve(dataset, out, group_by="case_id", shots=[2], seeds=1, max_clicks=2,
                                 model=tiny_model, precision="fp32", log=None,
                                 recipe=FinetuneRecipe(lr=1e-3, epochs=1, max_clicks=2, base=base))
    base = summary["seeds_detail"]["0"]["base"]
    assert base["name"] == "modified" and base["n"] == summary["seeds_detail"]["0"]["sam"]["n"]
    methods = [row["method"] for row in summary["rows"]]
    assert methods == [SAM, base_label("modified"), "fine-tuned decoder"]
    assert summary["rows"][0]["ratio"] is None and summary["rows"][1]["ratio"] is not None
    report = summary["seeds_detail"]["0"]["k"]["2"]["report"]
    assert report["base"] in ("sam", "modified")
    # a shipped start trains with the recipe's settings for it, SAM's with SAM's
    expected = (1e-3, 1, 0.0) if report["base"] == "sam" else (FinetuneRecipe.shipped_lr, FinetuneRecipe.shipped_epochs,
                                                               FinetuneRecipe.shipped_distill)
    assert tuple(report["settings"].values()) == expected
    with open(out / "objects.csv") as stream:
        assert base_label("modified") in {r["method"] for r in csv.DictReader(stream)}


def test_a_learning_rate_of_zero_is_refused_not_replaced(tmp_path, dataset, capsys):
    from napari_sam_histo.cli import main

    for recipe in ("finetune", "tissue-head"):
        assert main(["learning-curve", str(dataset), "--recipe", recipe, "--lr", "0", "--out", str(tmp_path)]) == 2
        assert "lr 0.0" in capsys.readouterr().err

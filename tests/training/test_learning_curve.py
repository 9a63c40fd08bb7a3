"""The learning-curve benchmark's mechanics on tiny data with a tiny random SAM: whole groups on one
side of the split, seeds that reproduce, k too large skipped with a line, the report's columns.
(What a project decoder gains is measured by the CLI on real data, not asserted here.)"""

import csv
import json

import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.training.learning_curve import SAM, TABLE_COLUMNS, load_objects, run_learning_curve, split
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

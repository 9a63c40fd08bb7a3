import csv
import json
import re
import threading

import imageio.v3 as iio
import numpy as np
import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.evaluation.benchmark import run_benchmark
from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig
from napari_sam_histo.evaluation.dataset import Skipped, find_pairs, load_samples
from napari_sam_histo.evaluation.runner import run_sample


class Oracle:
    """Returns the ground truth at the first click."""

    name, encoder_calls = "oracle", 0
    store_loads = runtime = None  # no embedding store, no model

    def begin(self, sample):
        outer = self

        class Clicks:
            last_decoder_s = 0.001
            last_fallback = None
            charged_encoder_s = 0.0

            def click(self, x, y, positive):
                return sample.target.copy()

        outer.encoder_calls += 1
        return Clicks()


class Stuck:
    """Never changes its (empty) mask, whatever the clicks."""

    name, encoder_calls = "stuck", 0
    store_loads = runtime = None  # no embedding store, no model

    def begin(self, sample):
        class Clicks:
            last_decoder_s = 0.001
            last_fallback = None
            charged_encoder_s = 0.0

            def click(self, x, y, positive):
                return np.zeros(sample.target.shape, bool)

        return Clicks()


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def write_pair(root, stem, image, mask):
    """One image/mask pair in ``root``'s images/ and masks/ (created when missing)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    iio.imwrite(root / "images" / f"{stem}.png", image)
    iio.imwrite(root / "masks" / f"{stem}.png", mask)
    return root


def make_dataset(root, n=3, size=(64, 80)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = _disk(size, (30 + i, 35 + 2 * i), 12 + i)
        image = rng.integers(0, 60, size + (3,), dtype=np.uint8)
        image[mask] += 150
        iio.imwrite(root / "images" / f"s{i}.png", image)
        iio.imwrite(root / "masks" / f"s{i}.png", (mask * 255).astype(np.uint8))
    return root


def test_oracle_needs_one_click_and_never_fails(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"))
    summary = run_benchmark(config, methods=[Oracle()])
    m = summary["methods"]["oracle"]
    assert m["n_samples"] == 3 and m["noc@80"] == m["noc@90"] == 1.0 and m["nof@90"] == 0
    assert summary["partial"] is False


def test_a_model_that_never_changes_fails_every_sample(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"), max_clicks=5)
    m = run_benchmark(config, methods=[Stuck()])["methods"]["stuck"]
    assert m["nof@85"] == m["nof@90"] == 3 and m["noc@80"] == 5.0


def test_report_files_and_summary_fields(tmp_path):
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"))
    run_benchmark(config, methods=[Oracle(), Stuck()])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("n_samples", "noc@80", "noc@85", "noc@90", "nof@85", "nof@90", "miou_per_click",
                "spc_decoder_s", "spc_total_s", "encoder_calls"):
        assert key in summary["methods"]["oracle"]
    with open(tmp_path / "r" / "samples.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"oracle", "stuck"}
    table = (tmp_path / "r" / "table.txt").read_text()
    assert table.splitlines()[0].startswith("runtime: torch ")  # what ran: precision, device, versions
    assert table.splitlines()[1].split()[:4] == ["Method", "NoC@80", "NoC@85", "NoC@90"]
    assert summary["runtime"]["methods"] == {}  # neither oracle nor stuck runs a predictor
    assert iio.imread(tmp_path / "r" / "miou.png").shape[2] in (3, 4)


def test_cancel_leaves_a_valid_partial_report(tmp_path):
    cancel = threading.Event()
    config = BenchmarkConfig(str(make_dataset(tmp_path / "d")), str(tmp_path / "r"))
    summary = run_benchmark(config, methods=[Oracle()], progress=lambda done, total: cancel.set(), cancel=cancel)
    assert summary["partial"] is True and summary["methods"]["oracle"]["n_samples"] == 1
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["partial"] is True
    assert "(partial" in (tmp_path / "r" / "table.txt").read_text()


def test_ignore_label_is_left_out_of_clicks_and_iou(tmp_path):
    root = tmp_path / "d"
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    mask[25:, :] = 7  # ignored band
    write_pair(root, "a", np.full((40, 40, 3), 90, np.uint8), mask)
    [sample] = load_samples(find_pairs(root)[0], ignore_value=7)
    assert sample.ignore[30, 0] and not sample.target[30, 0]

    class FillsIgnored(Oracle):
        name = "fills"

        def begin(self, s):
            class Clicks:
                last_decoder_s = 0.0
                last_fallback = None
                charged_encoder_s = 0.0

                def click(self, x, y, positive):
                    assert not s.ignore[int(y), int(x)]
                    return s.target | s.ignore  # wrong only where it does not count

            return Clicks()

    assert run_sample(FillsIgnored(), sample).ious == [1.0]


def test_instances_give_one_sample_each_and_share_one_encoding(tmp_path, tiny_model):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.evaluation.runner import SamClickModel

    root = tmp_path / "d"
    labels = np.zeros((64, 64), np.uint16)
    labels[5:15, 5:15], labels[30:40, 30:50], labels[50:60, 5:20] = 1, 2, 3
    write_pair(root, "cells", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), labels)
    model = SamClickModel(Predictor(tiny_model, "sam", precision="fp32"))
    config = BenchmarkConfig(str(root), str(tmp_path / "r"), instances=True, max_clicks=3)
    m = run_benchmark(config, methods=[model])["methods"][model.name]
    assert m["n_samples"] == 3 and m["encoder_calls"] == 1


@pytest.mark.parametrize(
    "writer, reason",
    [
        (lambda d: (iio.imwrite(d / "images/x.png", np.zeros((20, 20, 3), np.uint8)),
                    iio.imwrite(d / "masks/x.png", np.zeros((20, 21), np.uint8))), "the image is 20x20 but the mask is 21x20"),
        (lambda d: (iio.imwrite(d / "images/x.png", np.zeros((20, 20, 3), np.uint8)),
                    iio.imwrite(d / "masks/x.png", np.zeros((20, 20), np.uint8))), "mask is empty"),
        (lambda d: (iio.imwrite(d / "images/x.png", np.zeros((20, 20, 3), np.uint8)),
                    iio.imwrite(d / "masks/x.png", np.full((20, 20), 255, np.uint8))), "no background"),
        (lambda d: ((d / "images/x.png").write_bytes(b"broken"),
                    iio.imwrite(d / "masks/x.png", np.full((20, 20), 255, np.uint8))),
         "the image file could not be read: "),
        (lambda d: (__import__("tifffile").imwrite(d / "images/x.tif", np.zeros((20, 20, 3), np.uint16)),
                    iio.imwrite(d / "masks/x.png", np.eye(20, dtype=np.uint8))), "uint16, not 8-bit"),
    ],
)
def test_bad_pairs_are_skipped_with_the_reason_and_the_run_goes_on(tmp_path, writer, reason):
    root = make_dataset(tmp_path / "d", n=1)
    writer(root)
    summary = run_benchmark(BenchmarkConfig(str(root), str(tmp_path / "r")), methods=[Oracle()])
    m = summary["methods"]["oracle"]
    assert m["n_samples"] == 1 and m["n_skipped"] == 1
    assert reason in m["skipped"]["x"]
    assert not CLASS_NAME.search(m["skipped"]["x"])  # a plain sentence, not a Python exception


CLASS_NAME = re.compile(r"[A-Z]\w*(Error|Exception)\b")


def test_an_unreadable_file_is_named_in_plain_words(tmp_path):
    root = make_dataset(tmp_path / "d", n=1)
    (root / "images/x.png").write_bytes(b"broken")
    iio.imwrite(root / "masks/x.png", np.eye(20, dtype=np.uint8))
    (root / "images/y.png").write_bytes((root / "images/s0.png").read_bytes())
    (root / "masks/y.tif").write_bytes(b"broken")
    pairs = {p.stem: p for p in find_pairs(root)}
    [bad_image], [bad_mask] = load_samples(pairs["x"]), load_samples(pairs["y"])
    assert bad_image.reason.startswith("the image file could not be read: ") and "x.png" in bad_image.reason
    assert bad_mask.reason.startswith("the mask file could not be read: ") and "y.tif" in bad_mask.reason
    assert not CLASS_NAME.search(bad_image.reason + bad_mask.reason)
    assert "Error" not in bad_image.reason + bad_mask.reason


@pytest.mark.parametrize("layout", ["images+masks", "flat"])
def test_an_image_without_a_mask_is_skipped_with_the_reason(tmp_path, layout):
    root = make_dataset(tmp_path / "d", n=2)
    if layout == "flat":
        flat = tmp_path / "flat"
        flat.mkdir()
        for stem in ("s0", "s1"):
            (flat / f"{stem}.png").write_bytes((root / "images" / f"{stem}.png").read_bytes())
        (flat / "s0_label.png").write_bytes((root / "masks" / "s0.png").read_bytes())
        root, suffix = flat, "_label"
    else:
        (root / "masks" / "s1.png").unlink()
        suffix = None
    summary = run_benchmark(BenchmarkConfig(str(root), str(tmp_path / "r"), mask_suffix=suffix), methods=[Oracle()])
    m = summary["methods"]["oracle"]
    assert m["n_samples"] == 1 and list(m["skipped"]) == ["s1"]
    assert m["skipped"]["s1"].startswith("no mask was found for the image ") and "s1.png" in m["skipped"]["s1"]
    with open(tmp_path / "r" / "samples.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["sample"], r["status"]) for r in rows] == [("s0", "ok"), ("s1", "skipped")]


def test_a_dataset_where_no_image_has_a_mask_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "d", n=1)
    (root / "masks" / "s0.png").unlink()
    with pytest.raises(InputError, match="no image/mask pairs found"):
        find_pairs(root)


def test_manifest_and_flat_folder_layouts(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    (root / "list.csv").write_text("image,mask\nimages/s1.png,masks/s1.png\n")
    assert [p.stem for p in find_pairs(root / "list.csv")] == ["s1"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.png", "a_label.png", "b.png"):
        (flat / name).write_bytes((root / "images" / "s0.png").read_bytes())
    assert [(p.stem, p.mask_path is not None) for p in find_pairs(flat, mask_suffix="_label")] == [
        ("a", True), ("b", False)]  # b has no mask: it is listed, to be skipped with the reason
    skipped = next(load_samples(find_pairs(flat, mask_suffix="_label")[0]))  # an RGB photo as the mask
    assert isinstance(skipped, Skipped) and "colour channels" in skipped.reason


def test_connected_components_of_a_binary_mask_are_separate_samples(tmp_path):
    root = tmp_path / "d"
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10] = 255
    mask[20:30, 20:35] = 255
    write_pair(root, "g", np.full((40, 40, 3), 100, np.uint8), mask)
    samples = list(load_samples(find_pairs(root)[0], components=True))
    assert [s.sample_id for s in samples] == ["g#1", "g#2"]
    assert samples[0].target.sum() == 64 and samples[1].target.sum() == 150


def test_reused_embeddings_are_charged_to_every_sample(tmp_path, tiny_model):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.evaluation.runner import SamClickModel

    root = tmp_path / "d"
    labels = np.zeros((64, 64), np.uint8)
    labels[5:15, 5:15], labels[30:40, 30:50] = 1, 2
    write_pair(root, "c", np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8), labels)
    model = SamClickModel(Predictor(tiny_model, "sam", precision="fp32"))
    results = []
    run_benchmark(BenchmarkConfig(str(root), str(tmp_path / "r"), instances=True, max_clicks=2),
                  methods=[model], on_result=results.append)
    sample = next(load_samples(find_pairs(root)[0], instances=True))
    encode_s = model.predictor.embedding_for_array(sample.image, sample.identity).encode_s  # a cache hit
    assert model.encoder_calls == 1 and encode_s > 0
    assert all(r.total_s >= encode_s for r in results)  # the second instance pays for the encoder too


def test_first_mask_rules_are_methods_of_their_own(mobile_sam):
    from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig, build_methods

    config = BenchmarkConfig(dataset="unused", out_dir="unused", models=["vit_t"], decoders=["sam"],
                             first_masks=("iou", "unflooded"), device="cpu")
    methods = build_methods(config)
    assert [m.name for m in methods] == ["vit_t+sam", "vit_t+sam/first=unflooded"]
    assert [m.first_mask for m in methods] == ["iou", "unflooded"]


def test_the_fallback_can_be_switched_off_as_a_method_of_its_own(mobile_sam):
    from napari_sam_histo.evaluation.benchmark_config import BenchmarkConfig, build_methods

    config = BenchmarkConfig(dataset="unused", out_dir="unused", models=["vit_t"], decoders=["sam"],
                             honour_clicks=(True, False), device="cpu")
    methods = build_methods(config)
    assert [m.name for m in methods] == ["vit_t+sam", "vit_t+sam/no-fallback"]
    assert [m.honour_clicks for m in methods] == [True, False]


class Collapses:
    """Finds the top half of the object at the first click and loses it at the next ones (the
    second says it fell back: the count comes from the method, whatever the masks)."""

    name, encoder_calls = "collapses", 0
    store_loads = runtime = None  # no embedding store, no model

    def begin(self, sample):
        class Clicks:
            last_decoder_s, last_fallback, charged_encoder_s, clicked = 0.001, None, 0.0, 0

            def click(self, x, y, positive):
                self.clicked += 1
                self.last_fallback = "points" if self.clicked == 2 else None
                if self.clicked > 1:
                    return np.zeros(sample.target.shape, bool)
                rows = np.nonzero(sample.target.any(axis=1))[0]
                top = sample.target.copy()
                top[(rows[0] + rows[-1]) // 2:] = False
                return top

        return Clicks()


def test_collapses_and_fallbacks_are_reported_and_survive_a_resume(tmp_path):
    """Every sample reaches IoU ~0.5 at its first click and 0 after the three others (under half
    the best): collapses, samples with one and fallbacks are in the summary, the table and
    samples.csv, and a resumed report counts them as the uninterrupted one does."""
    data = make_dataset(tmp_path / "d")
    config = BenchmarkConfig(str(data), str(tmp_path / "r"), max_clicks=4, full_curve=True)
    whole = run_benchmark(config, methods=[Collapses()])["methods"]["collapses"]
    assert (whole["collapses"], whole["collapsed_samples"], whole["fallbacks"]) == (9, 3, 3)
    with open(tmp_path / "r" / "samples.csv") as stream:
        assert [r["fallbacks"] for r in csv.DictReader(stream)] == ["1"] * 3
    table = (tmp_path / "r" / "table.txt").read_text().splitlines()
    assert table[1].split()[-3:] == ["Collapses", "Fallbacks", "n"] and table[3].split()[-4:] == ["9", "(3)", "3", "3"]
    cancel = threading.Event()
    resumed_config = BenchmarkConfig(str(data), str(tmp_path / "resumed"), max_clicks=4, full_curve=True)
    run_benchmark(resumed_config, methods=[Collapses()], cancel=cancel, progress=lambda done, total: cancel.set())
    resumed = run_benchmark(resumed_config, methods=[Collapses()], existing="resume")["methods"]["collapses"]
    assert (resumed["collapses"], resumed["collapsed_samples"], resumed["fallbacks"]) == (9, 3, 3)

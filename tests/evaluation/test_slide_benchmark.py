"""The slide-scale benchmark's mechanics (tiny random model): pyramids, modes, levels, report."""

import csv
import json
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_sam_histo.engine.annotator import AnnotatorState
from napari_sam_histo.evaluation.slide_benchmark import (
    GROWING,
    MODES,
    RegionRun,
    find_regions,
    format_table,
    level0_mask,
    run_benchmark,
    run_region,
    seam_band,
    summarize_runs,
)
from napari_sam_histo.evaluation.slide_small_objects import (
    ObjectRun,
    click_small_objects,
    compose_regions,
    run_small_objects,
    summarize_small,
)
from napari_sam_histo.slides.boxes import TileBox


def _region_folder(folder, shape, boxes_by_stem, seed):
    """A region dataset (images/, masks/): per stem a random image of ``shape`` and a mask with the
    boxes (r0, r1, c0, c1) set."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for stem, boxes in boxes_by_stem.items():
        mask = np.zeros(shape, np.uint8)
        for r0, r1, c0, c1 in boxes:
            mask[r0:r1, c0:c1] = 255
        iio.imwrite(folder / "images" / f"{stem}.png", rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        iio.imwrite(folder / "masks" / f"{stem}.png", mask)
    return folder


@pytest.fixture
def regions(tmp_path):
    return _region_folder(tmp_path / "regions", (400, 600), {"r1": [(100, 300, 150, 450)]}, seed=0)


def test_every_mode_runs_through_the_annotator_and_writes_its_report(regions, tmp_path, tiny_model):
    out = tmp_path / "report"
    said = []
    summary = run_benchmark(regions, out, model=tiny_model, modes=("level0", "auto", "refine"), max_clicks=3,
                            tile_size=256, log=said.append)
    assert [line.split(":")[0] for line in said] == ["r1 level0", "r1 auto", "r1 refine"]  # one line per run
    with tifffile.TiffFile(out / "slides" / "r1.ome.tif") as tif:  # a real pyramid, read by our reader
        assert [page.shape[:2] for page in tif.series[0].levels] == [(400, 600), (100, 150)]
    assert set(summary["modes"]) == {"level0", "auto", "refine"}
    for entry in summary["modes"].values():
        assert len(entry["miou_per_click"]) == 3 and 1 <= entry["noc@85"] <= 3
        assert entry["encoder_calls"] >= 1
        assert entry["collapses"] >= 0 and entry["fallbacks"] >= 0
    with open(out / "runs.csv") as stream:
        rows = list(csv.DictReader(stream))
    levels = {mode: {float(r["downsample"]) for r in rows if r["mode"] == mode} for mode in ("level0", "auto")}
    assert levels["level0"] == {1.0} and levels["auto"] == {2.0}  # a 600 px region, 256 px tiles: one tile at 1/2
    assert json.loads((out / "summary.json").read_text())["tile_size"] == 256
    assert "| auto |" in (out / "table.md").read_text()
    assert (out / "figure-r1.png").stat().st_size > 1000  # the picture of the first region


def test_the_state_is_rasterised_at_level_0_and_the_seam_band_follows_inner_borders():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 5:8] = True
    state = AnnotatorState((), ((1, 2), mask), (), downsample=4.0)  # mask pixel (0, 0) is level-0 (4, 8)
    level0 = level0_mask(state, (60, 60))
    rows, cols = np.nonzero(level0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 23, 24, 35)
    edge = np.zeros((5, 5), bool)
    edge[0, 0] = True  # the mask's first pixel: level-0 40..43 only, nothing before it
    rows, cols = np.nonzero(level0_mask(AnnotatorState((), ((10, 10), edge), (), downsample=4.0), (80, 80)))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 43, 40, 43)
    band = seam_band([TileBox(0, 0, 0, 30, 60)], (60, 60), tile=100)  # inner border at x = 30 only
    assert band[:, 28:32].all() and not band[:, :27].any() and not band[:, 33:].any()


def test_collapses_and_fallbacks_are_counted_per_mode():
    """A collapse is a click after which IoU is below half the best before it (a lymph-node region's curve:
    0.49, then 0.00, then 0.03); the regions with one and the fallback decodes are reported too."""
    seam = {f"{name}_{part}": 1 for name in ("band", "rest") for part in ("intersection", "union")}
    runs = [RegionRun("a", "auto", ious=[0.17, 0.49, 0.0, 0.03], seam=seam, fallbacks=0),
            RegionRun("b", "auto", ious=[0.5, 0.7, 0.9], seam=seam, fallbacks=2),
            RegionRun("a", "refine", ious=[0.4, 0.6, 0.8], seam=seam, fallbacks=1)]
    summary = summarize_runs(runs, max_clicks=4)
    assert (summary["auto"]["collapses"], summary["auto"]["collapsed_regions"]) == (2, 1)
    assert (summary["refine"]["collapses"], summary["refine"]["collapsed_regions"]) == (0, 0)
    assert summary["auto"]["fallbacks"] == 1.0
    assert "| 2 (1) | 1.0 |" in format_table(summary).splitlines()[2]


SEAM = {f"{name}_{part}": 1 for name in ("band", "rest") for part in ("intersection", "union")}
REGION_VIEW = (-15.0, -36.25, 615.0, 436.25)  # a 600x400 region on the 1280x960 canvas with its 5 % margin


@pytest.mark.slow
def test_every_click_is_made_in_the_view_the_pathologist_looks_at(regions, tmp_path, tiny_model, monkeypatch):
    """The annotator's view is set before every click: the whole region (level0, level0+grow, auto),
    and the growing modes run with continuation on."""
    from napari_sam_histo.engine.annotator import Annotator

    seen = []
    click = Annotator.click

    def spy(self, x0, y0, positive=True, downsample=None):
        seen.append((self.source.name, self.view, self.continuation))
        return click(self, x0, y0, positive, downsample)

    monkeypatch.setattr(Annotator, "click", spy)
    run_benchmark(regions, tmp_path / "report", model=tiny_model, modes=MODES, max_clicks=2, tile_size=256,
                  log=lambda line: None)
    assert len(seen) == 2 * len(MODES)  # two clicks per mode, in order
    for mode, (_, view, continuation) in zip([m for m in MODES for _ in range(2)], seen):
        if mode != "refine":
            assert view == REGION_VIEW, mode
        assert continuation == (mode in GROWING), mode
    assert seen[2 * MODES.index("refine")][1] == REGION_VIEW  # refine's first click: as auto


class FakeAnnotator:
    """What ``run_region`` uses of an annotator: the first click shows the target with a 20-px hole."""

    def __init__(self, target, continuation=False, auto=True):
        self.source = SimpleNamespace(name="fake")
        self.predictor = SimpleNamespace(encoder_calls=0)
        self.grid = SimpleNamespace(downsample=1.0)
        self.auto, self.continuation, self.tile_size, self.grown = auto, continuation, 256, 0
        self.view = None
        self.target = target
        self.clicks, self.waited = [], 0

    def level_for_view(self, width, height):
        return SimpleNamespace(downsample=float(2 ** round(np.log2(max(width, height) / 256))))

    def click(self, x0, y0, positive=True, downsample=None):
        self.clicks.append((x0, y0, positive, downsample, self.view))
        return self.state()

    def wait_continuation(self):
        self.waited += 1

    def state(self):
        mask = self.target.copy()
        if len(self.clicks) == 1:
            mask[190:210, 290:310] = False  # a small error left: refine zooms to it
        return AnnotatorState((), ((0, 0), mask), (), downsample=1.0)

    def snapshot(self):
        return SimpleNamespace(sessions={})


def test_refine_zooms_the_view_onto_the_error_it_fixes():
    target = np.zeros((400, 600), bool)
    target[100:300, 150:450] = True
    fake = FakeAnnotator(target, continuation=True)
    run = run_region(fake, target, "refine", max_clicks=2, stop_iou=None)
    (_, _, _, first_d, first_view), (x, y, positive, second_d, second_view) = fake.clicks
    assert first_view == REGION_VIEW and first_d == 2.0
    assert positive and 190 <= y <= 210 and 290 <= x <= 310  # the hole
    x0, y0, x1, y1 = second_view
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (x, y)  # centred on the click
    assert x1 - x0 < 100 and (x1 - x0) / (y1 - y0) == pytest.approx(4 / 3)  # twice the 20-px error, on the canvas
    assert second_d == 0.25 and run.views == [first_view, second_view]
    assert fake.waited == 2  # the object's growth is waited for after each click
    auto = FakeAnnotator(target)
    run_region(auto, target, "auto", max_clicks=2, stop_iou=None)
    assert [c[4] for c in auto.clicks] == [REGION_VIEW, REGION_VIEW] and auto.waited == 0


@pytest.fixture
def small_regions(tmp_path):
    """Two 100x120 regions: r1 with two glands and a speck (too small to click), r2 with one."""
    return _region_folder(tmp_path / "small", (100, 120),
                          {"r1": [(10, 40, 10, 40), (50, 90, 60, 110), (95, 97, 2, 4)], "r2": [(20, 80, 30, 90)]},
                          seed=1)


def test_small_objects_are_composed_side_by_side_and_each_is_scored_against_its_own_mask(small_regions, monkeypatch):
    from napari_sam_histo.evaluation import slide_small_objects

    slide = compose_regions(find_regions(small_regions), "s", min_object_px=100)
    assert slide.rgb.shape == (100, 240, 3) and slide.labels.max() == 4  # r1 | r2, every component numbered
    assert [(stem, box) for _, stem, box in slide.objects] == [("r1", (0.0, 0.0, 120.0, 100.0))] * 2 + [
        ("r2", (120.0, 0.0, 240.0, 100.0))]  # the speck is a neighbour, not clicked
    calls = []

    def fake_run_region(annotator, target, mode, max_clicks, region):
        calls.append((target.copy(), mode, region))
        final = target.copy()
        if target[20, 20]:  # the first gland's object spills into the second gland
            final[60, 70] = True
        return RegionRun("", mode, ious=[0.5, 0.95], final_mask=final, seam=SEAM)

    monkeypatch.setattr(slide_small_objects, "run_region", fake_run_region)
    runs = click_small_objects(SimpleNamespace(clear=lambda: None), slide, "growth on")
    expected = [(10, 40, 10, 40), (50, 90, 60, 110), (20, 80, 150, 210)]
    for (target, mode, region), (r0, r1, c0, c1), (_, _, box) in zip(calls, expected, slide.objects):
        own = np.zeros((100, 240), bool)
        own[r0:r1, c0:c1] = True
        assert np.array_equal(target, own) and mode == "auto" and region == box  # that object alone
    assert [r.overlap for r in runs] == [1, 0, 0] and [r.area for r in runs] == [900, 2000, 3600]
    summary = summarize_small(runs + [ObjectRun(r.slide, r.region, r.label, r.area, "growth off",
                                                RegionRun("", "auto, growth off", ious=[0.5, 0.97], seam=SEAM), 0)
                                       for r in runs], max_clicks=2)
    assert summary["auto, growth on"]["spilled"] == 1 and summary["auto, growth off"]["spilled"] == 0
    assert summary["paired"]["lower_with_growth"] == 3 and summary["paired"]["worst_drop"] == pytest.approx(0.02)


def test_the_small_objects_benchmark_clicks_every_object_with_growth_off_and_on(small_regions, tmp_path, tiny_model):
    out = tmp_path / "report"
    summary = run_small_objects(small_regions, out, model=tiny_model, per_slide=2, max_clicks=2, tile_size=256,
                                log=lambda line: None)
    assert set(summary["settings"]) == {"auto, growth off", "auto, growth on", "paired"}
    assert summary["slides"] == [{"name": "small-1", "regions": ["r1", "r2"], "width": 240, "height": 100,
                                  "objects": 2}]  # 900 px and the speck are below MIN_OBJECT_PX: neighbours only
    rows = list(csv.DictReader((out / "objects.csv").read_text().splitlines()))
    assert [(r["object"], r["growth"]) for r in rows] == [("2", "growth off"), ("4", "growth off"),
                                                           ("2", "growth on"), ("4", "growth on")]
    assert [int(r["area"]) for r in rows] == [2000, 3600] * 2
    assert "| auto, growth on | 2 |" in (out / "table.md").read_text()

"""The slide-scale benchmark's mechanics (tiny random model): pyramids, modes, levels, report."""

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_sam_histo.engine.annotator import AnnotatorState
from napari_sam_histo.engine.tiles import TileBox
from napari_sam_histo.evaluation.slide_benchmark import (RegionRun, format_table, level0_mask, run_benchmark,
                                                        seam_band, summarize_runs)


@pytest.fixture
def regions(tmp_path):
    folder = tmp_path / "regions"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    mask = np.zeros((400, 600), np.uint8)
    mask[100:300, 150:450] = 255
    iio.imwrite(folder / "images" / "r1.png", image)
    iio.imwrite(folder / "masks" / "r1.png", mask)
    return folder


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
    rows = list(csv.DictReader(open(out / "runs.csv")))
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
    """A collapse is a click after which IoU is below half the best before it (the issue's region:
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

"""The Annotator dock on the real CC0 slide with the real MobileSAM (Xvfb)."""

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from napari_sam_histo._napari.annotator_dock import ANNOTATIONS, CLICKS, CURRENT, AnnotatorDock  # noqa: E402

from .conftest import SAMPLE_SLIDE  # noqa: E402

FRAGMENT = (2091, 615)  # a tissue fragment alone on the glass, level-0 (x, y)


@pytest.fixture
def dock(make_napari_viewer, qtbot, mobile_sam):
    viewer = make_napari_viewer()
    viewer.open(str(SAMPLE_SLIDE), plugin="napari-sam-histo")
    widget = AnnotatorDock(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.layer_combo.currentText() == "cmu-1-small-region"
    widget.model_combo.setCurrentText("vit_t")
    widget.device_combo.setCurrentText("cpu")
    widget.start()
    qtbot.waitUntil(lambda: widget.annotator is not None, timeout=120_000)
    return widget


@pytest.mark.gui
def test_click_accept_export_and_reimport(dock, qtbot, tmp_path):
    dock.add_click(*FRAGMENT)
    assert len(dock.viewer.layers[CLICKS].data) == 1  # the click shows at once
    qtbot.waitUntil(lambda: dock.pending == 0, timeout=120_000)
    current = dock.viewer.layers[CURRENT]
    assert current.data.any() and current.data.shape == (1024, 1024)
    dock.accept()
    qtbot.waitUntil(lambda: dock.pending == 0 and bool(dock.annotator.objects), timeout=60_000)
    [obj] = dock.annotator.objects
    assert obj.class_name == "Tumor" and obj.clicks == 1 and obj.model == "vit_t"
    min_x, min_y, max_x, max_y = np.array([p.bounds() for p in obj.polygons]).T
    assert min_x.min() < FRAGMENT[0] < max_x.max() and min_y.min() < FRAGMENT[1] < max_y.max()
    assert len(dock.viewer.layers[ANNOTATIONS].data) >= 1 and not dock.viewer.layers[CLICKS].data.size

    geojson = dock.export_geojson(tmp_path / "slide.geojson")
    feature = json.loads(geojson.read_text())["features"][0]
    assert feature["properties"]["classification"]["name"] == "Tumor"
    assert "Area µm^2" in feature["properties"]["measurements"]
    labels = tifffile.imread(dock.export_tiff(tmp_path / "slide.ome.tif"))
    assert labels.shape == (2967, 2220) and labels[FRAGMENT[1], FRAGMENT[0]] == 1
    assert dock.import_geojson(geojson) == 1 and len(dock.annotator.objects) == 2


@pytest.mark.gui
def test_undo_and_clicks_outside_the_slide(dock, qtbot):
    dock.add_click(*FRAGMENT)
    dock.add_click(FRAGMENT[0] + 40, FRAGMENT[1], positive=False)
    qtbot.waitUntil(lambda: dock.pending == 0, timeout=120_000)
    assert len(dock.annotator.clicks) == 2
    dock.undo()
    qtbot.waitUntil(lambda: dock.pending == 0, timeout=60_000)
    assert len(dock.annotator.clicks) == 1 and len(dock.viewer.layers[CLICKS].data) == 1
    dock.add_click(5000, 10)
    assert dock.status.text().startswith("⚠") and "outside" in dock.status.text()

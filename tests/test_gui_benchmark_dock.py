"""The Benchmark dock in a real napari viewer (Xvfb), with the real MobileSAM."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_sam_histo._napari.benchmark_dock import REPLAY_PREFIX, BenchmarkDock  # noqa: E402

from .test_benchmark import make_dataset  # noqa: E402


@pytest.fixture
def dock(make_napari_viewer, tmp_path, mobile_sam):
    viewer = make_napari_viewer()
    widget = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(widget)
    widget.dataset_edit.setText(str(make_dataset(tmp_path / "data", n=2)))
    widget.out_edit.setText(str(tmp_path / "report"))
    widget.clicks_spin.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    return widget


@pytest.mark.gui
def test_run_fills_the_table_then_replay_steps_through_the_clicks(dock, qtbot, tmp_path):
    dock.start()
    assert not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()  # runs in the background
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.table.rowCount() == 1 and dock.table.verticalHeaderItem(0).text() == "vit_t+sam"
    assert dock.table.horizontalHeaderItem(0).text() == "NoC@80"
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["partial"] is False and summary["methods"]["vit_t+sam"]["n_samples"] == 2
    assert dock.sample_combo.count() == 2

    dock.sample_combo.setCurrentIndex(0)
    dock.start_replay()
    qtbot.waitUntil(lambda: REPLAY_PREFIX + "prediction" in dock.viewer.layers, timeout=60_000)
    layers = dock.viewer.layers
    assert layers[REPLAY_PREFIX + "image"].rgb and layers[REPLAY_PREFIX + "ground truth"].contour == 2
    n_clicks = len(dock._replay.ious)
    assert dock.slider.maximum() == n_clicks and len(layers[REPLAY_PREFIX + "clicks"].data) == 1
    first = layers[REPLAY_PREFIX + "prediction"].data.copy()
    assert first.any()
    if n_clicks > 1:
        dock.slider.setValue(2)
        assert len(layers[REPLAY_PREFIX + "clicks"].data) == 2
        assert not np.array_equal(layers[REPLAY_PREFIX + "prediction"].data, first)
    assert "IoU" in dock.step_label.text()

    copied = dock.export_report(tmp_path / "export")
    assert (copied / "summary.json").is_file() and (copied / "miou.png").is_file()


@pytest.mark.gui
def test_bad_form_input_is_shown_not_raised(dock):
    dock.iou_edit.setText("0.8 lots")
    dock.start()
    assert dock.status.text().startswith("⚠ Target IoUs") and dock.run_button.isEnabled()
    dock.iou_edit.setText("0.8")
    dock.dataset_edit.setText("/no/such/folder")
    dock.start()
    assert "Dataset not found" in dock.status.text()


@pytest.mark.gui
def test_cancel_leaves_a_partial_report(dock, qtbot, tmp_path):
    dock.dataset_edit.setText(str(make_dataset(tmp_path / "more", n=6)))
    dock.start()
    dock.cancel()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["partial"] is True and summary["methods"]["vit_t+sam"]["n_samples"] < 6

"""The Benchmark dock in a real napari viewer (Xvfb): with the real MobileSAM, and with the tiny
random model for the mechanics (report folder in use, Replay during a run, layout, the view, the
remembered paths, a replay over a slide in µm)."""

import csv
import json
import threading

import numpy as np
import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QPoint, QRect, QSettings, QStandardPaths, Qt, QTimer  # noqa: E402
from qtpy.QtWidgets import QApplication, QMessageBox, QScrollArea  # noqa: E402

import napari_sam_histo._napari.benchmark_run as benchmark_run  # noqa: E402
from napari_sam_histo._napari.annotator.view import camera
from napari_sam_histo._napari.benchmark_dock import BenchmarkDock  # noqa: E402
from napari_sam_histo._napari.benchmark_replay import REPLAY_PREFIX  # noqa: E402
from napari_sam_histo._napari.benchmark_replay_panel import REPLAY_BLOCKED_TIP  # noqa: E402
from napari_sam_histo._napari.benchmark_results import PLOT_MIN_HEIGHT  # noqa: E402
from napari_sam_histo._napari.benchmark_settings import (  # noqa: E402
    APPLICATION,
    DEFAULT_REPORT_FOLDER,
    ORGANIZATION,
    BenchmarkPaths,
)
from napari_sam_histo._napari.dock_tabs import dock_of  # noqa: E402

from ..evaluation.test_benchmark import make_dataset  # noqa: E402
from ..evaluation.test_benchmark_report_folder import tiny_methods  # noqa: E402
from .test_gui_docks_fit import _show_tab  # noqa: E402


@pytest.fixture(autouse=True)
def user_config(tmp_path):
    """The user settings folder that the dock's QSettings write to: a folder of the test's own,
    never the real ~/.config (put back afterwards)."""
    real = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "config"))
    yield tmp_path / "config"
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, real)


def _docked(viewer, tmp_path, max_clicks: int) -> BenchmarkDock:
    """The dock in ``viewer`` with a two-image dataset and a report folder of the test's own."""
    widget = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(widget)
    widget.dataset_edit.setText(str(make_dataset(tmp_path / "data", n=2)))
    widget.out_edit.setText(str(tmp_path / "report"))
    widget.clicks_spin.setValue(max_clicks)
    widget.device_combo.setCurrentText("cpu")
    return widget


@pytest.fixture
def dock(make_napari_viewer, tmp_path, mobile_sam):
    return _docked(make_napari_viewer(), tmp_path, 4)


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
    n_clicks = len(dock.replay.result.ious)
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


# -- mechanics, with the tiny random model --------------------------------------------------------

class Gated:
    """A method (``evaluation.runner.InteractiveModel``) that holds the run at every sample but s0
    until ``gate`` is set."""

    def __init__(self, inner, gate):
        self.inner, self.gate, self.name = inner, gate, inner.name
        self.predictor = inner.predictor

    @property
    def encoder_calls(self):
        return self.inner.encoder_calls

    @property
    def store_loads(self):
        return self.inner.store_loads

    @property
    def runtime(self):
        return self.inner.runtime

    def begin(self, sample):
        if sample.sample_id != "s0":
            assert self.gate.wait(60)
        return self.inner.begin(sample)


@pytest.fixture
def tiny_dock(make_napari_viewer, tmp_path, monkeypatch, tiny_model):
    """The dock on a shown viewer, building the tiny model's methods instead of loading weights."""
    monkeypatch.setattr(benchmark_run, "build_methods", lambda config: tiny_methods(tiny_model)[:1])
    return _docked(make_napari_viewer(show=True), tmp_path, 3)


def _run(dock, qtbot):
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.benchmark.worker is None and dock.run_button.isEnabled(), timeout=120_000)


def _rows(folder):
    return [(r["sample"], r["status"]) for r in csv.DictReader(open(folder / "samples.csv", newline=""))]


@pytest.mark.gui
def test_a_report_folder_in_use_is_resumed_or_a_new_folder_taken_never_overwritten(tiny_dock, qtbot, tmp_path):
    dock, report = tiny_dock, tmp_path / "report"
    dock.limit_spin.setValue(1)
    _run(dock, qtbot)
    assert _rows(report) == [("s0", "ok")]
    before = (report / "samples.csv").read_bytes()
    asked = []

    def answer(choice):
        def ask(folder):
            asked.append(folder)
            return choice
        return ask

    dock.limit_spin.setValue(0)  # all images
    dock.ask_existing_report = answer("cancel")
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    assert asked == [report] and dock.benchmark.worker is None and "already holds a report" in dock.status.text()
    assert (report / "samples.csv").read_bytes() == before

    dock.ask_existing_report = answer("new")
    _run(dock, qtbot)
    assert dock.out_edit.text() == str(tmp_path / "report-2")
    assert _rows(tmp_path / "report-2") == [("s0", "ok"), ("s1", "ok")]
    assert (report / "samples.csv").read_bytes() == before  # the first report is untouched

    dock.out_edit.setText(str(report))
    dock.ask_existing_report = answer("resume")
    _run(dock, qtbot)
    assert _rows(report) == [("s0", "ok"), ("s1", "ok")]  # s0 kept, s1 appended
    summary = json.loads((report / "summary.json").read_text())
    assert summary["partial"] is False and summary["methods"]["tiny+sam"]["n_samples"] == 2
    assert [dock.sample_combo.itemText(i) for i in range(dock.sample_combo.count())] == ["s0", "s1"]


@pytest.mark.gui
def test_the_question_offers_resume_a_new_folder_and_cancel(tiny_dock, qtbot, tmp_path):
    seen = []

    def press(label):
        def click():
            box = QApplication.activeModalWidget()
            assert isinstance(box, QMessageBox)
            seen.append(sorted(b.text().replace("&", "") for b in box.buttons()))
            next(b for b in box.buttons() if b.text().replace("&", "") == label).click()
        QTimer.singleShot(50, click)

    (tmp_path / "report").mkdir()
    press("Resume")
    assert tiny_dock.ask_existing_report(tmp_path / "report") == "resume"
    press("New folder (report-2)")
    assert tiny_dock.ask_existing_report(tmp_path / "report") == "new"
    press("Cancel")
    assert tiny_dock.ask_existing_report(tmp_path / "report") == "cancel"
    assert seen[0] == ["Cancel", "New folder (report-2)", "Resume"]


@pytest.mark.gui
def test_replay_cannot_use_the_predictor_of_a_running_benchmark(tiny_dock, qtbot, monkeypatch):
    dock = tiny_dock
    gate = threading.Event()
    tiny = benchmark_run.build_methods
    monkeypatch.setattr(benchmark_run, "build_methods", lambda config: [Gated(m, gate) for m in tiny(config)])
    try:
        qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: dock.sample_combo.count() == 1, timeout=60_000)  # s0 done, s1 held
        running = dock.benchmark.methods[0].predictor
        decoded = running.last_decoder_s
        assert not dock.replay_button.isEnabled() and dock.replay_button.toolTip() == REPLAY_BLOCKED_TIP
        qtbot.mouseClick(dock.replay_button, Qt.MouseButton.LeftButton)
        dock.start_replay()  # even called directly
        assert dock.replay.worker is None and "while a benchmark runs" in dock.status.text()
        assert running.last_decoder_s == decoded  # nothing decoded on the run's predictor
    finally:
        gate.set()
    qtbot.waitUntil(lambda: dock.benchmark.worker is None, timeout=120_000)
    assert dock.replay_button.isEnabled() and "while a benchmark runs" not in dock.replay_button.toolTip()
    qtbot.mouseClick(dock.replay_button, Qt.MouseButton.LeftButton)
    assert not dock.run_button.isEnabled()  # and no run while the replay goes on
    qtbot.waitUntil(lambda: dock.replay.worker is None, timeout=60_000)
    assert dock.run_button.isEnabled() and REPLAY_PREFIX + "prediction" in dock.viewer.layers


@pytest.mark.gui
def test_replay_moves_the_view_to_the_image_and_outlines_the_truth(tiny_dock, qtbot):
    dock, viewer = tiny_dock, tiny_dock.viewer
    slide = viewer.add_image(np.zeros((3000, 4000), np.uint8), name="slide", translate=(5000, 5000))
    viewer.reset_view()  # the view on the slide, far from the replayed image
    _run(dock, qtbot)
    dock.sample_combo.setCurrentText("s1")
    qtbot.mouseClick(dock.replay_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.replay.result is not None and dock.replay.worker is None, timeout=60_000)
    image = viewer.layers[REPLAY_PREFIX + "image"]
    (top, left), (bottom, right) = image.extent.world[:, -2:]
    y, x = camera(viewer).center[-2:]
    assert top <= y <= bottom and left <= x <= right
    assert camera(viewer).zoom * (right - left) > 0.5 * min(viewer.canvas.size)  # zoomed to fill the view
    truth = viewer.layers[REPLAY_PREFIX + "ground truth"]
    names = [layer.name for layer in viewer.layers]
    assert truth.visible and truth.opacity == 1 and truth.data.any() and truth.contour >= 2
    assert names.index(truth.name) > max(names.index(image.name), names.index(REPLAY_PREFIX + "prediction"))
    assert np.allclose(truth.colormap.map(np.array([1]))[0][:3], [1, 1, 0])  # yellow on H&E
    assert slide.visible  # the other layers are left as they were


@pytest.mark.gui
def test_skipped_samples_are_listed_with_their_reasons(tiny_dock, qtbot, tmp_path):
    dock = tiny_dock
    data = make_dataset(tmp_path / "bad", n=1)
    (data / "images" / "nomask.png").write_bytes((data / "images" / "s0.png").read_bytes())
    (data / "images" / "broken.png").write_bytes(b"broken")
    (data / "masks" / "broken.png").write_bytes((data / "masks" / "s0.png").read_bytes())
    dock.dataset_edit.setText(str(data))
    assert dock.skipped_toggle.isHidden()  # nothing skipped yet
    _run(dock, qtbot)
    assert dock.skipped_toggle.isVisible() and dock.skipped_toggle.text().startswith("Skipped (2)")
    assert dock.skipped_table.isHidden()
    qtbot.mouseClick(dock.skipped_toggle, Qt.MouseButton.LeftButton)
    assert dock.skipped_table.isVisible()
    listed = {dock.skipped_table.item(r, 0).text(): dock.skipped_table.item(r, 1).text()
              for r in range(dock.skipped_table.rowCount())}
    assert set(listed) == {"broken", "nomask"}
    assert listed["broken"].startswith("the image file could not be read: ")
    assert listed["nomask"].startswith("no mask was found for the image ")


@pytest.mark.gui
@pytest.mark.parametrize("screen", [(1920, 1080), (1366, 768)], ids=["1920x1080", "1366x768"])
def test_the_dock_is_usable_beside_the_annotator(make_napari_viewer, qtbot, screen):
    from napari_sam_histo._napari.annotator.dock import AnnotatorDock

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*screen)
    annotator = AnnotatorDock(viewer)
    viewer.window.add_dock_widget(annotator, name="Annotator")
    dock = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(dock, name="Benchmark")  # as napari's Plugins menu docks it
    qtbot.waitUntil(lambda: dock.isVisible() and dock.height() > 0, timeout=10_000)
    qtbot.wait(200)
    assert (window.width(), window.height()) == screen  # both docks fit: the window did not grow
    assert dock_of(dock) in window.tabifiedDockWidgets(dock_of(annotator))  # tabs, each the whole height
    scroll = dock.findChild(QScrollArea)
    assert scroll is dock.scroll and scroll.widgetResizable()
    viewport = scroll.viewport()
    assert viewport.height() >= 0.6 * window.height()  # not squashed under the Annotator
    assert scroll.widget().width() <= viewport.width()  # nothing cut off on the right

    def inside(widget):
        return viewport.rect().contains(QRect(widget.mapTo(viewport, QPoint(0, 0)), widget.size()))

    assert dock.canvas.height() >= PLOT_MIN_HEIGHT
    scroll.ensureWidgetVisible(dock.replay_button)
    qtbot.wait(50)
    assert inside(dock.replay_button)  # reachable by scrolling with the settings open
    assert dock.settings_toggle.text() == "Settings ▾" and dock.settings_box.isVisible()
    qtbot.mouseClick(dock.settings_toggle, Qt.MouseButton.LeftButton)  # fold the settings away
    qtbot.wait(50)
    assert dock.settings_box.isHidden() and dock.settings_toggle.text() == "Settings ▸"
    scroll.ensureWidgetVisible(dock.replay_button)
    qtbot.wait(50)
    assert inside(dock.canvas) and inside(dock.replay_button)  # the plot and Replay on screen together
    assert dock.canvas.height() >= PLOT_MIN_HEIGHT

    _show_tab(qtbot, window, dock_of(annotator))  # one click back to annotating
    assert not annotator.start_button.visibleRegion().isEmpty() and dock.visibleRegion().isEmpty()
    _show_tab(qtbot, window, dock_of(dock))
    assert not dock.run_button.visibleRegion().isEmpty()


@pytest.mark.gui
def test_the_dataset_and_report_folder_are_remembered(make_napari_viewer, qtbot, tmp_path, user_config):
    viewer = make_napari_viewer()
    first = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(first, name="Benchmark")
    assert first.dataset_edit.text() == "" and first.out_edit.text() == str(DEFAULT_REPORT_FOLDER)
    dataset, report = tmp_path / "my data", tmp_path / "reports" / "run 1"
    qtbot.keyClicks(first.dataset_edit, str(dataset))  # typed
    first.out_edit.setText(str(report))  # as the … button's folder dialog sets it
    viewer.window.remove_dock_widget(first)

    reopened = BenchmarkDock(viewer)  # the dock opened again
    viewer.window.add_dock_widget(reopened, name="Benchmark")
    assert (reopened.dataset_edit.text(), reopened.out_edit.text()) == (str(dataset), str(report))

    # on disk, in the plugin's own settings file, where napari started again reads them
    ini = user_config / ORGANIZATION / f"{APPLICATION}.ini"
    assert str(dataset) in ini.read_text(encoding="utf-8")
    stored = BenchmarkPaths(QSettings(str(ini), QSettings.Format.IniFormat))
    assert (stored.dataset, stored.report_folder) == (str(dataset), str(report))


@pytest.mark.gui
def test_a_replay_over_a_slide_in_micrometres_is_drawn_in_micrometres_beside_it(tiny_dock, qtbot):
    from napari.utils.notifications import notification_manager

    dock, viewer = tiny_dock, tiny_dock.viewer
    slide = viewer.add_image(np.zeros((3000, 4000), np.uint8), name="slide", scale=(0.5, 0.5), units=("um", "um"))
    viewer.reset_view()
    _run(dock, qtbot)
    seen = len(notification_manager.records)
    dock.sample_combo.setCurrentText("s1")
    qtbot.mouseClick(dock.replay_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.replay.result is not None and dock.replay.worker is None, timeout=60_000)
    qtbot.wait(300)  # napari checks the layers' units when it next draws
    replayed = [viewer.layers[REPLAY_PREFIX + name] for name in ("image", "prediction", "ground truth", "clicks")]
    for layer in replayed:
        assert layer.units == slide.units and tuple(layer.scale) == tuple(slide.scale), layer.name
        assert tuple(layer.translate) == tuple(replayed[0].translate), layer.name
    assert viewer.layers.extent.units == slide.units
    said = [str(n.message) for n in notification_manager.records[seen:]]
    assert not any("Inconsistent units" in message for message in said), said

    image = replayed[0]
    (top, left), (bottom, right) = image.extent.world[:, -2:]
    (_, _), (_, slide_right) = slide.extent.world[:, -2:]
    assert left > slide_right  # beside the slide, not over it
    y, x = camera(viewer).center[-2:]
    assert top <= y <= bottom and left <= x <= right  # and the view on it
    assert camera(viewer).zoom * (right - left) > 0.5 * min(viewer.canvas.size)

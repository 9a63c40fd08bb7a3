"""The "Benchmark" dock: run the automatic click evaluation on a dataset and replay its clicks.

Thin over ``evaluation.benchmark``: the run is ``iter_benchmark`` in a napari thread worker (with a
napari progress bar and a Cancel button; napari stays responsive), the table and the mIoU plot fill
in after every image, and Replay re-runs one sample keeping its masks and shows each click as
napari layers (image, ground-truth outline, clicks green/red, predicted mask), the view moved onto them.

Opened beside the Annotator, the two docks are tabs of the same dock area (``dock_tabs``), each with
the whole height; the contents scroll, the settings fold away, and the dock is never narrower than
its contents (nothing is cut off on the right), so both docks are usable on a 1366x768 screen. The
dataset and report folder are remembered across openings and napari sessions
(``benchmark_settings``). A replayed sample is drawn beside the open layers, at their pixel size and
in their units (a slide in µm stays in µm). A report folder that already holds a report is never
overwritten silently: the user resumes it or picks a new folder. Replay is off while a run goes
on: it would share the run's predictor and CPU, and distort the seconds per click being measured.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError, SamHistoError
from ..evaluation.benchmark import iter_benchmark
from ..evaluation.benchmark_config import BenchmarkConfig, build_methods
from ..evaluation.dataset import Skipped, find_pairs, load_samples
from ..evaluation.report import free_folder_beside, holds_report, report_samples, skipped_samples, threshold_label
from ..evaluation.runner import SampleResult, run_sample
from .benchmark_form import BenchmarkForm
from .benchmark_replay import ReplayLayers
from .benchmark_settings import BenchmarkPaths, user_settings
from .dock_tabs import TabsWithPartners, needed_width

PLOT_MIN_HEIGHT = 200  # px: the mIoU curve stays readable however crowded the dock area is
REPLAY_TIP = "Re-run the chosen sample with the chosen method and step through its clicks."
REPLAY_BLOCKED_TIP = ("Replay is off while a benchmark runs: it would share the run's model and distort the "
                      "seconds per click being measured.")


class BenchmarkDock(QWidget):
    def __init__(self, napari_viewer, parent=None, settings: QSettings | None = None) -> None:
        """``settings``: where the dataset and report folder are remembered (the plugin's own
        user settings file when ``None``)."""
        super().__init__(parent)
        self.viewer = napari_viewer
        self.paths = BenchmarkPaths(settings if settings is not None else user_settings())
        self._cancel = threading.Event()
        self._worker = None
        self._methods = []
        self._config: BenchmarkConfig | None = None
        self._summary: dict = {}
        self._replay: SampleResult | None = None
        self._replay_sample = None
        self._replay_worker = None
        self.replay_layers = ReplayLayers(napari_viewer)
        self._build()
        from .annotator.dock import AnnotatorDock

        self._tabs = TabsWithPartners(self, (AnnotatorDock,))
        self._joined_tabs = False

    # -- layout -------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Once napari has docked the dock: a tab beside the Annotator's dock (see ``dock_tabs``)."""
        super().showEvent(event)
        if not self._joined_tabs:
            self._joined_tabs = True
            QTimer.singleShot(0, self._tabs.join)

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        layout = QVBoxLayout(content)
        self.scroll.setWidget(content)
        outer.addWidget(self.scroll)

        self.settings_toggle = QToolButton()
        self.settings_toggle.setCheckable(True)
        self.settings_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.settings_toggle.toggled.connect(self._show_settings)
        self.settings_box = BenchmarkForm(self.paths)
        f = self.settings_box
        (self.dataset_edit, self.out_edit, self.models_edit, self.sam_check, self.modified_check, self.md_check,
         self.iou_edit, self.clicks_spin, self.limit_spin, self.instances_check, self.components_check,
         self.suffix_edit, self.ignore_edit, self.mask_prompt_combo, self.device_combo) = (
            f.dataset_edit, f.out_edit, f.models_edit, f.sam_check, f.modified_check, f.md_check, f.iou_edit,
            f.clicks_spin, f.limit_spin, f.instances_check, f.components_check, f.suffix_edit, f.ignore_edit,
            f.mask_prompt_combo, f.device_combo)
        layout.addWidget(self.settings_box)
        self.settings_toggle.setChecked(True)

        buttons = QHBoxLayout()
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.export_button = QPushButton("Export report…")
        self.cancel_button.setEnabled(False)
        self.export_button.setEnabled(False)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_clicked)
        for button in (self.settings_toggle, self.run_button, self.cancel_button, self.export_button):
            buttons.addWidget(button)
        layout.insertLayout(0, buttons)  # above the settings, so that Run stays in reach
        self.status = QLabel("Choose a dataset and press Run.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.skipped_toggle = QToolButton()
        self.skipped_toggle.setCheckable(True)
        self.skipped_toggle.toggled.connect(self._show_skipped_list)
        self.skipped_table = QTableWidget(0, 2)
        self.skipped_table.setHorizontalHeaderLabels(["Sample", "Reason"])
        self.skipped_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.skipped_table.verticalHeader().setVisible(False)
        self.skipped_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # reasons: tooltips
        layout.addWidget(self.skipped_toggle)
        layout.addWidget(self.skipped_table)
        self._show_skipped({})

        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.table)
        self._fit_height(self.table)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(PLOT_MIN_HEIGHT)
        layout.addWidget(self.canvas, stretch=1)  # the plot takes the room there is

        replay = QGroupBox("Replay")
        replay_layout = QFormLayout(replay)
        self.sample_combo, self.method_combo = QComboBox(), QComboBox()
        self.replay_button = QPushButton("Replay sample")
        self.replay_button.setToolTip(REPLAY_TIP)
        self.replay_button.clicked.connect(self.start_replay)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(1)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self.show_step)
        steps = QHBoxLayout()
        self.prev_button, self.next_button = QPushButton("◀"), QPushButton("▶")
        self.prev_button.clicked.connect(lambda: self.slider.setValue(self.slider.value() - 1))
        self.next_button.clicked.connect(lambda: self.slider.setValue(self.slider.value() + 1))
        self.step_label = QLabel("")
        for w in (self.prev_button, self.slider, self.next_button):
            steps.addWidget(w)
        choice = QHBoxLayout()
        choice.addWidget(self.sample_combo, stretch=1)
        choice.addWidget(self.method_combo, stretch=1)
        replay_layout.addRow("Sample, method", choice)
        replay_layout.addRow(self.replay_button)
        replay_layout.addRow("Click", steps)
        replay_layout.addRow(self.step_label)
        layout.addWidget(replay)
        # never narrower than the contents: the horizontal scroll bar is off, so they would be cut off
        self.scroll.setMinimumWidth(needed_width(self.scroll))

    @staticmethod
    def _fit_height(table: QTableWidget, most_rows: int = 4) -> None:
        """As tall as its rows, up to ``most_rows`` (then it scrolls): no empty grey box."""
        rows = sum(table.rowHeight(r) for r in range(min(table.rowCount(), most_rows)))
        scrolls = table.rowCount() and table.horizontalScrollBarPolicy() != Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        table.setFixedHeight(table.horizontalHeader().sizeHint().height() + rows + 2 * table.frameWidth()
                             + (table.horizontalScrollBar().sizeHint().height() if scrolls else 0))

    def _show_settings(self, shown: bool) -> None:
        """Fold the settings away (they take half the dock) to make room for the results."""
        self.settings_box.setVisible(shown)
        self.settings_toggle.setText("Settings ▾" if shown else "Settings ▸")

    def _show_skipped_list(self, shown: bool) -> None:
        self.skipped_table.setVisible(shown and self.skipped_table.rowCount() > 0)
        self.skipped_toggle.setText(f"Skipped ({self.skipped_table.rowCount()}) " + ("▾" if shown else "▸"))

    def _show_skipped(self, skipped: dict[str, str]) -> None:
        """The skipped samples and why, under the status (hidden while there are none)."""
        self.skipped_table.setRowCount(len(skipped))
        for row, (sample, reason) in enumerate(skipped.items()):
            self.skipped_table.setItem(row, 0, QTableWidgetItem(sample))
            item = QTableWidgetItem(reason)
            item.setToolTip(reason)
            self.skipped_table.setItem(row, 1, item)
        self.skipped_table.resizeRowsToContents()
        self._fit_height(self.skipped_table, most_rows=5)
        self.skipped_toggle.setVisible(bool(skipped))
        self._show_skipped_list(self.skipped_toggle.isChecked())

    # -- run ----------------------------------------------------------------------------------
    def config(self) -> BenchmarkConfig:
        """The form as a config; ``InputError`` naming the field that is wrong."""
        return self.settings_box.config()

    def ask_existing_report(self, folder: Path) -> str:
        """The user's choice for a report folder that holds a report: "resume", "new" or "cancel".
        (Tests replace this method to answer without a dialog.)"""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Report folder in use")
        box.setText(f"{folder} already holds a benchmark report.")
        box.setInformativeText("Resume it (samples already in it are not run again), or write the new report "
                               f"into {free_folder_beside(folder).name}?")
        resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
        new = box.addButton(f"New folder ({free_folder_beside(folder).name})", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(new)
        box.exec()
        clicked = box.clickedButton()
        return "resume" if clicked == resume else "new" if clicked == new else "cancel"

    def start(self) -> None:
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            return  # one run at a time (the button is disabled meanwhile)
        if self._replay_worker is not None:
            self.status.setText("⚠ Wait for the replay to finish: it would slow the run and distort its timings.")
            return
        try:
            config = self.config()
            total = len(find_pairs(config.dataset, config.mask_suffix, config.limit))
        except SamHistoError as err:
            self.status.setText(f"⚠ {err}")
            return
        existing = "refuse"
        if holds_report(config.out_dir):
            choice = self.ask_existing_report(Path(config.out_dir))
            if choice == "cancel":
                self.status.setText(f"Not run: {config.out_dir} already holds a report.")
                return
            if choice == "resume":
                existing = "resume"
            else:
                config.out_dir = str(free_folder_beside(config.out_dir))
                self.out_edit.setText(config.out_dir)
        self._config, self._cancel = config, threading.Event()
        self.sample_combo.clear()
        if existing == "resume":  # the samples already in the report can be replayed too
            self.sample_combo.addItems(report_samples(config.out_dir))
        self._show_skipped({})
        cancel = self._cancel

        def run():
            methods = build_methods(config)
            yield ("methods", methods)
            for event in iter_benchmark(config, methods, cancel, existing):
                yield ("event", event)

        worker = thread_worker(run, progress={"total": total + 1, "desc": "benchmark"})()
        worker.yielded.connect(self._on_yield)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._set_running(True)
        self.settings_toggle.setChecked(False)  # room for the table, the plot and Replay
        self.status.setText(f"Loading {', '.join(config.models)}…")
        worker.start()

    def _set_running(self, running: bool) -> None:
        """Run and Replay exclude each other: both would use the same predictor and CPU."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.replay_button.setEnabled(not running)
        self.replay_button.setToolTip(REPLAY_BLOCKED_TIP if running else REPLAY_TIP)

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("Cancelling after the current image…")

    def _on_yield(self, item) -> None:
        kind, payload = item
        if kind == "methods":
            self._methods = payload
            self.method_combo.clear()
            self.method_combo.addItems([m.name for m in payload])
            self.status.setText("Running…")
            return
        event = payload
        self._summary = event.summary
        for result in event.results:
            if self.sample_combo.findText(result.sample_id) < 0:
                self.sample_combo.addItem(result.sample_id)
        self._show_summary(event.summary)
        self._show_skipped(skipped_samples(event.summary))
        partial = event.summary.get("partial") and event.done < event.total
        self.status.setText(f"{event.done} / {event.total} images" + (" (partial)" if partial else ""))

    def _on_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")
        if self._worker is not None:
            self.settings_toggle.setChecked(True)  # a run that fails: the fix is usually in the settings

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        self.export_button.setEnabled(bool(self._summary))
        if self._summary and not self.status.text().startswith("⚠"):
            state = "cancelled: partial report" if self._summary.get("partial") else "done"
            self.status.setText(f"{state} — {self._config.out_dir}")

    def _show_summary(self, summary: dict) -> None:
        thresholds = summary["thresholds"]
        columns = ([f"NoC@{threshold_label(t)}" for t in thresholds] + ["SPC(s)", "SPC e2e(s)"]
                   + [f"NoF/n@{threshold_label(t)}" for t in thresholds if t >= 0.85] + ["n"])
        keys = ([f"noc@{threshold_label(t)}" for t in thresholds] + ["spc_decoder_s", "spc_total_s"]
                + [f"nof_per_n@{threshold_label(t)}" for t in thresholds if t >= 0.85] + ["n_samples"])
        methods = summary["methods"]
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(methods))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setVerticalHeaderLabels(list(methods))
        for row, m in enumerate(methods.values()):
            for column, key in enumerate(keys):
                value = m.get(key)
                text = "-" if value is None else (str(value) if isinstance(value, int) else f"{value:.3f}")
                self.table.setItem(row, column, QTableWidgetItem(text))
        self._fit_height(self.table)
        from matplotlib.ticker import MaxNLocator

        self.figure.clear()
        axes = self.figure.add_subplot(111)
        for name, m in methods.items():
            curve = m["miou_per_click"]
            if curve:
                axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=2, label=name)
        axes.set_xlabel("clicks")
        axes.set_ylabel("mIoU")
        axes.set_ylim(0, 1)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize=7, loc="lower right")
        self.figure.tight_layout()
        self.canvas.draw_idle()

    # -- export -------------------------------------------------------------------------------
    def export_report(self, destination: str | Path) -> Path:
        """Copy the report folder into ``destination`` (refuses to overwrite)."""
        source = Path(self._config.out_dir)
        target = Path(destination) / source.name
        if target.exists():
            raise InputError(f"{target} exists already; choose another folder.")
        shutil.copytree(source, target)
        return target

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the report into")
        if folder:
            try:
                self.status.setText(f"Report copied to {self.export_report(folder)}")
            except (SamHistoError, OSError) as err:
                self.status.setText(f"⚠ {err}")

    # -- replay -------------------------------------------------------------------------------
    def start_replay(self) -> None:
        from napari.qt.threading import thread_worker

        if self._worker is not None:  # the button is disabled too; this guards direct calls
            self.status.setText(f"⚠ {REPLAY_BLOCKED_TIP}")
            return
        sample_id, method_name = self.sample_combo.currentText(), self.method_combo.currentText()
        method = next((m for m in self._methods if m.name == method_name), None)
        if not sample_id or method is None or self._config is None:
            self.status.setText("⚠ Run a benchmark first, then pick a sample.")
            return
        config = self._config

        def replay():
            stem = sample_id.split("#")[0]
            pair = next(p for p in find_pairs(config.dataset, config.mask_suffix) if p.stem == stem)
            sample = next(s for s in load_samples(pair, config.instances, config.ignore_value, config.components)
                          if not isinstance(s, Skipped) and s.sample_id == sample_id)
            return sample, run_sample(method, sample, config.max_clicks, config.stop_iou, keep_masks=True)

        worker = thread_worker(replay)()
        worker.returned.connect(self._show_replay)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_replay_finished)
        self.status.setText(f"Replaying {sample_id} with {method_name}…")
        self._replay_worker = worker
        self.run_button.setEnabled(False)
        self.replay_button.setEnabled(False)
        worker.start()

    def _on_replay_finished(self) -> None:
        self._replay_worker = None
        self.run_button.setEnabled(self._worker is None)
        self.replay_button.setEnabled(self._worker is None)

    def _show_replay(self, returned) -> None:
        sample, result = returned
        self._replay_sample, self._replay = sample, result
        self.replay_layers.show(sample)
        self.slider.setEnabled(True)
        self.slider.setMaximum(max(len(result.ious), 1))
        self.slider.setValue(1)
        self.show_step(1)
        self.status.setText(f"Replay of {sample.sample_id}: {len(result.ious)} clicks")

    def show_step(self, step: int) -> None:
        """Show the state after click ``step`` (1-based)."""
        if self._replay is not None and self._replay.ious:
            self.step_label.setText(self.replay_layers.show_step(self._replay, step))

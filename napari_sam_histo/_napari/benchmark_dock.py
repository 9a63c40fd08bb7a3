"""The "Benchmark" dock: run the automatic click evaluation on a dataset and replay its clicks.

Thin over ``evaluation.benchmark``, it puts together the settings (``benchmark_form``), the run with
its Run, Cancel and Export buttons (``benchmark_run``: a napari thread worker with a progress bar;
napari stays responsive), the results that fill in after every image (``benchmark_results``: the
skipped samples, the table and the mIoU plot) and Replay (``benchmark_replay_panel``: one sample
re-run keeping its masks, each click shown as napari layers). Run and Replay exclude each other:
both would use the same predictor and CPU.

Opened beside the Annotator, the two docks are tabs of the same dock area (``dock_tabs``), each with
the whole height; the contents scroll, the settings fold away, and the dock is never narrower than
its contents (nothing is cut off on the right), so both docks are usable on a 1366x768 screen. The
dataset and report folder are remembered across openings and napari sessions
(``benchmark_settings``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import SamHistoError
from ..evaluation.benchmark_config import BenchmarkConfig
from ..evaluation.dataset import find_pairs
from ..evaluation.report import free_folder_beside, holds_report, report_samples, skipped_samples
from .benchmark_form import BenchmarkForm
from .benchmark_replay_panel import ReplayPanel
from .benchmark_results import BenchmarkResults
from .benchmark_run import BenchmarkRun, ask_existing_report, copy_report
from .benchmark_settings import BenchmarkPaths, user_settings
from .dock_tabs import TabsWithPartners, needed_width


class BenchmarkDock(QWidget):
    def __init__(self, napari_viewer, parent=None, settings: QSettings | None = None,
                 ask_report: Callable[[Path], str] | None = None) -> None:
        """``settings``: where the dataset and report folder are remembered (the plugin's own
        user settings file when ``None``). ``ask_report(folder)``: the user's choice for a report
        folder that already holds a report, "resume", "new" or "cancel" (a dialog when ``None``,
        ``benchmark_run.ask_existing_report``)."""
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ask_existing_report = ask_report or (lambda folder: ask_existing_report(self, folder))
        self.paths = BenchmarkPaths(settings if settings is not None else user_settings())
        self.benchmark = BenchmarkRun(self._on_methods, self._on_event, self._on_error, self._on_finished)
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

        self.results = BenchmarkResults(layout)
        self.skipped_toggle, self.skipped_table = self.results.skipped_toggle, self.results.skipped_table
        self.table, self.figure, self.canvas = self.results.table, self.results.figure, self.results.canvas

        self.replay = ReplayPanel(self.viewer, self.benchmark, self.status.setText, self._on_error, self._replaying)
        self.sample_combo, self.method_combo = self.replay.sample_combo, self.replay.method_combo
        self.replay_button, self.slider, self.step_label = (self.replay.replay_button, self.replay.slider,
                                                            self.replay.step_label)
        self.prev_button, self.next_button = self.replay.prev_button, self.replay.next_button
        layout.addWidget(self.replay)
        # never narrower than the contents: the horizontal scroll bar is off, so they would be cut off
        self.scroll.setMinimumWidth(needed_width(self.scroll))

    def _show_settings(self, shown: bool) -> None:
        """Fold the settings away (they take half the dock) to make room for the results."""
        self.settings_box.setVisible(shown)
        self.settings_toggle.setText("Settings ▾" if shown else "Settings ▸")

    # -- run ----------------------------------------------------------------------------------
    def config(self) -> BenchmarkConfig:
        """The form as a config; ``InputError`` naming the field that is wrong."""
        return self.settings_box.config()

    def start(self) -> None:
        if self.benchmark.running:
            return  # one run at a time (the button is disabled meanwhile)
        if self.replay.worker is not None:
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
        # the samples already in a resumed report can be replayed too
        self.replay.offer_samples(report_samples(config.out_dir) if existing == "resume" else [])
        self.results.show_skipped({})
        self.benchmark.start(config, existing, total)
        self._set_running(True)
        self.settings_toggle.setChecked(False)  # room for the table, the plot and Replay
        self.status.setText(f"Loading {', '.join(config.models)}…")

    def _set_running(self, running: bool) -> None:
        """Run and Replay exclude each other: both would use the same predictor and CPU."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.replay.block(running)

    def _replaying(self, replaying: bool) -> None:
        self.run_button.setEnabled(not replaying and not self.benchmark.running)

    def cancel(self) -> None:
        self.benchmark.cancel()
        self.status.setText("Cancelling after the current image…")

    def _on_methods(self, methods: list) -> None:
        self.replay.offer_methods([m.name for m in methods])
        self.status.setText("Running…")

    def _on_event(self, event) -> None:
        for result in event.results:
            self.replay.add_sample(result.sample_id)
        self.results.show_summary(event.summary)
        self.results.show_skipped(skipped_samples(event.summary))
        partial = event.summary.get("partial") and event.done < event.total
        self.status.setText(f"{event.done} / {event.total} images" + (" (partial)" if partial else ""))

    def _on_error(self, err) -> None:
        message = str(err) if isinstance(err, SamHistoError) else f"{err.__class__.__name__}: {err}"
        self.status.setText(f"⚠ {message}")
        if self.benchmark.running:
            self.settings_toggle.setChecked(True)  # a run that fails: the fix is usually in the settings

    def _on_finished(self) -> None:
        self._set_running(False)
        summary = self.benchmark.summary
        self.export_button.setEnabled(bool(summary))
        if summary and not self.status.text().startswith("⚠"):
            state = "cancelled: partial report" if summary.get("partial") else "done"
            self.status.setText(f"{state} — {self.benchmark.config.out_dir}")

    # -- export -------------------------------------------------------------------------------
    def export_report(self, destination: str | Path) -> Path:
        """Copy the report folder into ``destination`` (refuses to overwrite)."""
        return copy_report(self.benchmark.config.out_dir, destination)

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the report into")
        if folder:
            try:
                self.status.setText(f"Report copied to {self.export_report(folder)}")
            except (SamHistoError, OSError) as err:
                self.status.setText(f"⚠ {err}")

    # -- replay -------------------------------------------------------------------------------
    def start_replay(self) -> None:
        self.replay.start()

    def show_step(self, step: int) -> None:
        """Show the replayed sample after click ``step`` (1-based)."""
        self.replay.show_step(step)

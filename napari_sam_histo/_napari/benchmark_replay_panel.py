"""The Benchmark dock's Replay box: re-run one sample of the last run with one of its methods,
keeping its masks, and step through its clicks as napari layers (``benchmark_replay``). Replay is off
while a run goes on: it would share the run's predictor and CPU, and distort the seconds per click
being measured."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSlider

from ..evaluation.dataset import Skipped, find_pairs, load_samples
from ..evaluation.runner import SampleResult, run_sample
from .benchmark_replay import ReplayLayers
from .benchmark_run import BenchmarkRun

REPLAY_TIP = "Re-run the chosen sample with the chosen method and step through its clicks."
REPLAY_BLOCKED_TIP = ("Replay is off while a benchmark runs: it would share the run's model and distort the "
                      "seconds per click being measured.")


class ReplayPanel(QGroupBox):
    def __init__(self, viewer, benchmark: BenchmarkRun, say: Callable[[str], None],
                 failed: Callable[[Exception], None], replaying: Callable[[bool], None], parent=None) -> None:
        """``benchmark``: the run whose samples and methods are replayed. ``say`` shows a status line,
        ``failed`` an error of the replay, and ``replaying`` is told when a replay starts (True) and
        ends (False)."""
        super().__init__("Replay", parent)
        self.benchmark, self.say, self.failed, self.replaying = benchmark, say, failed, replaying
        self.layers = ReplayLayers(viewer)
        self.worker = None  # the napari worker while a replay goes on
        self.result: SampleResult | None = None  # the replayed sample's clicks, IoUs and masks
        self.sample = None
        layout = QFormLayout(self)
        self.sample_combo, self.method_combo = QComboBox(), QComboBox()
        self.replay_button = QPushButton("Replay sample")
        self.replay_button.setToolTip(REPLAY_TIP)
        self.replay_button.clicked.connect(self.start)
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
        layout.addRow("Sample, method", choice)
        layout.addRow(self.replay_button)
        layout.addRow("Click", steps)
        layout.addRow(self.step_label)

    # -- what can be replayed ---------------------------------------------------------------------
    def block(self, running: bool) -> None:
        """Replay off while a run goes on (with a tooltip that says why), on again after it."""
        self.replay_button.setEnabled(not running)
        self.replay_button.setToolTip(REPLAY_BLOCKED_TIP if running else REPLAY_TIP)

    def offer_samples(self, sample_ids: list[str]) -> None:
        """Only ``sample_ids`` to choose from (a run starts: none, or those of the report it resumes)."""
        self.sample_combo.clear()
        self.sample_combo.addItems(sample_ids)

    def add_sample(self, sample_id: str) -> None:
        if self.sample_combo.findText(sample_id) < 0:
            self.sample_combo.addItem(sample_id)

    def offer_methods(self, names: list[str]) -> None:
        self.method_combo.clear()
        self.method_combo.addItems(names)

    # -- replaying ---------------------------------------------------------------------------------
    def start(self) -> None:
        from napari.qt.threading import thread_worker

        if self.benchmark.running:  # the button is disabled too; this guards direct calls
            self.say(f"⚠ {REPLAY_BLOCKED_TIP}")
            return
        sample_id, method_name = self.sample_combo.currentText(), self.method_combo.currentText()
        method = next((m for m in self.benchmark.methods if m.name == method_name), None)
        config = self.benchmark.config
        if not sample_id or method is None or config is None:
            self.say("⚠ Run a benchmark first, then pick a sample.")
            return

        def replay():
            stem = sample_id.split("#")[0]
            pair = next(p for p in find_pairs(config.dataset, config.mask_suffix) if p.stem == stem)
            sample = next(s for s in load_samples(pair, config.instances, config.ignore_value, config.components)
                          if not isinstance(s, Skipped) and s.sample_id == sample_id)
            return sample, run_sample(method, sample, config.max_clicks, config.stop_iou, keep_masks=True)

        worker = thread_worker(replay)()
        worker.returned.connect(self._show)
        worker.errored.connect(self.failed)
        worker.finished.connect(self._on_finished)
        self.say(f"Replaying {sample_id} with {method_name}…")
        self.worker = worker
        self.replaying(True)
        self.replay_button.setEnabled(False)
        worker.start()

    def _on_finished(self) -> None:
        self.worker = None
        self.replaying(False)
        self.replay_button.setEnabled(not self.benchmark.running)

    def _show(self, returned) -> None:
        sample, result = returned
        self.sample, self.result = sample, result
        self.layers.show(sample)
        self.slider.setEnabled(True)
        self.slider.setMaximum(max(len(result.ious), 1))
        self.slider.setValue(1)
        self.show_step(1)
        self.say(f"Replay of {sample.sample_id}: {len(result.ious)} clicks")

    def show_step(self, step: int) -> None:
        """Show the state after click ``step`` (1-based)."""
        if self.result is not None and self.result.ious:
            self.step_label.setText(self.layers.show_step(self.result, step))

"""A benchmark run of the Benchmark dock, and its report folder.

The run is ``iter_benchmark`` in a napari thread worker, with napari's progress bar (napari stays
responsive): it builds the methods, then reports after every image, and a cancel stops it after the
current image, leaving a partial report. A report folder that already holds a report is never
overwritten silently: the user resumes it or takes a new folder beside it
(``ask_existing_report``). ``copy_report`` exports the report folder elsewhere.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from qtpy.QtWidgets import QMessageBox, QWidget

from ..errors import InputError
from ..evaluation.benchmark import iter_benchmark
from ..evaluation.benchmark_config import BenchmarkConfig, build_methods
from ..evaluation.report import free_folder_beside


class BenchmarkRun:
    """One run at a time, and what the last one left: its settings, its methods and its summary so far."""

    def __init__(self, methods_built: Callable[[list], None], progressed: Callable[[object], None],
                 failed: Callable[[Exception], None], finished: Callable[[], None]) -> None:
        """Called on the GUI thread: ``methods_built`` with the run's methods, ``progressed`` with each
        ``BenchmarkEvent`` (after every image), ``failed`` with an error, and ``finished`` at the end
        of a run, whatever happened."""
        self.methods_built, self.progressed, self.failed, self.finished = methods_built, progressed, failed, finished
        self.worker = None  # the napari worker while a run goes on
        self.config: BenchmarkConfig | None = None
        self.methods: list = []  # ``evaluation.runner`` methods, once the run has built them
        self.summary: dict = {}
        self._cancel = threading.Event()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, config: BenchmarkConfig, existing: str, total: int) -> None:
        """Run the benchmark of ``config`` on its ``total`` images (``existing``: what to do with a
        report already in its folder, as ``iter_benchmark`` takes it)."""
        from napari.qt.threading import thread_worker

        self.config, self._cancel = config, threading.Event()
        cancel = self._cancel

        def run():
            methods = build_methods(config)
            yield ("methods", methods)
            for event in iter_benchmark(config, methods, cancel, existing):
                yield ("event", event)

        worker = thread_worker(run, progress={"total": total + 1, "desc": "benchmark"})()
        worker.yielded.connect(self._on_yield)
        worker.errored.connect(self.failed)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop after the current image (the report is then partial)."""
        self._cancel.set()

    def _on_yield(self, item) -> None:
        kind, payload = item
        if kind == "methods":
            self.methods = payload
            self.methods_built(payload)
        else:
            self.summary = payload.summary
            self.progressed(payload)

    def _on_finished(self) -> None:
        self.worker = None
        self.finished()


def ask_existing_report(parent: QWidget, folder: Path) -> str:
    """The user's choice for a report folder that holds a report: "resume", "new" or "cancel"."""
    box = QMessageBox(parent)
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


def copy_report(report_folder: str | Path, destination: str | Path) -> Path:
    """Copy ``report_folder`` into ``destination`` (refuses to overwrite); returns the copy."""
    source = Path(report_folder)
    target = Path(destination) / source.name
    if target.exists():
        raise InputError(f"{target} exists already; choose another folder.")
    shutil.copytree(source, target)
    return target

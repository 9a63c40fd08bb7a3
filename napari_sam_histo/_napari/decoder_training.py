"""The project's *Train a decoder on my accepted objects*: a background job, its progress, cancel.

It runs ``training.project_training.train_from_project`` on a thread of its own at the lowest CPU
priority (``thread_priority.lower_priority``), so a click on the slide gets the cores first; the
widget only shows what the job reports and, when it is done, hands the decoder file and its
verdict (better than zero-shot SAM on the held-out slides or not) to ``on_trained``, which puts
it in the decoder picker. A decoder that is not better is offered but never chosen for the user.

A job stopped before it ends (Cancel, the dock or napari closed, a crash) leaves its state in the
project (``project_training.training_state_file``); ``show_unfinished`` names it when the project
is opened again, and training the same name goes on from there.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

DECODERS = "decoders"  # the project folder's subfolder the trained decoders are written to


def decoder_file(project_folder: Path, name: str) -> Path:
    """Where the decoder ``name`` of a project is written (a name made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.") or "my-tissue"
    return Path(project_folder) / DECODERS / f"{safe}.pt"


class DecoderTraining(QWidget):
    """``context()`` gives (annotator or None, project folder or None); ``on_trained(path, result)``
    is called on the GUI thread when a decoder was written."""

    def __init__(self, threads, context, on_trained) -> None:
        super().__init__()
        self.threads = threads
        self._context = context
        self._on_trained = on_trained
        self.name_edit = QLineEdit("my-tissue")
        self.name_edit.setToolTip("the new decoder's name, as the decoder picker will list it")
        self.train_button = QPushButton("Train a decoder on my accepted objects")
        self.train_button.setToolTip("trains on the project's objects, holds out the slides annotated last and "
                                     "compares the new decoder with zero-shot SAM there (minutes, in the background)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.state = QLabel("")
        self.state.setWordWrap(True)
        name_row = QHBoxLayout()
        name_row.addWidget(QLabel("New decoder's name"))
        name_row.addWidget(self.name_edit, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(name_row)
        layout.addLayout(buttons)
        layout.addWidget(self.state)
        self.recipe = None  # a training.recipes.DecoderRecipe; None: the project training's default
        self._cancel = threading.Event()
        self._job: threading.Thread | None = None
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self._job is not None and self._job.is_alive()

    def start(self) -> None:
        annotator, folder = self._context()
        if self.running:
            return
        if annotator is None or folder is None:
            self.state.setText("Press Start on a slide first: the decoder is trained for the model in use.")
            return
        out = decoder_file(folder, self.name_edit.text())
        self._cancel.clear()
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.state.setText(f"Training {out.stem} on the objects in {folder} …")
        model = annotator.predictor.model
        # a daemon thread of its own, not GuiThreads.run's pool: quitting napari never waits for a
        # training of minutes (cancel stops it at its next step anyway)
        self._job = threading.Thread(target=self._run, args=(model, folder, out, self.name_edit.text().strip()),
                                     name="napari-sam-histo-decoder-training", daemon=True)
        self._job.start()

    def show_unfinished(self, folder: Path | None) -> None:
        """Name the project's most recent unfinished training, if any, and put its name in the
        name field, so that Train goes on with it."""
        if folder is None or self.running:
            return
        from ..training.project_training import STATE_SUFFIX

        try:
            states = sorted((Path(folder) / DECODERS).glob("*" + STATE_SUFFIX), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        if not states:
            return
        name = states[-1].name[: -len(STATE_SUFFIX)]
        self.name_edit.setText(name)
        self.state.setText(f"The training of '{name}' stopped before it ended: Train goes on from where it "
                           "stopped.")

    def cancel(self) -> None:
        self._cancel.set()
        self.state.setText("Cancelling …")

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the job (tests; closing)."""
        if self._job is not None:
            self._job.join(timeout)

    def close_job(self) -> None:
        """The dock closes: the job stops at its next step (nothing half-written is left; its state
        stays in the project for the next Train of the same name)."""
        self._cancel.set()

    def _run(self, model, folder: Path, out: Path, name: str) -> None:
        from ..engine.embedding_cache import EmbeddingCache
        from ..engine.predictor import Predictor
        from ..training.project_training import train_from_project
        from ..training.thread_priority import lower_priority

        lower_priority()
        try:
            predictor = Predictor(model, "sam", cache=EmbeddingCache(max_bytes=1 << 27))
            out.parent.mkdir(parents=True, exist_ok=True)
            result = train_from_project(folder, out, predictor, self.recipe, name=name or None,
                                        log=lambda line: self.threads.emit(self._progress, line),
                                        cancel=self._cancel.is_set)
        except Exception as err:  # noqa: BLE001 - shown in the panel, never raised into Qt
            self.threads.emit(self._failed, err)
            return
        self.threads.emit(self._done, result)

    def _progress(self, line: str) -> None:
        if not self._cancel.is_set():
            self.state.setText(line)

    def _failed(self, err: Exception) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.state.setText(f"No decoder was trained: {err}")

    def _done(self, result) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        held = result.held_out
        self.state.setText(f"{result.path.name}: {result.verdict}. NoC@85 on {held['objects']} held-out objects "
                           f"({', '.join(held['slides'])}): zero-shot SAM {held['sam_noc']:.2f}, this decoder "
                           f"{held['decoder_noc']:.2f}.")
        self._on_trained(result.path, result)

"""The Annotator dock's project: every accepted object kept as a training example for a decoder of
the lab's own tissue (``training.project_store``), in a project folder (by default the slide's).

Thin on purpose: the store is opened and written on a writer thread of the panel's own, one job
at a time in the order they came (an object's writing before its removal when its Accept is
undone), so an Accept never waits for the disk; the panel only shows what the writer reports.
Off until the user switches it on: a project keeps about 2 MiB of embedding per tile on disk.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from .decoder_training import DecoderTraining

OFF_TEXT = "Off: accepted objects are kept in the annotations only."


class ProjectPanel(QGroupBox):
    """``attach(annotator, slide_path)`` at Start; ``forget(ids)`` when objects are deleted or an
    Accept is undone; ``close()`` when the dock closes (waits for the writes under way).
    ``on_trained(path, result)``: a decoder was trained on the project (``DecoderTraining``)."""

    def __init__(self, threads, on_trained=lambda path, result: None) -> None:
        super().__init__("Project: train a decoder on my tissue")
        self.threads = threads
        self.check = QCheckBox("Keep my accepted objects as training examples")
        self.check.setToolTip("each accepted object's tiles, mask, clicks and class are kept in the project "
                              "folder (about 2 MiB a tile), for training a decoder of this tissue")
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("the project folder (default: the slide's folder); its objects are kept "
                                      "in .sam-histo-project inside it")
        self.state = QLabel(OFF_TEXT)
        self.state.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.check, 1)
        row.addWidget(self.folder_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.state)
        self.training = DecoderTraining(threads, lambda: (self._annotator, self.folder), on_trained)
        layout.addWidget(self.training)
        self.chosen_folder: Path | None = None  # None: the slide's folder
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-sam-histo-project")
        self._annotator = None
        self._slide_path: Path | None = None
        self._store = None
        self._recorder = None  # training.project_objects.ProjectRecorder, while objects are kept
        self.check.toggled.connect(self._switched)
        self.folder_button.clicked.connect(self._choose_folder)

    # -- what the dock calls --------------------------------------------------------------------
    @property
    def folder(self) -> Path | None:
        if self.chosen_folder is not None:
            return self.chosen_folder
        return self._slide_path.parent if self._slide_path is not None else None

    def attach(self, annotator, slide_path) -> None:
        """A new annotator (Start): its accepted objects go to the project while the switch is on."""
        self._annotator = annotator
        self._slide_path = Path(slide_path) if slide_path else None
        self.training.show_unfinished(self.folder)
        self._open()

    def detach(self) -> None:
        """The annotator is closing: its objects are no longer kept."""
        self._stop_keeping()
        self._annotator = None

    def forget(self, object_ids) -> None:
        """The project forgets these objects of the slide (after any writing of them under way)."""
        recorder = self._recorder
        if recorder is not None:
            for object_id in object_ids:
                recorder.forget(object_id)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the writes queued so far (tests; closing)."""
        self._writer.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self.training.close_job()
        self.detach()
        self._writer.shutdown(wait=True)

    # -- inside -----------------------------------------------------------------------------------
    def _switched(self, on: bool) -> None:
        if on:
            self._open()
        else:
            self._stop_keeping()
            self.state.setText(OFF_TEXT)

    def _stop_keeping(self) -> None:
        if self._annotator is not None:
            self._annotator.recorder = None
        self._store, self._recorder = None, None

    def _choose_folder(self) -> None:
        start = str(self.folder) if self.folder is not None else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Project folder", start)
        if folder:
            self.chosen_folder = Path(folder)
            self._stop_keeping()
            self.training.show_unfinished(self.folder)
            self._open()

    def _open(self) -> None:
        """Open the store on the writer (creating it writes its manifest) and hand the annotator a
        recorder that writes there."""
        annotator, folder, slide_path = self._annotator, self.folder, self._slide_path
        if not self.check.isChecked():
            return
        if annotator is None or folder is None:
            self.state.setText("On: objects are kept once a slide is annotated (press Start).")
            return
        self.state.setText(f"Opening the project in {folder} …")

        def open_store():
            from ..training.project_objects import ProjectRecorder, SlideRef
            from ..training.project_store import ProjectStore

            store = ProjectStore(folder)
            store.check_writable()
            recorder = ProjectRecorder(store, SlideRef.of(annotator.source, slide_path), annotator.predictor,
                                       submit=self._submit)
            return store, recorder

        def failed(err) -> None:
            self.check.setChecked(False)
            self.state.setText(f"Not kept: {err}")

        def opened(result) -> None:
            if annotator is not self._annotator or not self.check.isChecked():
                return  # another slide was started, or the switch turned off, meanwhile
            self._store, self._recorder = result
            annotator.recorder = self._recorder
            self._show(self._store)

        self.threads.relay(self._writer.submit(open_store), opened, failed)

    def _submit(self, job):
        """The recorder's writes: one at a time on the writer, in order; the panel shows the result."""
        store = self._store
        future = self._writer.submit(job)
        self.threads.relay(future, lambda result: self._written(store),
                           lambda err: self.state.setText(f"An object could not be kept in the project: {err}"))
        return future

    def _written(self, store) -> None:
        if self._recorder is not None:
            self._show(store)

    def _show(self, store) -> None:
        slides = len({obj.slide.identity for obj in store.objects()})
        n = len(store)
        self.state.setText(f"On: {n} object{'s' * (n != 1)} on {slides} slide{'s' * (slides != 1)} kept in "
                           f"{store.root} for training.")

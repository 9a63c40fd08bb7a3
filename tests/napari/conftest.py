"""Fixtures of the Annotator dock's GUI tests: the sample slide in a folder of the test's own, and the
dock started on it (real MobileSAM on the CPU, working level 0). Places on the slide, clicks and keys
are in tests/annotator_gui.py."""

import shutil
from pathlib import Path

import pytest

from ..conftest import SAMPLE_SLIDE


@pytest.fixture
def slide(tmp_path):
    """A copy of the CC0 slide in a folder of the test's own (the autosave sidecar goes beside it)."""
    return Path(shutil.copy(SAMPLE_SLIDE, tmp_path / SAMPLE_SLIDE.name))


class Answers:
    """The dock's questions (``AnnotatorDock``'s ``confirm``), each one kept in ``asked`` and answered
    ``answer``."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, question: str) -> bool:
        self.asked.append(question)
        return self.answer


@pytest.fixture
def answers():
    """What the ``dock`` answers when it asks (Yes, unless a test sets ``answer``)."""
    return Answers()


@pytest.fixture
def dock(make_napari_viewer, qtbot, mobile_sam, slide, answers):
    """The Annotator dock on ``slide`` in a new napari, started (vit_t on the CPU, no prefetching);
    its questions are answered by ``answers``."""
    from napari_sam_histo._napari.annotator.dock import AnnotatorDock  # Qt: only where a test asks for the dock

    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-sam-histo")
    widget = AnnotatorDock(viewer, confirm=answers)
    viewer.window.add_dock_widget(widget)
    assert widget.layer_combo.currentText() == "cmu-1-small-region"
    widget.model_combo.setCurrentText("vit_t")
    widget.device_combo.setCurrentText("cpu")
    widget.prefetch_check.setChecked(False)  # on in the prefetch test only: it costs encoder time
    # pinned to level 0: these tests know its tiles; "auto" (the default) has tests of its own
    # (napari/test_gui_slide_scale.py)
    assert widget.level_combo.currentData() == "auto"
    widget.level_combo.setCurrentIndex(widget.level_combo.findData(0))
    widget.start()
    qtbot.waitUntil(lambda: widget.annotator is not None, timeout=120_000)
    yield widget
    widget.close_session(wait=True)

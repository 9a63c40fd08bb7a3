"""Learn from this slide keeps what it learned across Start and takes objects from earlier work
(Xvfb, real MobileSAM, real clicks and keys)."""

import pytest
from app_model.types import KeyCode
from qtpy.QtCore import Qt

pytest.importorskip("napari")


from ..annotator_gui import FRAGMENT, click, press, reopen, wait_idle  # noqa: E402


def _restart(dock, qtbot):
    old = dock.annotator
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.annotator is not None and dock.annotator is not old, timeout=120_000)


def test_start_again_keeps_what_was_learned_for_the_same_slide_and_model(dock, qtbot):
    dock.adaptation_panel.check.setChecked(True)
    learnt = dock.annotator.adaptation
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
    _restart(dock, qtbot)  # the same slide, model and decoder
    assert dock.annotator.adaptation is learnt and learnt.reusable_for(dock.annotator.predictor,
                                                                       dock.source.identity)
    assert learnt.state().objects + learnt.state().queued >= 1 or learnt.state().examples >= 1
    dock.decoder_combo.setCurrentText("md")
    _restart(dock, qtbot)  # another decoder: it learns afresh
    assert dock.annotator.adaptation is not learnt


def test_objects_from_earlier_work_are_learned_from(make_napari_viewer, dock, qtbot, slide):
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
    qtbot.waitUntil(lambda: dock.last_autosave is not None and dock.last_autosave.done(), timeout=10_000)
    dock.close_session(wait=True)

    again, _ = reopen(make_napari_viewer, qtbot, slide,
                      before_start=lambda dock: dock.adaptation_panel.check.setChecked(True))
    try:
        qtbot.waitUntil(lambda: len(again.object_list.ids) == 1, timeout=120_000)  # resumed
        adaptation = again.annotator.adaptation
        qtbot.waitUntil(lambda: adaptation.state().resumed + adaptation.state().resumed_pending >= 1, timeout=30_000)
    finally:
        again.close_session(wait=True)

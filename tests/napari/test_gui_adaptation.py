"""The Annotator dock's "Learn from this slide" panel (Xvfb, real MobileSAM, real slide): switched on
with the mouse, an accepted object teaches the copy in the background (the panel says so), the
adapted decoder is saved through the dialog and loads back as a decoder, Reset forgets, and
switched off the chosen decoder decodes again."""

import time

import pytest
from app_model.types import KeyCode

pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QFileDialog  # noqa: E402

from napari_sam_histo._napari import adaptation_panel  # noqa: E402
from napari_sam_histo._napari.adaptation_panel import OFF_TEXT  # noqa: E402
from napari_sam_histo._napari.annotator.working_layers import CURRENT  # noqa: E402

from ..annotator_gui import FRAGMENT, click, press, wait_idle  # noqa: E402


def _toggle(qtbot, check) -> None:
    """A mouse click on the check box's own square."""
    from qtpy.QtCore import QPoint

    qtbot.mouseClick(check, Qt.MouseButton.LeftButton, pos=QPoint(8, check.height() // 2))


def test_the_panel_learns_from_accepted_objects_saves_resets_and_switches_off(dock, qtbot, tmp_path, monkeypatch):
    panel = dock.adaptation_panel
    adaptation = dock.annotator.adaptation
    assert panel.state_label.text() == OFF_TEXT and not adaptation.enabled  # off until the user wants it
    assert not panel.save_button.isEnabled()
    _toggle(qtbot, panel.check)
    assert panel.check.isChecked() and adaptation.enabled
    qtbot.waitUntil(lambda: "none yet" in panel.state_label.text(), timeout=10_000)
    adaptation.adapter.steps_per_object = 2  # mechanics: two steps per object keep the test short

    n = len(dock.object_list.ids)
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == n + 1, timeout=60_000)
    qtbot.waitUntil(lambda: "2 of 2 training steps done." in panel.state_label.text(), timeout=180_000)
    assert "Learning from 1 accepted object:" in panel.state_label.text()
    assert "In use: the chosen decoder" in panel.state_label.text()  # nothing kept aside yet to judge it
    assert adaptation.state().examples == 1 and adaptation.worker.error is None
    # the border refiner learnt from the object (its tile's pixels read in the background) and says
    # it waits to be judged; the first object judges nothing
    qtbot.waitUntil(lambda: adaptation.state().refiner_pending == 0, timeout=120_000)
    assert adaptation.adapter.refinement.refiner is not None and adaptation.refiner() is None
    qtbot.waitUntil(lambda: "Border refiner: learning." in panel.state_label.text(), timeout=10_000)
    # the refiner's own switch: off, nothing is refined and the line says it still learns; back on
    assert panel.refiner_check.isEnabled() and panel.refiner_check.isChecked()
    _toggle(qtbot, panel.refiner_check)
    assert not adaptation.refine_borders
    qtbot.waitUntil(lambda: "Border refiner: switched off" in panel.state_label.text(), timeout=30_000)
    _toggle(qtbot, panel.refiner_check)
    assert adaptation.refine_borders
    qtbot.waitUntil(lambda: "Border refiner: learning." in panel.state_label.text(), timeout=10_000)

    target = tmp_path / "my-study-decoder.pt"
    seen = {}

    def dialog(parent, caption, suggested, filter_):
        seen["suggested"] = suggested
        return str(target), filter_

    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog)
    qtbot.waitUntil(panel.save_button.isEnabled, timeout=10_000)
    qtbot.mouseClick(panel.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.last_saved == target, timeout=60_000)
    assert seen["suggested"].endswith("-adapted-decoder.pt") and str(target) in panel.note_label.text()
    from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint
    from napari_sam_histo.models.decoders import build_decoder_from_checkpoint

    metadata, _ = read_decoder_checkpoint(target)
    assert metadata["training_scenario"] == "adapted" and metadata["config"]["adapted_on"] == dock.source.name
    assert build_decoder_from_checkpoint(dock.annotator.predictor.model, target).kind == "residual"

    qtbot.mouseClick(panel.reset_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "none yet" in panel.state_label.text(), timeout=60_000)
    assert "Reset" in panel.note_label.text()
    assert adaptation.state().examples == 0 and adaptation.predictor() is dock.annotator.predictor

    _toggle(qtbot, panel.check)
    assert not panel.check.isChecked() and not adaptation.enabled
    assert not panel.refiner_check.isEnabled()  # it goes with the switch
    qtbot.waitUntil(lambda: panel.state_label.text() == OFF_TEXT, timeout=10_000)
    assert len(dock.object_list.ids) == n + 1  # the annotations are untouched by all of it


def test_the_panel_says_what_it_does_within_a_second_of_an_accept(dock, qtbot):
    """Each Accept shows in the panel within a second, also while the background thread is busy
    with the object before (the border refiner re-clicking it), and the line says what it does."""
    panel = dock.adaptation_panel
    _toggle(qtbot, panel.check)
    label = panel.state_label.text
    for n in (1, 2):
        click(dock.viewer, *FRAGMENT)
        wait_idle(dock, qtbot)
        press(dock.viewer, KeyCode.Enter)
        wait_idle(dock, qtbot)  # accepted: the annotator has handed the object over
        accepted = time.perf_counter()
        wanted = f"Learning from {n} accepted object{'s' if n > 1 else ''}:"
        qtbot.waitUntil(lambda wanted=wanted: wanted in label(), timeout=5_000)
        assert time.perf_counter() - accepted < 1.0, label()
        if n == 1:  # the next Accept comes while the refiner re-clicks this object (seconds)
            qtbot.waitUntil(lambda: "the border refiner is re-clicking" in label(), timeout=60_000)
    assert "the border refiner is re-clicking" in label() or "waiting for a quiet moment" in label()


def test_the_panels_gate_sizes_are_the_adapters():
    from napari_sam_histo.adaptation import settings, slide_refinement

    assert adaptation_panel.MIN_HELD_OUT == settings.MIN_HELD_OUT
    assert adaptation_panel.MIN_JUDGED == slide_refinement.MIN_JUDGED


def test_an_object_the_refiner_shapes_says_so_and_its_switch_turns_it_off(dock, qtbot, monkeypatch):
    """A refiner that passed its gate (here one that moves SAM's border outwards by a fixed margin)
    refines the next object: the status line says so and the accepted object's properties too; with
    the refiner's switch off the next object shows SAM's own mask."""
    import torch

    from napari_sam_histo.models.slide_refiner import FEATURES, SlideRefiner

    panel = dock.adaptation_panel
    adaptation = dock.annotator.adaptation
    _toggle(qtbot, panel.check)
    weight = torch.zeros(FEATURES)
    weight[0] = 10.0  # refined logit = SAM's logit (while |logit| < 20) + 3: a wider mask
    refiner = SlideRefiner(weight, 3.0)
    monkeypatch.setattr(adaptation.adapter, "refinement", type("Fitted", (), {
        "active": lambda self: refiner, "pending": 0, "scores": lambda self: (4.0, 2.0, 3)})())
    assert adaptation.refiner() is refiner  # offered to the next object
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    assert dock.annotator.state().refined
    qtbot.waitUntil(lambda: "border refined" in dock.status.text(), timeout=10_000)
    refined_area = int(dock.viewer.layers[CURRENT].data.sum())
    press(dock.viewer, KeyCode.Escape)
    wait_idle(dock, qtbot)

    _toggle(qtbot, panel.refiner_check)
    assert adaptation.refiner() is None
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    assert not dock.annotator.state().refined
    qtbot.waitUntil(lambda: "click" in dock.status.text(), timeout=10_000)
    assert "border refined" not in dock.status.text()
    assert 0 < int(dock.viewer.layers[CURRENT].data.sum()) < refined_area  # the refined mask was the wider one

"""The dock keeps accepted objects in the project for training (Xvfb, real MobileSAM, real clicks
and keys): switched on with the mouse, an accepted object is on disk with its tile, mask and class;
deleted on the list, it leaves the project. Trained on with the panel's button, the project gives a
decoder file that the picker lists with its held-out verdict."""

from pathlib import Path

import pytest
from app_model.types import KeyCode
from qtpy.QtCore import Qt

pytest.importorskip("napari")

import napari_sam_histo  # noqa: E402
from napari_sam_histo._napari.project_panel import OFF_TEXT  # noqa: E402
from napari_sam_histo.training.decoder_finetune import FinetuneRecipe  # noqa: E402
from napari_sam_histo.training.project_store import ProjectStore  # noqa: E402
from napari_sam_histo.training.tissue_training import TissueRecipe  # noqa: E402

from ..annotator_gui import FRAGMENT, STRIP, click, press, wait_idle  # noqa: E402


def test_accepted_objects_are_kept_in_the_project_and_deleted_ones_leave_it(dock, qtbot, slide):
    panel = dock.project_panel
    assert panel.state.text() == OFF_TEXT and dock.annotator.recorder is None
    panel.check.click()  # as a mouse click on the box does
    qtbot.waitUntil(lambda: dock.annotator.recorder is not None, timeout=30_000)
    assert "0 objects on 0 slides" in panel.state.text() and str(slide.parent) in panel.state.text()
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
    panel.flush(timeout=60)
    qtbot.waitUntil(lambda: "1 object on 1 slide" in panel.state.text(), timeout=10_000)
    on_disk = ProjectStore(slide.parent)  # what another session would find
    [kept] = on_disk.objects()
    assert (kept.object_id, kept.slide.name, kept.class_name) == (dock.object_list.ids[0], slide.name,
                                                                   dock.objects()[0].class_name)
    examples = on_disk.examples(predictor=dock.annotator.predictor)
    assert examples and all(example.target.any() for example in examples)
    dock.object_list.table.selectRow(0)
    qtbot.mouseClick(dock.object_list.delete_button, Qt.MouseButton.LeftButton)
    assert "Deleted 1 object" in dock.status.text()
    panel.flush(timeout=60)
    assert len(ProjectStore(slide.parent)) == 0
    qtbot.waitUntil(lambda: "0 objects on 0 slides" in panel.state.text(), timeout=10_000)
    panel.check.click()  # off: the next object is not kept
    assert panel.state.text() == OFF_TEXT and dock.annotator.recorder is None


def _two_objects_kept(dock, qtbot):
    """Switch the project on with the mouse and accept two objects with clicks and Enter; the panel."""
    panel = dock.project_panel
    panel.check.click()
    qtbot.waitUntil(lambda: dock.annotator.recorder is not None, timeout=30_000)
    for n, where in enumerate((FRAGMENT, STRIP), start=1):
        click(dock.viewer, *where)
        wait_idle(dock, qtbot)
        press(dock.viewer, KeyCode.Enter)
        qtbot.waitUntil(lambda n=n: len(dock.object_list.ids) == n, timeout=60_000)
    panel.flush(timeout=60)
    return panel


def test_a_decoder_trained_on_the_project_joins_the_picker_with_its_held_out_verdict(dock, qtbot, slide):
    panel = _two_objects_kept(dock, qtbot)
    training = panel.training
    training.recipe = FinetuneRecipe(epochs=1, max_clicks=2)  # the default recipe, shortened: mechanics
    training.name_edit.clear()
    qtbot.keyClicks(training.name_edit, "my stroma")
    qtbot.mouseClick(training.train_button, Qt.MouseButton.LeftButton)
    assert not training.train_button.isEnabled() and training.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: training.train_button.isEnabled(), timeout=300_000)
    written = slide.parent / "decoders" / "my-stroma.pt"
    assert written.exists(), training.state.text()
    assert "held-out objects" in training.state.text() and "zero-shot SAM" in training.state.text()
    picker = dock.settings.decoder_combo
    assert picker.findText(str(written)) >= 0 and picker.currentText() == "sam"  # offered, never chosen for the user
    picker.setCurrentText(str(written))
    label = dock.settings.decoder_tissue.text()
    assert "this project's" in label and ("better than zero-shot SAM" in label)
    shipped = Path(napari_sam_histo.__file__).parent / "resources" / "decoder-md-vit_t.pt"
    picker.lineEdit().clear()
    qtbot.keyClicks(picker.lineEdit(), str(shipped))  # a decoder file typed in: its metadata is read
    qtbot.waitUntil(lambda: "colorectal" in dock.settings.decoder_tissue.text(), timeout=30_000)



def test_a_cancelled_training_is_offered_again_and_goes_on_where_it_stopped(dock, qtbot, slide):
    from napari_sam_histo.training.project_training import training_state_file

    panel = _two_objects_kept(dock, qtbot)
    training = panel.training
    training.recipe = TissueRecipe(steps=300, batch_size=2, max_clicks=2)
    training.name_edit.clear()
    qtbot.keyClicks(training.name_edit, "my stroma")
    written = slide.parent / "decoders" / "my-stroma.pt"
    state = training_state_file(written)
    qtbot.mouseClick(training.train_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(state.exists, timeout=300_000)  # the first 50 steps are kept
    qtbot.mouseClick(training.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: training.train_button.isEnabled(), timeout=60_000)
    assert "goes on from where it stopped" in training.state.text() and not written.exists() and state.exists()
    training.name_edit.setText("something else")
    panel.attach(dock.annotator, slide)  # the dock opened again on the project (what Start does)
    assert training.name_edit.text() == "my-stroma" and "stopped before it ended" in training.state.text()
    lines = []
    shown = training._progress
    training._progress = lambda line: (lines.append(line), shown(line))
    training.recipe = TissueRecipe(steps=300, batch_size=2, max_clicks=2)
    qtbot.mouseClick(training.train_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: training.train_button.isEnabled(), timeout=600_000)
    assert written.exists() and not state.exists(), training.state.text()
    assert any(line.startswith("tissue head: resuming at step") for line in lines)

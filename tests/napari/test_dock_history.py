"""The Annotator dock's undo history (``_napari.annotator.history``): plain steps, no Qt."""

from napari_sam_histo._napari.annotator.history import AcceptStep, ClearStep, ClickStep, DeleteStep, History


def test_undo_and_redo_walk_the_steps_back_and_forth():
    history = History()
    steps = [ClickStep(), AcceptStep("obj", "before"), ClearStep("snapshot"), DeleteStep(["a", "b"])]
    for step in steps:
        history.record(step)
    assert history.can_undo and not history.can_redo
    assert [history.take_undo() for _ in steps] == steps[::-1]
    assert history.take_undo() is None and not history.can_undo
    assert history.take_redo() == steps[0] and history.take_redo() == steps[1]
    assert history.can_redo and history.can_undo


def test_a_new_step_drops_what_could_be_redone():
    history = History()
    history.record(ClickStep())
    history.record(ClickStep())
    history.take_undo()
    assert history.can_redo
    history.record(DeleteStep(["x"]))
    assert not history.can_redo and history.take_redo() is None
    assert history.take_undo() == DeleteStep(["x"]) and history.take_undo() == ClickStep()
    history.reset()
    assert not history.can_undo and not history.can_redo


def test_importing_the_history_imports_no_qt():
    import subprocess
    import sys

    code = ("import sys, napari_sam_histo._napari.annotator.history; "
            "print(any(m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

"""The real order of a napari session: the viewer (OpenGL) first, our plugin and the model after.
Run in a fresh process, because this test process has long imported torch and its friends."""

import os
import subprocess
import sys

import pytest

CODE = """
import napari
viewer = napari.Viewer(show=True)
import napari_sam_histo._napari  # what napari imports before our widgets run
from napari_sam_histo.models.registry import load_model
print("loaded", load_model("vit_t", "cpu").arch)
viewer.close()
"""


def _run_in_a_fresh_napari(code: str) -> subprocess.CompletedProcess:
    """``code`` in a new Python process (this one has long imported torch and napari); it must exit 0."""
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs the X server that pytest-xvfb provides")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return result


def test_model_loads_after_napari_opened_its_window(mobile_sam):
    result = _run_in_a_fresh_napari(CODE)
    assert "loaded vit_t" in result.stdout


DOCK_CODE = """
import sys
import napari
viewer = napari.Viewer(show=True)
from napari_sam_histo._napari.annotator.dock import AnnotatorDock
from napari_sam_histo._napari.benchmark_dock import BenchmarkDock
annotator, benchmark = AnnotatorDock(viewer), BenchmarkDock(viewer)
print("decoders", [annotator.decoder_combo.itemText(i) for i in range(annotator.decoder_combo.count())])
print("torch imported on the GUI thread:", "torch" in sys.modules)
viewer.close()
"""


def test_opening_the_docks_imports_no_torch_on_the_gui_thread():
    # importing torch costs seconds; the docks open while napari waits, so they must not (the
    # decoder list is read from models.shipped, torch is warmed up later on a worker)
    result = _run_in_a_fresh_napari(DOCK_CODE)
    assert "decoders ['sam'" in result.stdout
    assert "torch imported on the GUI thread: False" in result.stdout


QUIT_CODE = """
import napari
from qtpy.QtCore import QTimer
from napari_sam_histo._napari.annotator.dock import AnnotatorDock
from napari_sam_histo.models import fast_encoder
viewer = napari.Viewer(show=True)
viewer.open(SLIDE, plugin="napari-sam-histo")
dock = AnnotatorDock(viewer)
viewer.window.add_dock_widget(dock)
dock.model_combo.setCurrentText("vit_t")
dock.device_combo.setCurrentText("cpu")
dock.start()

def quit_once_started():
    if dock.annotator is None:
        QTimer.singleShot(100, quit_once_started)
        return
    print("encoder build running at quit:", any(t.is_alive() for t in fast_encoder._builds), flush=True)
    viewer.close()

QTimer.singleShot(100, quit_once_started)
napari.run()
"""


def test_quitting_napari_right_after_start_exits_cleanly(mobile_sam):
    # the optimized encoder builds for 6-14 s in a daemon thread after Start; quitting during the
    # build must not abort the process at exit ("terminate called without an active exception")
    from pathlib import Path

    slide = Path(__file__).resolve().parents[2] / "resources" / "cmu-1-small-region.svs"
    result = _run_in_a_fresh_napari(f"SLIDE = {str(slide)!r}\n" + QUIT_CODE)
    assert "encoder build running at quit:" in result.stdout
    assert "terminate called" not in result.stderr

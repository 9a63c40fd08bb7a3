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


@pytest.mark.gui
def test_model_loads_after_napari_opened_its_window(mobile_sam):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs the X server that pytest-xvfb provides")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "loaded vit_t" in result.stdout

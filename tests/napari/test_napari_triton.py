"""In napari our model code does not load Triton (its LLVM crashes napari's OpenGL on Mesa), and
Triton stays importable for everyone else in the process. Fresh processes: this one has long
imported torch."""

import os
import subprocess
import sys

import pytest

CODE = """
import importlib.util, sys
if importlib.util.find_spec("triton") is None:
    print("no triton"); sys.exit(0)
import napari_sam_histo._napari  # what napari imports before our widgets run
from napari_sam_histo.models.architectures import build_sam
build_sam("vit_t")  # mobile_sam -> timm -> torch._dynamo, which imports Triton when it can
print("dynamo", "torch._dynamo" in sys.modules)
print("ours loaded triton", sys.modules.get("triton") is not None)
import triton  # another plugin's (or the console's) own import
print("theirs", triton.__name__)
"""


def run(allow: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_SAM_HISTO_ALLOW_TRITON"}
    if allow:
        env["NAPARI_SAM_HISTO_ALLOW_TRITON"] = "1"
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    if "no triton" in result.stdout:
        pytest.skip("Triton is not installed here")
    return result.stdout


@pytest.mark.slow
def test_our_imports_leave_triton_out_and_others_still_get_it():
    out = run(allow=False)
    assert "dynamo True" in out
    assert "ours loaded triton False" in out
    assert "theirs triton" in out


@pytest.mark.slow
def test_the_environment_variable_lets_ours_load_triton():
    out = run(allow=True)
    assert "ours loaded triton True" in out

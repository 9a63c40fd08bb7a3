"""npe2 hooks (declared in napari.yaml): sample data and the Benchmark dock.

napari imports this package before any of our widgets or samples run. Importing it keeps the
imports that our own code makes from loading Triton in the napari process: ``mobile_sam`` imports
``timm``, which imports ``torchvision.ops`` and so ``torch._dynamo``, which imports Triton if it is
installed (it is, with CUDA builds of torch). Triton's bundled LLVM, loaded after napari's OpenGL
context exists on a Mesa driver (software rendering, Xvfb, many Linux GPUs), crashes the process
with a segmentation fault. We never compile models, so Triton is not needed.

Only imports made while our code is running are refused (``import triton`` raises
``ModuleNotFoundError`` there, which torch takes as "not installed"): another plugin, or the
console, that imports Triton itself gets it. Set NAPARI_SAM_HISTO_ALLOW_TRITON=1 to let ours load it too.
"""

import os
import sys
from importlib.abc import MetaPathFinder

ALLOW_TRITON_ENV = "NAPARI_SAM_HISTO_ALLOW_TRITON"


def imported_by_us(frame) -> bool:
    """Whether ``frame`` or a caller of it runs code of this package."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] == "napari_sam_histo":
            return True
        frame = frame.f_back
    return False


class TritonRefusedToUs(MetaPathFinder):
    """Refuses ``triton`` to imports that this package's code makes, directly or through others."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "triton" or os.environ.get(ALLOW_TRITON_ENV) == "1":
            return None
        if imported_by_us(sys._getframe(1)):
            raise ModuleNotFoundError(f"No module named {name!r}: napari-sam-histo does not load Triton in "
                                      f"napari (set {ALLOW_TRITON_ENV}=1 to allow it)", name=name)
        return None


if not any(isinstance(finder, TritonRefusedToUs) for finder in sys.meta_path):
    sys.meta_path.insert(0, TritonRefusedToUs())

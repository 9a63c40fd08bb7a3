"""npe2 hooks (declared in napari.yaml): sample data and the Benchmark dock.

napari imports this package before any of our widgets or samples run. Importing it keeps PyTorch
from loading Triton in the napari process: ``mobile_sam`` imports ``timm``, which imports
``torchvision.ops`` and so ``torch._dynamo``, which imports Triton if it is installed (it is, with
CUDA builds of torch). Triton's bundled LLVM, loaded after napari's OpenGL context exists on a Mesa
driver (software rendering, Xvfb, many Linux GPUs), crashes the process with a segmentation fault.
We never compile models, so Triton is not needed; set NAPARI_SAM_HISTO_ALLOW_TRITON=1 to keep it.
"""

import os
import sys

if os.environ.get("NAPARI_SAM_HISTO_ALLOW_TRITON") != "1" and "triton" not in sys.modules:
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch treats it as absent

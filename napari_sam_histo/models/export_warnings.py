"""While a module is exported (ONNX for the CPU runtime, TorchScript for the encoder copy), the
warnings PyTorch's exporters give about what the export does on purpose are silenced; nowhere else.

``silenced()`` swaps the process's warning filters for the duration of one export
(``warnings.catch_warnings`` is process-wide, not per thread), so exports take a lock: two
exports never restore each other's filters. Other code running meanwhile sees these few warnings
silenced for those seconds; its other warnings behave as set.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# (message regex, category, module regex) of the warnings an export gives by design: the
# TorchScript-based ONNX exporter's deprecation notice, PyTorch 2.14's notice that TorchScript is
# deprecated (should it go, a build fails and the module stays eager), the tracer's notes on Python
# values it freezes (the shapes are fixed, or declared dynamic, on purpose) and the exporter's notes
# on constant folding and shape inference
_SILENCED = (
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning, ""),
    ("", DeprecationWarning, r"torch\.onnx\b"),
    (r"(?s).*torch\.onnx.*deprecated", Warning, ""),
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning, ""),
    (r"Constant folding", UserWarning, ""),
    (r"The shape inference of", UserWarning, ""),
    (r"ONNX export mode is set to TrainingMode\.EVAL", UserWarning, ""),
    ("", torch.jit.TracerWarning, r"(mobile_sam|segment_anything|torch|napari_sam_histo)\b"),
)
_LOCK = threading.RLock()


@contextmanager
def silenced() -> Iterator[None]:
    """One export at a time, with its by-design warnings silenced."""
    with _LOCK, warnings.catch_warnings():
        for message, category, module in _SILENCED:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield

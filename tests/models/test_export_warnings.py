"""Importing the package leaves the process's warning filters as they were; the exporters'
by-design warnings are silenced only while an export runs."""

import subprocess
import sys
import warnings

import torch

from napari_sam_histo.models import export_warnings


def test_importing_the_package_changes_no_warning_filter():
    third_party = "import numpy, torch, mobile_sam, segment_anything\ntry:\n    import openvino\nexcept ImportError:\n    pass\n"
    code = (third_party + "import warnings\nbefore = list(warnings.filters)\n"
            "import napari_sam_histo.models.cpu_runtime, napari_sam_histo.models.fast_encoder\n"
            "import napari_sam_histo.models.runtime_decoder, napari_sam_histo.engine.predictor\n"
            "assert warnings.filters == before, [f for f in warnings.filters if f not in before]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _tracer_warning_from_mobile_sam() -> None:
    warnings.warn_explicit("Converting a tensor to a Python boolean", torch.jit.TracerWarning,
                           "transformer.py", 1, module="mobile_sam.modeling.transformer")


def test_by_design_warnings_are_silenced_only_during_an_export():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with export_warnings.silenced():
            _tracer_warning_from_mobile_sam()
            warnings.warn("You are using the legacy TorchScript-based ONNX export. dynamo=False", DeprecationWarning,
                          stacklevel=1)
            warnings.warn("a warning of our own", RuntimeWarning, stacklevel=1)
        _tracer_warning_from_mobile_sam()
    assert [type(w.message) for w in caught] == [RuntimeWarning, torch.jit.TracerWarning]

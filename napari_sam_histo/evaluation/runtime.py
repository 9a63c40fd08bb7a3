"""What a benchmark really ran on: precision of decoder and encoder, device, torch and our version.

A report records it (``summary.json``'s ``runtime``, the first line of ``table.txt``), so that a
number is never read without the precision and the machine that produced it; a resumed report
must have been made on the same runtime (``report.ReportWriter`` refuses otherwise).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Protocol

# torch is imported inside the functions that need it: ``describe`` is read by the report, which
# the Benchmark dock imports on napari's GUI thread (importing torch there froze napari seconds)

# Per method: what decides its masks and its seconds per click.
METHOD_KEYS = ("decoder_precision", "encoder_precision", "device_type", "device_name")


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 9R14", "Intel(R) Xeon(R) ..."), as precise as we can get."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device) -> str:
    """A human name for ``device`` (a ``torch.device``): the GPU's name, or the CPU's model."""
    import torch

    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except (AssertionError, RuntimeError):
            return "CUDA GPU"
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    return cpu_model()


class RunsOnDevice(Protocol):
    """What ``predictor_runtime`` reads of a ``Predictor``."""

    device: Any  # a torch.device, or its name
    decoder_precision: str  # "fp32", "bf16" or "int8" (bf16 with calibrated convolutions in int8)
    encoder_bf16: bool
    encoder_mode: str  # "eager" or "optimized" (models.fast_encoder)


def predictor_runtime(predictor: RunsOnDevice) -> dict:
    """What one ``Predictor`` runs: the precision it resolved ("auto" made concrete) and where."""
    import torch

    device = torch.device(predictor.device)
    entry = {
        "decoder_precision": predictor.decoder_precision,
        "encoder_precision": "bf16" if predictor.encoder_bf16 else "fp32",
        "encoder_mode": predictor.encoder_mode,  # "optimized": models.fast_encoder
        "device_type": device.type,
        "device_name": device_name(device),
    }
    if device.type == "cpu":
        entry["cpu_threads"] = torch.get_num_threads()
    return entry


def versions() -> dict:
    import torch

    from .. import __version__

    return {"torch": torch.__version__, "napari_sam_histo": __version__}


def benchmark_runtime(methods) -> dict:
    """``{"torch", "napari_sam_histo", "methods": {name: runtime}}`` plus every ``METHOD_KEYS``
    value the methods share ("mixed" where they differ). A method whose ``runtime`` is None (an
    oracle in the tests) is left out of ``methods``."""
    per_method = {m.name: dict(m.runtime) for m in methods if m.runtime}
    runtime = versions()
    for key in METHOD_KEYS:
        values = {entry.get(key) for entry in per_method.values()}
        if values:
            runtime[key] = values.pop() if len(values) == 1 else "mixed"
    runtime["methods"] = per_method
    return runtime


def describe(runtime: dict | None) -> list[str]:
    """The report's runtime line(s): one when all methods share it, else one per method."""
    if not runtime:
        return ["runtime: not recorded"]
    tail = f"torch {runtime.get('torch', '?')}, napari-sam-histo {runtime.get('napari_sam_histo', '?')}"
    spread = runtime.get("distributed")  # a run on a dask cluster (distributed_benchmark)
    if spread:
        count = spread.get("workers", "?")
        tail += f"; {count} dask worker{'' if count == 1 else 's'} ({spread.get('scheduler', '?')})"

    def ran(entry: dict) -> str:
        threads = f", {entry['cpu_threads']} threads" if entry.get("cpu_threads") else ""
        optimized = " optimized" if entry.get("encoder_mode") == "optimized" else ""
        return (f"decoder {entry.get('decoder_precision', '?')}, encoder {entry.get('encoder_precision', '?')}{optimized} "
                f"on {entry.get('device_type', '?')} ({entry.get('device_name', '?')}{threads})")

    methods = runtime.get("methods") or {}
    if not methods:
        return [f"runtime: {tail}"]
    shared = {frozenset(entry.items()) for entry in methods.values()}
    if len(shared) == 1:
        return [f"runtime: {ran(next(iter(methods.values())))}; {tail}"]
    return [f"runtime: {tail}; per method:"] + [f"  {name}: {ran(entry)}" for name, entry in methods.items()]

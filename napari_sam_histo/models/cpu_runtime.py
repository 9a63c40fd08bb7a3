"""A PyTorch module compiled for the CPU by OpenVINO: exported once, cached on disk, checked.

Why OpenVINO: measured side by side in one run on a 2-core Xeon with AVX512-BF16/AMX (MobileSAM,
one 1024x1024 tile, 2 threads, ``docs/cpu-runtime.md``), MobileSAM's image encoder took 0.91 s as a
raw PyTorch float32 forward, 0.67 s as the traced + frozen TorchScript copy, 0.56 s in ONNX Runtime
1.32 and 0.45 s in OpenVINO 2026.4 (f32), all within 3e-6 (relative) of PyTorch; the modified
decoder ran fastest in OpenVINO too, and SAM's own decoder about as fast in either runtime. One
runtime keeps one dependency and one cache format, so OpenVINO it is.

How: ``torch.onnx.export`` writes the module as ONNX (the same module the PyTorch path runs),
OpenVINO reads it and compiles it for this CPU in the spec's precision (``INFERENCE_PRECISION_HINT``:
float32 unless a decoder asks for bf16; on an AMX CPU OpenVINO would otherwise pick bf16 by itself;
"int8": the calibrated convolutions' quantizers put into the graph, ``int8_convolutions``, the rest
in bf16 where the CPU has it natively, else in f32: ``int8_rest_precision``),
the compiled network's outputs are compared with the module's own on the example inputs, and a
network further than its precision's ``MAX_RELATIVE_ERRORS`` (relative L2, per output) is refused
(``RuntimeRefused``). An accepted one is
saved as OpenVINO IR under ``<cache>/cpu-runtime/`` keyed by the sha256 of the module's weights,
its class, the input shapes, the precision and the versions of OpenVINO and PyTorch: a change in
any of them builds a new one; the next start reads it back in well under a second (its file is
checked against the sha256 it was saved with, so a damaged file is rebuilt, never run).

``NAPARI_SAM_HISTO_CPU_RUNTIME=0`` turns the runtime off (everything runs in PyTorch); without
the ``openvino`` and ``onnx`` packages installed it is off too (``available``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import export_warnings, int8_convolutions

RUNTIME = "openvino"
PRECISION = "f32"  # the default: the embeddings and masks stay PyTorch's within 1e-4
# the precisions a network may be compiled in, and how far (relative L2, per output) its outputs may
# lie from the module's float32 ones: f32 measured ~1e-6 to 3e-6 for MobileSAM's encoder and
# decoders; bf16 (decoders only, where the CPU has native bfloat16) ~1.1e-2 to 1.4e-2 on the decoders'
# logits, with the same clicks needed in the benchmark (docs/cpu-runtime.md); int8 (calibrated 3x3
# convolutions in int8, the rest in bf16 or f32: ``int8_convolutions``) ~1e-2 to 3e-2 on the modified
# decoder's logits at real clicks, 2.6e-2 on the check's random inputs
MAX_RELATIVE_ERRORS = {"f32": 1e-4, "bf16": 5e-2, "int8": 1e-1}
CPU_RUNTIME_ENV = "NAPARI_SAM_HISTO_CPU_RUNTIME"
CACHE_FOLDER = "cpu-runtime"
FORMAT = 5  # bumped when what is exported, or how, changes: older cached networks are then rebuilt

class RuntimeRefused(RuntimeError):
    """The compiled network's outputs differ from PyTorch's beyond its precision's tolerance
    (``MAX_RELATIVE_ERRORS``)."""


def disabled_by_env() -> bool:
    return os.environ.get(CPU_RUNTIME_ENV, "").strip().lower() in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the runtime can be used here: its packages import and it is not turned off."""
    if disabled_by_env():
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    # torch.onnx.export needs onnx, only when it exports (a cache miss): looked up, not imported
    # here, as importing it takes over a second
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def runtime_version() -> str:
    """The runtime and its full build version (a cache key part)."""
    import openvino

    return f"{RUNTIME} {openvino.get_version()}"


def runtime_label() -> str:
    """The runtime and its release, for people ("openvino 2026.4.1")."""
    return runtime_version().split("-", 1)[0]


def cpu_features() -> str:
    """The CPU's instruction sets that matter here, as OpenVINO and oneDNN see them."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        flags = []
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    found = [flag for flag in wanted if flag in flags]
    return " ".join(found) if found else "unknown"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes) of ``module``: what its
    output depends on besides the inputs, wherever the weights came from (a file, training)."""
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict(keep_vars=False).items():
        data = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        hasher.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return f"sha256:{hasher.hexdigest()}"


def module_config(module: torch.nn.Module) -> list:
    """Each submodule's class and its plain settings (numbers, flags, strings: a head count, a
    prior's weight), which change the output without changing any weight's shape."""
    config = []
    for name, sub in module.named_modules():
        plain = {k: v for k, v in sorted(vars(sub).items())
                 if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple)) and k != "training"}
        config.append((name, f"{type(sub).__module__}.{type(sub).__qualname__}", repr(plain)))
    return config


def cache_root() -> Path:
    from .weights import cache_dir

    return cache_dir() / CACHE_FOLDER


@dataclass(frozen=True)
class NetworkSpec:
    """What to export: the module, example inputs (also the check's inputs), names, and which
    input axes may change size between calls (``{input name: {axis: label}}``)."""

    kind: str  # "image-encoder", "decoder": a folder name prefix, for people looking at the cache
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict | None = None
    precision: str = PRECISION  # a key of MAX_RELATIVE_ERRORS; part of the cache key
    # "int8" only: the calibration of each convolution computed in int8, by its name in
    # the exported network (``int8_convolutions.quantize``)
    int8_calibration: dict | None = None

    def __post_init__(self) -> None:
        if self.precision not in MAX_RELATIVE_ERRORS:
            raise ValueError(f"precision {self.precision!r} must be one of {sorted(MAX_RELATIVE_ERRORS)}")
        if (self.precision == "int8") != bool(self.int8_calibration):
            raise ValueError("int8_calibration is given with precision 'int8', and only then")

    def key(self, digest: str) -> str:
        parts = {
            "format": FORMAT, "kind": self.kind, "class": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
            "weights": digest, "inputs": [(n, str(t.dtype), tuple(t.shape)) for n, t in zip(self.input_names, self.inputs)],
            "outputs": list(self.output_names), "dynamic": self.dynamic_axes or {}, "precision": self.precision,
            "int8": [int8_convolutions.GRAPH, self.int8_calibration] if self.int8_calibration else {},
            "runtime": runtime_version(), "torch": torch.__version__,
            "config": module_config(self.module),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class CompiledNetwork:
    """A compiled network, called like the module with tensors; returns float32 CPU tensors (one
    tensor for one output, else a tuple). Calls are serialised: one inference request."""

    def __init__(self, compiled, output_count: int, info: dict) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._outputs = output_count
        self.info = info  # backend, precision, relative_error, build_s, from_cache, path

    def __call__(self, *tensors: torch.Tensor):
        arrays = [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in tensors]
        with self._lock:
            # inputs and outputs shared, not copied in: the outputs are copied out once, as the
            # request reuses their memory at the next call
            results = self._request.infer(arrays, share_inputs=True, share_outputs=True)
            outs = tuple(torch.from_numpy(np.array(results[i], copy=True)) for i in range(self._outputs))
        return outs[0] if self._outputs == 1 else outs


def _read(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def int8_rest_precision() -> str:
    """What an "int8" network computes in outside its int8 convolutions: "bf16" where the CPU has
    native bfloat16 (AVX512-BF16, AMX), else "f32". Elsewhere bfloat16 is emulated, slower than
    float32 (on the AMD EPYC capped at AVX2, OpenVINO ran the modified decoder's bf16-hinted int8
    network on one thread, many times slower; with the f32 hint in 155 ms against 185 ms all in
    f32: ``docs/cpu-runtime.md``). The exported network is the same either way: the choice is made
    when it is compiled, so a cached one serves both."""
    from .device import bf16_is_fast

    return "bf16" if bf16_is_fast(torch.device("cpu")) else "f32"


def computes_in_bf16(precision: str) -> bool:
    """Whether a network compiled here in ``precision`` computes in bfloat16 (outside any int8
    convolutions)."""
    return precision == "bf16" or (precision == "int8" and int8_rest_precision() == "bf16")


def _compile(model, precision: str = PRECISION):
    """Compile for this CPU in ``precision``, on as many threads as PyTorch uses. OpenVINO's
    precision hint is the precision itself; for "int8" (whose int8 comes from the quantizers in the
    graph) the rest's, ``int8_rest_precision``."""
    import openvino as ov

    hint = int8_rest_precision() if precision == "int8" else precision
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())}
    return ov.Core().compile_model(model, "CPU", config)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.float(), reference.float()
    if out.shape != reference.shape:
        return float("inf")
    return float((out - reference).norm() / reference.norm().clamp_min(1e-12))


def compile_network(spec: NetworkSpec, root: Path | None = None) -> CompiledNetwork:
    """The compiled network of ``spec``: read from the disk cache when there, else exported,
    compiled, checked against the module (``RuntimeRefused`` beyond ``MAX_RELATIVE_ERROR``) and
    saved. A cache folder that cannot be written only costs a build at the next start."""
    started = time.perf_counter()
    root = cache_root() if root is None else root
    digest = weights_digest(spec.module)
    folder = root / f"{spec.kind}-{spec.key(digest)[:32]}"
    cached = _load(folder, len(spec.output_names), spec.precision)
    if cached is not None:
        cached.info.update(build_s=time.perf_counter() - started, from_cache=True)
        return cached
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        onnx_path = Path(scratch) / "network.onnx"
        # a copy: exporting calls ``train(False)``, which some modules answer by replacing buffers
        # (TinyViT's attention biases), and the original's weights must stay as they are
        module = copy.deepcopy(spec.module).eval()
        with torch.no_grad(), export_warnings.silenced():
            torch.onnx.export(module, spec.inputs, str(onnx_path), dynamo=False, opset_version=17,
                              input_names=list(spec.input_names), output_names=list(spec.output_names),
                              dynamic_axes=spec.dynamic_axes)
            reference = module(*spec.inputs)
        reference = (reference,) if isinstance(reference, torch.Tensor) else tuple(reference)
        model = _read(onnx_path)
        if spec.int8_calibration:
            model = int8_convolutions.quantize(model, spec.int8_calibration)
        compiled = _compile(model, spec.precision)
        network = CompiledNetwork(compiled, len(spec.output_names), {})
        outs = network(*spec.inputs)
        outs = (outs,) if isinstance(outs, torch.Tensor) else outs
        error = max(relative_error(o, r) for o, r in zip(outs, reference))
        tolerance = MAX_RELATIVE_ERRORS[spec.precision]
        if not error <= tolerance:  # also catches NaN
            raise RuntimeRefused(f"its output in {spec.precision} differs from PyTorch's by {error:.2g} (relative; "
                                 f"at most {tolerance:g} is accepted)")
        info = {"backend": runtime_label(), "precision": spec.precision, "relative_error": error,
                "weights": digest, "path": str(folder)}
        _save(model, folder, info)
    network.info = dict(info, build_s=time.perf_counter() - started, from_cache=False)
    return network


def _load(folder: Path, output_count: int, precision: str = PRECISION) -> CompiledNetwork | None:
    """The cached network in ``folder``, or None (absent, damaged, or not loadable: rebuilt)."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        info = json.loads(meta_path.read_text())
        for name, digest in info.pop("files").items():
            if _file_sha256(folder / name) != digest:
                raise ValueError(f"{name} does not match its sha256")
        compiled = _compile(_read(folder / "network.xml"), precision)
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is rebuilt, never run
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return CompiledNetwork(compiled, output_count, info)


def _save(model, folder: Path, info: dict) -> None:
    """Save as OpenVINO IR, float32 weights (``save_model`` would halve them to float16 by
    default), written whole under a temporary name and renamed: a reader never sees half of it."""
    import openvino as ov

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    except OSError:
        return
    try:
        ov.save_model(model, str(scratch / "network.xml"), compress_to_fp16=False)
        files = {name: _file_sha256(scratch / name) for name in ("network.xml", "network.bin")}
        (scratch / "meta.json").write_text(json.dumps(dict(info, files=files), indent=1))
        os.replace(scratch, folder)
    except OSError:  # another process saved the same network first, or the disk is full
        pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

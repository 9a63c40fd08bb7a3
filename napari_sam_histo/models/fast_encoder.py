"""An optimized inference copy of a SAM image encoder, for its one input shape (1, 3, S, S).

Why we do this ourselves: the encoder is what a user waits for on every new tile, and the
predictor always feeds it one padded (1, 3, 1024, 1024) float32 input, so a copy specialised to
that shape is valid for every tile. TorchScript ``trace`` + ``freeze`` + ``optimize_for_inference``
folds BatchNorm into the convolutions, inlines the weights as constants and runs the convolutions
through oneDNN with pre-packed weights: MobileSAM's encoder forward runs 1.1-2x faster on a shared 2-core
AVX2 CPU (1.3x end to end on a quiet machine, see docs/speed.md), in the same float32
math (relative error of the embedding ~2e-6). ``torch.compile`` is no option there: 282 s to
compile MobileSAM's encoder on 2 cores, and it then ran slower than eager; int8 dynamic
quantisation was x1.25 at a relative error of 0.11, channels_last alone gained nothing.

Building costs 2-4.5 eager forwards (MobileSAM on 2 shared cores: tracing ~1.1x an eager forward,
freeze + optimize 0.5x or more, as they are single-threaded graph passes, the check one optimized
forward; 13.6 s at load 4-5, where an eager forward took 3.0 s; ``status()["build_s"]`` says how
long it took), so built on the first tile it pays off after ~5-10 tiles: a UI should build it
ahead of time, when the model is loaded. It is built once per encoder module, in whichever thread
asks first (``optimized_encoder``; the others wait for it), or in a background thread (``prepare``,
``Predictor.prepare_encoder``). Every copy is checked against the eager encoder's output on the tracing input
before it is used; a failing build or check warns once and the encoder stays eager: a click never
fails because of this.

A frozen copy holds the weights as they were when it was built. It is dropped, and that module stays
eager from then on, as soon as any parameter or buffer of the encoder changed (in-place updates bump
a tensor's version counter; a replaced tensor changes its storage), or while the module is in
training mode: an encoder that is being trained never runs a stale copy.

On a CPU where the OpenVINO runtime is installed, the copy is MobileSAM's encoder compiled by it
(``models.cpu_runtime``: 2.0x a raw PyTorch forward on 2 AVX512 cores, against 1.35x for the
TorchScript copy, in the same float32 math: relative error ~1e-6, refused above 1e-4), cached on
disk so a later start only reads it back (under a second). Where the runtime is missing, turned
off (``NAPARI_SAM_HISTO_CPU_RUNTIME=0``) or its network is refused, the TorchScript copy is built
instead (the refusal warns once); on a GPU it is always TorchScript.
"""

from __future__ import annotations

import atexit
import copy
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from itertools import chain

import torch

from . import cpu_runtime, export_warnings

# Relative (L2) error of the copy's output against eager above which it is refused. The measured
# error is ~2e-6 (conv+BN folding and oneDNN's summation order); bf16 would be ~1e-2.
MAX_RELATIVE_ERROR = 1e-4
EXIT_WAIT_S = 60.0  # at exit, how long to wait for a build still running (builds take 6-14 s here)

@dataclass
class _Entry:
    """The optimized copy of one encoder module, or why there is none."""

    fingerprint: tuple | None = None
    module: object | None = None  # a TorchScript module or a ``cpu_runtime.CompiledNetwork``
    backend: str | None = None  # "torchscript" or the runtime and its version
    shape: tuple[int, ...] | None = None
    build_s: float = 0.0
    relative_error: float | None = None
    error: str | None = None  # the build failed or the check refused it: eager for good
    stale: bool = False  # the weights changed after it was built: eager for good
    done: threading.Event = field(default_factory=threading.Event)


_lock = threading.Lock()
_entries: weakref.WeakKeyDictionary[torch.nn.Module, _Entry] = weakref.WeakKeyDictionary()
_builds: list[threading.Thread] = []  # background builds (``start_build``; guarded by _lock)


@atexit.register
def _wait_for_builds(timeout: float = EXIT_WAIT_S) -> None:
    """At interpreter exit, let a background build finish first. Its thread is a daemon (a build
    never keeps napari open by itself), but one still inside TorchScript while the interpreter
    tears torch down aborts the process ("terminate called without an active exception"), as napari
    quit a few seconds after Start would without this wait. atexit runs after the non-daemon threads
    are joined and while daemon threads still run."""
    deadline = time.monotonic() + timeout
    with _lock:
        running = [thread for thread in _builds if thread.is_alive()]
    for thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """What changes when any weight changes: each parameter's and buffer's storage and version
    counter (``optimizer.step`` and ``load_state_dict`` update in place, bumping the version)."""
    return tensors_fingerprint(chain(module.parameters(), module.buffers()))


def tensors_fingerprint(tensors) -> tuple:
    """``weights_fingerprint`` of the given tensors (a caller that checks at every click keeps
    its module's tensors once instead of walking the module each time)."""
    parts = []
    for tensor in tensors:
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor has no version counter (and cannot be trained)
            version = -1
        parts.append((tensor.data_ptr(), version))
    return tuple(parts)


def optimized_encoder(encoder: torch.nn.Module, image_size: int, device: torch.device, wait: bool = True):
    """The optimized copy of ``encoder`` for input (1, 3, image_size, image_size) on ``device``,
    built now if needed (once per module; concurrent callers wait for the one build), or None
    where it must not or cannot be used (training mode, weights changed since, build failed).
    ``wait=False``: never wait for a build; start it in the background if none has started and
    return None until it is done (the caller runs eager meanwhile: a UI's tile never waits)."""
    if encoder.training:
        return None
    if not wait:
        with _lock:
            entry = _entries.get(encoder)
        if entry is None:
            prepare(encoder, image_size, device)
            return None
        if not entry.done.is_set():
            return None
        return _usable(encoder, entry, (1, 3, image_size, image_size))
    entry, build = _claim(encoder)
    if build:
        _build(encoder, entry, image_size, device)
    else:
        entry.done.wait()
    return _usable(encoder, entry, (1, 3, image_size, image_size))


def prepare(encoder: torch.nn.Module, image_size: int, device: torch.device) -> threading.Thread | None:
    """Start building the copy in a background thread (None if it is built or being built), so
    the first tile does not wait for it; ``optimized_encoder`` then waits only for what is left."""
    if encoder.training:
        return None
    entry, build = _claim(encoder)
    if not build:
        return None
    return start_build("fast-encoder-build", _build, encoder, entry, image_size, device)


def start_build(name: str, target, *args) -> threading.Thread:
    """Run a build (this module's, or the runtime decoder's) in a daemon thread, which never keeps
    the application open by itself and is waited for at exit (``_wait_for_builds``)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with _lock:
        _builds[:] = [t for t in _builds if t.is_alive()] + [thread]
    thread.start()
    return thread


def status(encoder: torch.nn.Module) -> dict:
    """What happened to ``encoder``'s copy: built, build seconds, checked error, or why not."""
    with _lock:
        entry = _entries.get(encoder)
    if entry is None:
        return {"state": "not built"}
    if not entry.done.is_set():
        return {"state": "building"}
    state = "failed" if entry.error else "stale" if entry.stale else "built"
    return {"state": state, "build_s": entry.build_s, "relative_error": entry.relative_error, "error": entry.error,
            "backend": entry.backend}


def forget(encoder: torch.nn.Module) -> None:
    """Drop ``encoder``'s copy (and any failure): the next ``optimized_encoder`` builds afresh."""
    with _lock:
        _entries.pop(encoder, None)


def _claim(encoder: torch.nn.Module) -> tuple[_Entry, bool]:
    """The module's entry, and whether this caller must build it (it is the first to ask)."""
    with _lock:
        entry = _entries.get(encoder)
        if entry is not None:
            return entry, False
        entry = _entries[encoder] = _Entry()
        return entry, True


def _usable(encoder: torch.nn.Module, entry: _Entry, shape: tuple[int, ...]):
    if entry.module is None or entry.stale or entry.shape != shape:
        return None
    if weights_fingerprint(encoder) != entry.fingerprint:
        entry.stale, entry.module = True, None  # being trained or reloaded: eager from now on
        return None
    return entry.module


def _build(encoder: torch.nn.Module, entry: _Entry, image_size: int, device: torch.device) -> None:
    started = time.perf_counter()
    try:
        entry.fingerprint = weights_fingerprint(encoder)
        module, relative_error = build_optimized(encoder, image_size, device)
        if not relative_error <= MAX_RELATIVE_ERROR:  # also catches NaN
            raise RuntimeError(f"its output differs from the eager encoder's by {relative_error:.2g} (relative)")
        entry.module, entry.relative_error = module, relative_error
        entry.backend = backend_of(module)
        entry.shape = (1, 3, image_size, image_size)
    except Exception as err:  # noqa: BLE001 - any failure means: stay eager, never fail a click
        entry.error = f"{type(err).__name__}: {err}"
        warnings.warn(f"The optimized image encoder could not be built ({entry.error}); "
                      "the encoder runs eagerly (slower, same results).", RuntimeWarning, stacklevel=3)
    finally:
        entry.build_s = time.perf_counter() - started
        entry.done.set()


class _Recording(torch.nn.Module):
    """The encoder, keeping the output of the eager forward that tracing runs anyway: the
    reference the copy is checked against costs no extra forward."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        self.seen.append(out.detach().clone())
        return out


def backend_of(module) -> str:
    """What runs a built copy: the CPU runtime (with its version) or TorchScript."""
    if isinstance(module, cpu_runtime.CompiledNetwork):
        return module.info["backend"]
    return "torchscript"


def runtime_applies(device: torch.device) -> bool:
    """Whether the copy is compiled by the CPU runtime here (else it is TorchScript)."""
    return torch.device(device).type == "cpu" and cpu_runtime.available()


def build_optimized(encoder: torch.nn.Module, image_size: int, device: torch.device):
    """(the optimized copy, its relative L2 error against eager on a random input): compiled by
    the CPU runtime where it applies (``runtime_applies``), else, or when the runtime fails or
    refuses it (warned), the TorchScript copy."""
    if runtime_applies(device):
        try:
            return build_runtime(encoder, image_size)
        except Exception as err:  # noqa: BLE001 - any failure means: the TorchScript copy
            warnings.warn(f"The CPU runtime could not be used for the image encoder ({type(err).__name__}: "
                          f"{err}); the TorchScript copy is used (slower, same results).", RuntimeWarning,
                          stacklevel=2)
    return build_torchscript(encoder, image_size, device)


def example_input(image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed random input every copy is built and checked on."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, image_size, image_size, generator=generator).to(device)


def build_runtime(encoder: torch.nn.Module, image_size: int):
    """(the encoder compiled by the CPU runtime, from the disk cache when there; its relative
    error against eager, checked when it was built)."""
    with torch.inference_mode(False), torch.no_grad():  # export traces: no inference tensors
        spec = cpu_runtime.NetworkSpec("image-encoder", encoder, (example_input(image_size),), ("pixels",),
                                       ("embeddings",))
        network = cpu_runtime.compile_network(spec)
    return network, float(network.info["relative_error"])


def build_torchscript(encoder: torch.nn.Module, image_size: int, device: torch.device):
    """(trace + freeze + optimize_for_inference copy, its relative L2 error against eager on a
    random tracing input). Traces a deep copy, so the original module is left untouched."""
    example = example_input(image_size, device)
    recording = _Recording(copy.deepcopy(encoder).eval())
    with torch.inference_mode(), export_warnings.silenced():
        traced = torch.jit.trace(recording, example, check_trace=False)
        reference = recording.seen[-1]
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        # the check's run is also the warm-up: TorchScript's profiling executor specialises the
        # graph on its first run (~15 % slower); from the second on, i.e. the first tile, it is fast
        out = optimized(example)
    return optimized, cpu_runtime.relative_error(out, reference)

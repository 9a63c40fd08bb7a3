"""The benchmark on a dask.distributed cluster: one task per image, the same report as one process.

``iter_distributed_benchmark`` is ``iter_benchmark`` with the images (pairs) spread over the
workers of a ``LocalCluster`` (``scheduler="local"``) or of a running scheduler (an address);
``iter_benchmark``/``run_benchmark`` come here when ``config.scheduler`` is set.

* Each worker builds its methods once, from the (picklable) config, on its first task, and keeps
  them for the next run with the same models (``methods_key``), one set per worker: a second
  benchmark on a running cluster loads no model and builds no encoder again. Each run starts
  with empty in-memory embedding caches, so it counts the encoder calls one process counts.
* A task gets the pair's file paths, not pixels: the worker reads the image and mask itself, so
  **on a remote cluster the dataset (and an embedding store) must be on a filesystem that every
  worker sees at the same path**.
* The driver writes the results into the same ``ReportWriter`` in the single-process order (pair,
  then sample, then method), whatever order the tasks finish in, with the encoder calls and store
  loads counted as one process counts them: ``samples.csv`` and the summary are those of the
  single-process run, apart from the seconds. Resume skips what ``samples.csv`` holds, as
  ``iter_benchmark`` does; ``cancel`` and Ctrl-C cancel the pending tasks and leave a valid
  partial report; a task that fails raises ``BenchmarkWorkerError`` naming the image, after the
  report of the images before it is written.
* The runtime recorded is the workers' (built on them; all must agree), with how many workers
  ran and on which scheduler (``runtime["distributed"]``).
* With CUDA, a task asks for the worker resource ``GPU=1``; a worker runs one pair at a time (its
  methods are not shared by two threads), so start remote workers with ``--nthreads 1``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from ..cohort.cluster import GPU_RESOURCE, cluster_client, is_local
from ..errors import InputError
from .benchmark_config import BenchmarkConfig, BenchmarkEvent, build_methods
from .dataset import PairSpec, Skipped, find_pairs, load_samples
from .report import ReportWriter, refuse_existing
from .runner import InteractiveModel, SamClickModel, SampleResult, run_sample
from .runtime import benchmark_runtime

POLL_S = 0.2  # how often the driver looks at ``cancel`` while it waits for tasks


class BenchmarkWorkerError(RuntimeError):
    """A task failed on a worker (an exception in it, or the worker died): names the image."""


# BenchmarkConfig fields that do not change the methods a worker builds: a run that differs only
# in these reuses the worker's methods (any other field, one added later included, rebuilds them).
PROTOCOL_FIELDS = ("dataset", "out_dir", "thresholds", "max_clicks", "full_curve", "ritm_nof", "instances",
                   "components", "ignore_value", "mask_suffix", "limit", "stride", "scheduler", "workers")


def methods_key(config: BenchmarkConfig) -> str:
    """What the methods built from ``config`` depend on (models, decoders, device, precision, store...)."""
    return repr(sorted((k, v) for k, v in asdict(config).items() if k not in PROTOCOL_FIELDS))


@dataclass
class _WorkerMethods:
    key: str
    methods: list[SamClickModel]
    runtime: dict
    run: str = ""  # the run whose pairs it serves now: a new run starts with empty embedding caches
    lock: threading.Lock = field(default_factory=threading.Lock)  # one pair at a time on this worker


_HELD: dict[str, _WorkerMethods] = {}  # worker address -> its methods, in the worker's process
_HELD_LOCK = threading.Lock()


def _worker_methods(config: BenchmarkConfig) -> _WorkerMethods:
    """This worker's methods for ``config``, built on its first task (in a task thread, not the
    worker's event loop: loading a model and building its encoder take seconds) and kept for the
    next run with the same models, so a second benchmark on a running cluster loads nothing; one
    set per worker: a run with other models replaces them."""
    from distributed import get_worker

    address, key = get_worker().address, methods_key(config)
    with _HELD_LOCK:
        held = _HELD.get(address)
        if held is not None and held.key != key:
            del _HELD[address]
            held = None  # the old models go before the new ones are loaded
            _free_device_memory()
        if held is None:
            methods = build_methods(config)
            held = _HELD[address] = _WorkerMethods(key, methods, benchmark_runtime(methods))
        return held


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _start_run(held: _WorkerMethods, run: str) -> None:
    """A new run sees no embedding of the last one (held lock): it counts the encoder calls one
    process would count (an on-disk store, if any, is still read: it is part of the config)."""
    if held.run != run:
        for method in held.methods:
            method.predictor.cache.clear()
        held.run = run


def _probe(config: BenchmarkConfig, run: str) -> tuple[str, dict, list[str]]:
    """On one worker: build (or find) the methods; the worker's address, runtime, method names."""
    from distributed import get_worker

    held = _worker_methods(config)
    with held.lock:
        _start_run(held, run)
    return get_worker().address, held.runtime, [m.name for m in held.methods]


@dataclass(frozen=True)
class SkippedSample:
    """A sample of the pair that a method skips (the report lists it, with the reason)."""

    method: str
    sample_id: str
    reason: str


@dataclass(frozen=True)
class ScoredSample:
    """A sample a method clicked: its result, with the method's encoder calls and store loads since
    the pair began."""

    result: SampleResult
    encoder_calls: int
    store_loads: int | None


@dataclass(frozen=True)
class PairFailure:
    """A pair whose task failed: the exception it raised on the worker (or the worker's death)."""

    error: BaseException


@dataclass
class PairOutcome:
    """What a worker sends back for one pair: its samples in the single-process order, each skipped
    or scored; the whole pair's counts; where it ran and on what."""

    entries: list[SkippedSample | ScoredSample] = field(default_factory=list)
    encoder_calls: dict[str, int] = field(default_factory=dict)
    store_loads: dict[str, int | None] = field(default_factory=dict)
    worker: str = ""
    runtime: dict | None = None


def _run_pair(config: BenchmarkConfig, run: str, pair: PairSpec, done: frozenset) -> PairOutcome:
    """On a worker: ``iter_benchmark``'s loop body for one pair (``done``: (method, sample) in the
    report already)."""
    from distributed import get_worker

    held = _worker_methods(config)
    with held.lock:  # one pair at a time per worker: the counts below are this pair's alone
        _start_run(held, run)
        methods = held.methods
        calls0 = {m.name: m.encoder_calls for m in methods}
        loads0 = {m.name: m.store_loads for m in methods}

        def counts(method):
            return method.encoder_calls - calls0[method.name], method.store_loads - loads0[method.name]

        outcome = PairOutcome(worker=get_worker().address, runtime=held.runtime)
        started = time.perf_counter()
        samples = list(load_samples(pair, config.instances, config.ignore_value, config.components))
        load_s = time.perf_counter() - started
        for sample in samples:
            for method in methods:
                if (method.name, sample.sample_id) in done:
                    continue
                if isinstance(sample, Skipped):
                    outcome.entries.append(SkippedSample(method.name, sample.sample_id, sample.reason))
                    continue
                result = run_sample(method, sample, config.max_clicks, config.stop_iou, load_s)
                outcome.entries.append(ScoredSample(result, *counts(method)))
            load_s = 0.0
        for method in methods:
            outcome.encoder_calls[method.name], outcome.store_loads[method.name] = counts(method)
        return outcome


def _done_in(pair: PairSpec, done: set[tuple[str, str]]) -> frozenset:
    """The (method, sample) of ``pair`` that the report holds: its stem, or its instances."""
    return frozenset((m, s) for m, s in done if s == pair.stem or s.startswith(pair.stem + "#"))


def _worker_resources(client) -> dict[str, dict]:
    info = client.scheduler_info(n_workers=-1)
    return {address: dict(w.get("resources") or {}) for address, w in info.get("workers", {}).items()}


def iter_distributed_benchmark(
    config: BenchmarkConfig,
    methods: list[InteractiveModel] | None = None,
    cancel: threading.Event | None = None,
    existing: str = "refuse",
    scheduler: str | None = None,
    workers: int | None = None,
) -> Iterator[BenchmarkEvent]:
    """``iter_benchmark`` on a cluster (``scheduler``/``workers``: ``config``'s when None); the
    events are the single-process ones (one per image, in order). ``methods`` must be None: the
    workers build theirs from ``config``."""
    if methods is not None:
        raise ValueError("a distributed benchmark builds its methods on the workers, from the config; "
                         "pass methods=None (or run without a scheduler)")
    scheduler = scheduler if scheduler is not None else config.scheduler
    workers = workers if workers is not None else config.workers
    pairs = find_pairs(config.dataset, config.mask_suffix, config.limit, config.stride)
    if existing == "refuse":
        refuse_existing(config.out_dir)  # before a cluster is started
    with cluster_client(scheduler or "local", workers) as client:
        yield from _run_on(client, config, pairs, cancel, existing, "local" if is_local(scheduler) else scheduler)


def _run_on(client, config, pairs, cancel, existing, scheduler) -> Iterator[BenchmarkEvent]:
    if not is_local(scheduler):
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError as err:
            raise InputError(f"The dask scheduler at {scheduler} has no workers (none joined within 60 s).") from err
    resources = _worker_resources(client)
    gpu = config.device.startswith("cuda") or (config.device == "auto"
                                               and any(GPU_RESOURCE in r for r in resources.values()))
    if gpu:
        resources = {a: r for a, r in resources.items() if GPU_RESOURCE in r}
        if not resources:
            raise InputError(f"--device {config.device}: no dask worker offers a GPU (start GPU workers with "
                             f"--resources {GPU_RESOURCE}=1).")
    task_resources = {GPU_RESOURCE: 1} if gpu else None
    run = uuid.uuid4().hex
    pending: dict = {}  # future -> pair index, while it runs
    try:
        # Every worker builds its methods now (in parallel) and says what it runs: one report, one runtime.
        probes = client.gather([client.submit(_probe, config, run, workers=[address], allow_other_workers=False,
                                              resources=task_resources, pure=False)
                                for address in resources])
        runtimes = {address: runtime for address, runtime, _ in probes}
        names = probes[0][2]
        first = probes[0][1]
        differ = [address for address, runtime in runtimes.items() if runtime != first]
        if differ:
            raise InputError(f"The dask workers run on different runtimes ({probes[0][0]}: {first}; "
                             f"{differ[0]}: {runtimes[differ[0]]}); one report needs one runtime.")
        runtime = {**first, "distributed": {"scheduler": scheduler, "workers": len(runtimes)}}
        writer = ReportWriter(config.out_dir, names, config.thresholds, config.max_clicks, config.ritm_nof,
                              config={**asdict(config), "thresholds": list(config.thresholds)},
                              existing=existing, runtime=runtime)
        writer.write(partial=True, figures=False)
        yield from _drive(client, config, pairs, cancel, writer, run, task_resources, len(runtimes),
                          first, pending)
    except KeyboardInterrupt:
        client.cancel(list(pending))
        if "writer" in locals():
            writer.write(partial=True)
        raise
    finally:
        client.cancel(list(pending))


def _drive(client, config, pairs, cancel, writer, run, task_resources, n_workers, runtime,
           pending) -> Iterator[BenchmarkEvent]:
    """Keep up to two pairs per worker running; write finished pairs in pair order."""
    whole_images = not (config.instances or config.components)
    needed = [not (whole_images and all((m, pair.stem) in writer.done for m in writer.methods)) for pair in pairs]
    done_keys = [_done_in(pair, writer.done) if need else frozenset() for pair, need in zip(pairs, needed)]
    finished: dict[int, PairOutcome | PairFailure] = {}
    base_calls = dict.fromkeys(writer.methods, 0)  # this run's encoder calls and store loads, as one process counts
    base_loads: dict[str, int | None] = dict.fromkeys(writer.methods)
    window, submitted, failed = 2 * max(n_workers, 1), 0, False
    signal = threading.Event()  # set by the client's thread when a task finishes

    def stop() -> None:
        client.cancel(list(pending))
        pending.clear()

    for head, pair in enumerate(pairs):
        while needed[head] and head not in finished:
            if cancel is not None and cancel.is_set():
                break
            while not failed and len(pending) < window and submitted < len(pairs):
                if needed[submitted]:
                    future = client.submit(_run_pair, config, run, pairs[submitted], done_keys[submitted],
                                           resources=task_resources, pure=False)
                    future.add_done_callback(lambda _: signal.set())
                    pending[future] = submitted
                submitted += 1
            signal.wait(POLL_S)  # a task finished, or time to look at ``cancel`` again
            signal.clear()
            for future in [f for f in pending if f.done()]:
                index = pending.pop(future)
                try:
                    finished[index] = future.result()
                except Exception as err:  # noqa: BLE001 - the task's exception, re-raised here, or the worker died
                    finished[index] = PairFailure(err)
                    failed = True
        if cancel is not None and cancel.is_set():
            stop()
            yield BenchmarkEvent(head, len(pairs), [], writer.write(partial=True))
            return
        results: list[SampleResult] = []
        if needed[head]:
            outcome = finished.pop(head)
            if isinstance(outcome, PairFailure):
                stop()
                writer.write(partial=True)
                error = outcome.error
                raise BenchmarkWorkerError(
                    f"The benchmark failed on the image {pair.image_path} ({type(error).__name__}: {error}); "
                    f"the partial report of the {head} images before it is in {config.out_dir}.") from error
            if outcome.runtime != runtime:
                stop()
                writer.write(partial=True)
                raise BenchmarkWorkerError(f"The worker {outcome.worker} that ran {pair.image_path} runs on another "
                                           f"runtime than the report's ({outcome.runtime} vs {runtime}).")
            for entry in outcome.entries:
                if isinstance(entry, SkippedSample):
                    writer.skip(entry.method, entry.sample_id, entry.reason)
                    continue
                result, calls, loads = entry.result, entry.encoder_calls, entry.store_loads
                method = result.method
                writer.add(result, base_calls[method] + calls,
                           None if loads is None else (base_loads[method] or 0) + loads)
                results.append(result)
            for method, calls in outcome.encoder_calls.items():
                base_calls[method] += calls
                loads = outcome.store_loads.get(method)
                if loads is not None:
                    base_loads[method] = (base_loads[method] or 0) + loads
        last = head + 1 == len(pairs)
        summary = writer.write(partial=not last, figures=last or head % 10 == 9)
        yield BenchmarkEvent(head + 1, len(pairs), results, summary)

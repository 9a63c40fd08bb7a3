"""Where cohort work runs: a dask.distributed ``Client`` on a ``LocalCluster`` sized to this machine,
or on a scheduler that already runs (dask-jobqueue on SLURM, a cluster of GPU nodes).

dask.distributed is the engine (scheduling, worker processes, retries, progress); this module only
chooses its size. On a CPU machine each worker is one process with one thread, and torch in it
uses that one core: SAM's encoder is a few large matrix products, so N processes with 1 thread
each keep N cores busy with no oversubscription, and the GIL never serialises two encoders.
With CUDA, one worker advertising the worker resource ``GPU=1`` (tasks that need the GPU ask for
it): a ``LocalCluster`` gives every worker the same environment, so it cannot hand each its own GPU.
On a machine with several GPUs start one worker per GPU with ``CUDA_VISIBLE_DEVICES`` set (or
dask-cuda's ``LocalCUDACluster``) and pass the scheduler's address.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask

from ..errors import InputError

GPU_RESOURCE = "GPU"
# dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS);
# that also turns off glibc's adaptive mmap threshold, so every large tensor of the encoder is
# mmap'ed and faulted in afresh: measured here, 6.9 s instead of 3.8 s per MobileSAM tile on one
# core. Our workers hold one model and a few tiles, so they keep glibc's defaults. Remote
# clusters: set the same in their dask config (distributed.nanny.pre-spawn-environ).
PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _worker_environ() -> dict:
    """dask's pre-spawn environment for workers, without MALLOC_TRIM_THRESHOLD_."""
    environ = dict(dask.config.get(PRE_SPAWN, default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {PRE_SPAWN: environ}  # the worker resource a GPU task asks for (start GPU workers with --resources GPU=1)


def default_workers() -> int:
    """Processes a ``LocalCluster`` starts here: one when there is a GPU (see the module), else one
    per core this process may use."""
    if _cuda_devices():
        return 1
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch or no working CUDA: no GPUs to count
        return 0


def is_local(scheduler: str | None) -> bool:
    return scheduler in (None, "", "local")


@contextmanager
def cluster_client(scheduler: str | None = "local", workers: int | None = None) -> Iterator:
    """A connected ``distributed.Client``, closed (with its ``LocalCluster``, if it made one) on exit.

    ``scheduler``: "local" (or None) starts a ``LocalCluster`` of ``workers`` processes (default:
    ``default_workers()``), one thread each, without a dashboard; an address (``tcp://host:8786``) connects to a running
    scheduler, whose workers were started by whoever runs that cluster.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # a core dependency; an environment may still lack it
        raise InputError("dask.distributed is not installed: pip install distributed") from err
    if is_local(scheduler):
        n = int(workers) if workers else default_workers()
        if n < 1:
            raise InputError(f"--workers must be at least 1, not {workers}.")
        gpus = _cuda_devices()
        with dask.config.set(_worker_environ()):
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                # torch and BLAS in each worker use its one core (see the module's docstring)
                env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                resources={GPU_RESOURCE: 1} if gpus else None,
            )
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if not str(scheduler).startswith(("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")):
        raise InputError(f"--scheduler {scheduler!r} is neither 'local' nor a scheduler address "
                         "such as tcp://host:8786.")
    try:
        client = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError) as err:
        raise InputError(f"Could not reach the dask scheduler at {scheduler}: {err}") from err
    try:
        yield client
    finally:
        client.close()

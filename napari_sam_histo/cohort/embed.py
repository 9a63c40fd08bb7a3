"""``napari-sam-histo embed``: precompute a cohort's embeddings on a dask.distributed cluster into the
per-slide stores the annotator reads (``cohort.store``), so a click there runs no encoder.

The driver plans each slide (``embed_plan``: the half-tile lattice at the chosen levels, tissue
only when asked), skips the tiles already stored (one stat each), and sends the rest as batches of
one slide's tiles to the workers (``encoder_worker``), with a progress bar and a final summary.

Store safety: every entry is written whole to a temporary name and renamed, so any number of
writers (this run's workers, an annotator clicking on the same slide, a second run) and readers
share a store with no lock; an interrupted run leaves complete entries and invisible temporary
folders (the next run removes those older than an hour, ``_remove_stale``), and running it
again computes only what is missing.

Cluster (``cluster.cluster_client``): a ``LocalCluster`` sized to this machine by default;
``--scheduler tcp://host:8786`` uses workers started elsewhere, e.g. on SLURM with dask-jobqueue::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=1, processes=1, memory="8GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"], worker_extra_args=["--resources", "GPU=1"])
    cluster.scale(jobs=8)
    print(cluster.scheduler_address)  # -> napari-sam-histo embed ... --scheduler tcp://...

Workers must import napari_sam_histo, find the model's weights, and see the slides and the store
at the same paths as the driver (a shared filesystem). With ``--device cuda`` (or ``auto`` on a
cluster whose workers advertise it) each task asks for the worker resource ``GPU=1``, so only GPU
workers take them, one at a time each.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError
from .cluster import GPU_RESOURCE, cluster_client
from .embed_plan import SlidePlan, describe, plan_slide
from .encoder_worker import PLUGIN_NAME, BatchResult, EncoderPlugin, ModelRecipe, embed_batch, key_template
from .slide_files import find_slides
from .store import embeddings_root, mark_precomputed, slide_store

WAIT_FOR_WORKERS_S = 60.0
CPU_BATCH, GPU_BATCH = 4, 16  # tiles per task: a few seconds of work either way


@dataclass
class EmbedSummary:
    """What a run did, in tiles (see ``text``)."""

    store: str = ""
    slides: int = 0
    slides_failed: int = 0
    lattice: int = 0  # lattice tiles on the chosen levels
    background: int = 0  # of those, skipped as glass
    already: int = 0  # found in the store
    computed: int = 0
    failed: int = 0
    wall_s: float = 0.0
    compute_s: float = 0.0  # from the first batch sent to the last one back
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def planned(self) -> int:
        return self.lattice - self.background

    @property
    def ok(self) -> bool:
        return not (self.failed or self.slides_failed or self.interrupted)

    @property
    def tiles_per_s(self) -> float:
        return self.computed / self.compute_s if self.compute_s > 0 else 0.0

    def add(self, batch: BatchResult) -> None:
        self.already += batch.already
        self.computed += batch.computed
        self.failed += batch.failed
        self.errors += batch.errors

    def text(self) -> str:
        share = f", {self.background / self.lattice:.0%}" if self.lattice else ""
        lines = [
            f"slides: {self.slides}" + (f" ({self.slides_failed} could not be embedded)" if self.slides_failed else ""),
            (f"tiles: {self.planned} planned ({self.background} of {self.lattice} skipped as background{share}), "
             f"{self.already} already stored, {self.computed} computed, {self.failed} failed"),
            (f"speed: {self.tiles_per_s:.2f} tiles/s over {self.compute_s:.1f} s of computing, "
             f"{self.wall_s:.1f} s wall"),
            f"store: {self.store}",
        ]
        if self.interrupted:
            lines.append("interrupted: run the same command again to compute only the missing tiles")
        return "\n".join(lines)


def _gpu_workers(client) -> int:
    workers = client.scheduler_info().get("workers", {}).values()
    return sum(1 for w in workers if w.get("resources", {}).get(GPU_RESOURCE))


def _load_everywhere(client, recipe: ModelRecipe, resources) -> None:
    """Build the model on every worker that will take tasks before the clock starts (a worker that
    joins later builds it at its first batch)."""
    workers = client.scheduler_info().get("workers", {})
    able = [address for address, info in workers.items()
            if not resources or all(info.get("resources", {}).get(k, 0) >= v for k, v in resources.items())]
    client.gather([client.submit(key_template, recipe, resources=resources, workers=[address], pure=False)
                   for address in able])


def plan_cohort(paths, level="auto", magnification=None, tile_size=1024, tissue_only=False,
                summary: EmbedSummary | None = None, log=print) -> list[SlidePlan]:
    """One plan per slide that opens; the others are counted and named in ``summary``."""
    from ..slides.reader import open_image

    summary = summary if summary is not None else EmbedSummary()
    files, problems = find_slides(paths)
    summary.slides += len(problems)
    summary.slides_failed += len(problems)
    summary.errors += problems
    for problem in problems:
        log(f"skipped: {problem}")
    plans = []
    for path in files:
        summary.slides += 1
        try:
            source = open_image(path)
            try:
                plan = plan_slide(source, str(path), level, magnification, tile_size, tissue_only)
                mpp = source.mpp
            finally:
                source.close()
        except Exception as err:  # noqa: BLE001 - a bad slide costs that slide only
            summary.slides_failed += 1
            message = str(err) if isinstance(err, InputError) else f"{path}: {type(err).__name__}: {err}"
            summary.errors.append(message)
            log(f"skipped: {message}")
            continue
        summary.lattice += plan.lattice
        summary.background += plan.background
        log(describe(plan, mpp))
        plans.append(plan)
    return plans


def run_embed(paths, out: str | Path | None = None, model: str = "vit_t", device: str = "auto",
              level: int | str = "auto", magnification: float | None = None, tissue_only: bool = False,
              tile_size: int = 1024, scheduler: str = "local", workers: int | None = None,
              batch_size: int | None = None, random_weights: bool = False, progress: bool = True,
              log=print, client=None) -> EmbedSummary:
    """Embed every planned tile of the slides in ``paths`` into the stores under ``out`` (default
    ``embeddings_root()``); ``client``: an existing ``distributed.Client`` (else one is made from
    ``scheduler`` and ``workers``). A Ctrl-C stops the run and returns what was done."""
    started = time.perf_counter()
    if int(tile_size) < 8:
        raise InputError(f"--tile-size {tile_size}: use at least 8 pixels (SAM's default is 1024).")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"--batch-size {batch_size}: use at least 1 tile per task.")
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers {workers}: use at least 1 worker.")
    root = (Path(out).expanduser() if out is not None else embeddings_root()).absolute()  # workers resolve it too
    _check_writable(root)  # before a cluster starts and models load
    summary = EmbedSummary(store=str(root))
    plans = plan_cohort(paths, level, magnification, tile_size, tissue_only, summary, log)
    try:
        if plans and any(plan.tiles for plan in plans):
            if client is not None:
                _run(client, plans, root, model, device, batch_size, random_weights, progress, summary)
            else:
                with cluster_client(scheduler, workers) as made:
                    _run(made, plans, root, model, device, batch_size, random_weights, progress, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.wall_s = time.perf_counter() - started
    return summary


def _remove_stale(store: Path, age_s: float = 3600.0) -> None:
    """Temporary folders of killed writers (hidden ``.*.tmp``) older than ``age_s``: one scandir."""
    import shutil

    if not store.is_dir():
        return
    now = time.time()
    for item in os.scandir(store):
        try:
            if item.name.startswith(".") and item.name.endswith(".tmp") and now - item.stat().st_mtime > age_s:
                shutil.rmtree(item.path, ignore_errors=True)
        except OSError:
            continue  # vanished meanwhile


def _check_writable(root: Path) -> None:
    """``InputError`` naming ``root`` unless a store can be made in it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"Cannot write embeddings into {root}: {err.strerror or err}. "
                         "Choose another --out folder.") from err


def _run(client, plans, root, model, device, batch_size, random_weights, progress, summary) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    from ..engine.embedding_cache import EmbeddingCache

    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
    except (TimeoutError, OSError) as err:
        raise InputError(f"The dask cluster has no worker (waited {WAIT_FOR_WORKERS_S:.0f} s): start workers "
                         "for its scheduler, or use --scheduler local.") from err
    gpu = str(device).startswith("cuda") or (device == "auto" and _gpu_workers(client) > 0)
    if gpu and _gpu_workers(client) == 0:
        raise InputError(f"--device {device}: no worker of this dask cluster offers a GPU (the worker "
                         f"resource {GPU_RESOURCE}=1); use --device cpu, or start GPU workers with "
                         f"--resources {GPU_RESOURCE}=1.")
    recipe = ModelRecipe(model, "cuda" if gpu else ("cpu" if device == "auto" else device), random_weights)
    resources = {GPU_RESOURCE: 1} if gpu else None
    size = batch_size or (GPU_BATCH if gpu else CPU_BATCH)
    client.register_plugin(EncoderPlugin(), name=PLUGIN_NAME)
    template = client.submit(key_template, recipe, resources=resources, pure=False).result()  # fails fast
    _load_everywhere(client, recipe, resources)

    batches = []
    for plan in plans:
        store = slide_store(plan.identity, root)
        _remove_stale(store)
        mark_precomputed(store, {"slide": plan.path, "model": model, "tiles": len(plan.tiles),
                                 "downsamples": [level.downsample for level in plan.levels]})
        stored = EmbeddingCache(max_bytes=0, store_dir=store, max_disk_bytes=None)
        todo = [box for box in plan.tiles if not stored.stored(replace(template, image=plan.identity, tile=box.key()))]
        summary.already += len(plan.tiles) - len(todo)
        batches += [(plan, str(store), todo[i: i + size]) for i in range(0, len(todo), size)]
    if not batches:
        return
    bar = tqdm(total=sum(len(b[2]) for b in batches), unit="tile", desc="embed", disable=not progress)
    sent = time.perf_counter()
    futures = {client.submit(embed_batch, recipe, plan.path, plan.identity, store, boxes, resources=resources,
                             pure=False, retries=1): (plan, boxes) for plan, store, boxes in batches}
    try:
        for future in as_completed(futures):
            plan, boxes = futures[future]
            try:
                summary.add(future.result())
            except Exception as err:  # noqa: BLE001 - the worker died twice, or the task raised
                summary.failed += len(boxes)
                summary.errors.append(f"{plan.name}: a batch of {len(boxes)} tiles failed ({type(err).__name__}: {err})")
            bar.update(len(boxes))
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise
    finally:
        summary.compute_s = time.perf_counter() - sent
        bar.close()

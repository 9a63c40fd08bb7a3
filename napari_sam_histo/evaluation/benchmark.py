"""One benchmark run: dataset + methods (model x decoder) + protocol -> report folder.

Used by ``napari-sam-histo benchmark`` (``run_benchmark``, with callbacks) and by the Benchmark dock
(``iter_benchmark``, a generator that a napari thread worker runs, yielding after every image).
With ``config.scheduler`` set, the images run as tasks on a dask.distributed cluster
(``distributed_benchmark``), and the report is the one this process would have written.
Setting ``cancel`` (a ``threading.Event``) or Ctrl-C stops it between images and leaves a valid
partial report.

A report folder that already holds a report is refused unless the run resumes it (``existing=
"resume"``: the samples already in ``samples.csv`` for a method are not run again) or overwrites
it (``existing="overwrite"``), so an earlier report is never lost by running into the same folder.
A resume must run on the runtime the report records (precision, device, versions: ``runtime``).

``embedding_store`` keeps the embeddings on disk (``EmbeddingCache(store_dir=...)``), so another
run on the same images, in another process, encodes nothing again; an embedding read from the
store is charged in SPCe2e at the encoder seconds recorded when it was computed, and store entries
are tagged with the device, so they are reused only on the device (model) that computed them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

from .benchmark_config import BenchmarkConfig, BenchmarkEvent, build_methods
from .dataset import Skipped, find_pairs, load_samples
from .report import ReportWriter, refuse_existing
from .runner import InteractiveModel, SampleResult, run_sample
from .runtime import benchmark_runtime


def iter_benchmark(
    config: BenchmarkConfig,
    methods: list[InteractiveModel] | None = None,
    cancel: threading.Event | None = None,
    existing: str = "refuse",
) -> Iterator[BenchmarkEvent]:
    """Run image by image, yielding after each; the last event's summary is the final one
    (``partial`` when cancelled). Ctrl-C writes the partial report before it propagates.
    ``existing``: what to do when ``config.out_dir`` holds a report (refuse, resume, overwrite).
    With ``config.scheduler`` the images run on a dask cluster (``distributed_benchmark``)."""
    if config.scheduler:
        from .distributed_benchmark import iter_distributed_benchmark

        yield from iter_distributed_benchmark(config, methods, cancel, existing)
        return
    pairs = find_pairs(config.dataset, config.mask_suffix, config.limit, config.stride)
    if existing == "refuse":
        refuse_existing(config.out_dir)  # before any model is loaded
    methods = methods if methods is not None else build_methods(config)
    writer = ReportWriter(config.out_dir, [m.name for m in methods], config.thresholds, config.max_clicks,
                          config.ritm_nof, config={**asdict(config), "thresholds": list(config.thresholds)},
                          existing=existing, runtime=benchmark_runtime(methods))
    writer.write(partial=True, figures=False)  # the folder says at once what it holds, and how it was made
    whole_images = not (config.instances or config.components)  # sample id == stem: known before loading
    try:
        for done, pair in enumerate(pairs):
            if cancel is not None and cancel.is_set():
                yield BenchmarkEvent(done, len(pairs), [], writer.write(partial=True))
                return
            results = []
            if not (whole_images and all((m.name, pair.stem) in writer.done for m in methods)):
                started = time.perf_counter()
                samples = list(load_samples(pair, config.instances, config.ignore_value, config.components))
                load_s = time.perf_counter() - started
                for sample in samples:
                    for method in methods:
                        if (method.name, sample.sample_id) in writer.done:  # resumed: in samples.csv already
                            continue
                        if isinstance(sample, Skipped):
                            writer.skip(method.name, sample.sample_id, sample.reason)
                            continue
                        result = run_sample(method, sample, config.max_clicks, config.stop_iou, load_s)
                        writer.add(result, method.encoder_calls, method.store_loads)
                        results.append(result)
                    load_s = 0.0  # loading is counted once per image, with its first sample
            last = done + 1 == len(pairs)
            summary = writer.write(partial=not last, figures=last or done % 10 == 9)
            yield BenchmarkEvent(done + 1, len(pairs), results, summary)
    except KeyboardInterrupt:
        writer.write(partial=True)
        raise


def run_benchmark(
    config: BenchmarkConfig,
    methods: list[InteractiveModel] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[SampleResult], None] | None = None,
    cancel: threading.Event | None = None,
    existing: str = "refuse",
) -> dict:
    """Run to the end (or until ``cancel``) and return the summary; the report is on disk."""
    summary: dict = {}
    for event in iter_benchmark(config, methods, cancel, existing):
        for result in event.results:
            if on_result is not None:
                on_result(result)
        if progress is not None:
            progress(event.done, event.total)
        summary = event.summary
    return summary

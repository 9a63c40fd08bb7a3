"""One benchmark run: dataset + methods (model x decoder) + protocol -> report folder.

Used by ``napari-sam-histo benchmark`` and by the Benchmark dock. ``progress(done, total)`` and
``on_result(result)`` report as it goes; setting ``cancel`` (a ``threading.Event``) or Ctrl-C stops
it between samples and leaves a valid partial report.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .dataset import Skipped, find_pairs, load_samples
from .metrics import DEFAULT_THRESHOLDS
from .report import ReportWriter
from .runner import InteractiveModel, SamClickModel, SampleResult, run_sample


@dataclass
class BenchmarkConfig:
    dataset: str
    out_dir: str
    models: list[str] = field(default_factory=lambda: ["vit_t"])
    decoders: list[str] = field(default_factory=lambda: ["sam"])
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    max_clicks: int = 20
    full_curve: bool = False  # click max_clicks times even after the highest threshold is reached
    ritm_nof: bool = False
    instances: bool = False
    ignore_value: int | None = None
    mask_suffix: str | None = None
    limit: int | None = None
    device: str = "auto"

    @property
    def stop_iou(self) -> float | None:
        return None if self.full_curve else max(self.thresholds)


def build_methods(config: BenchmarkConfig) -> list[InteractiveModel]:
    """One ``SamClickModel`` per (model, decoder); decoders of one model share its embeddings."""
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..models.registry import load_model

    methods = []
    for model_name in config.models:
        model = load_model(model_name, config.device)
        cache = EmbeddingCache()
        for decoder in config.decoders:
            label = decoder if decoder in ("sam", "modified") else Path(decoder).stem
            methods.append(SamClickModel(Predictor(model, decoder, cache=cache), f"{model.name}+{label}"))
    return methods


def run_benchmark(
    config: BenchmarkConfig,
    methods: list[InteractiveModel] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[SampleResult], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """Run and write the report; returns the summary (``partial`` when stopped early)."""
    pairs = find_pairs(config.dataset, config.mask_suffix, config.limit)
    methods = methods if methods is not None else build_methods(config)
    writer = ReportWriter(config.out_dir, [m.name for m in methods], config.thresholds, config.max_clicks,
                          config.ritm_nof, config={**asdict(config), "thresholds": list(config.thresholds)})
    partial = True
    try:
        for done, pair in enumerate(pairs):
            if cancel is not None and cancel.is_set():
                break
            started = time.perf_counter()
            samples = list(load_samples(pair, config.instances, config.ignore_value))
            load_s = time.perf_counter() - started
            for sample in samples:
                for method in methods:
                    if isinstance(sample, Skipped):
                        writer.skip(method.name, sample.sample_id, sample.reason)
                        continue
                    result = run_sample(method, sample, config.max_clicks, config.stop_iou, load_s)
                    writer.add(result, method.encoder_calls)
                    if on_result is not None:
                        on_result(result)
                load_s = 0.0  # loading is counted once per image, with its first sample
            if progress is not None:
                progress(done + 1, len(pairs))
            if done % 10 == 9:
                writer.write(partial=True)
        else:
            partial = False
    except KeyboardInterrupt:
        writer.write(partial=True)
        raise
    return writer.write(partial=partial)

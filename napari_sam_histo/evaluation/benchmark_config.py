"""What a benchmark run is (``BenchmarkConfig``), the methods built from it (``build_methods``) and
what a run yields after each image (``BenchmarkEvent``): shared by the run in one process
(``benchmark``) and the run on a dask cluster (``distributed_benchmark``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .metrics import DEFAULT_THRESHOLDS
from .runner import SamClickModel, SampleResult


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
    components: bool = False  # each connected region of a binary mask is a sample
    ignore_value: int | None = None
    mask_suffix: str | None = None
    limit: int | None = None
    mask_prompts: tuple[bool, ...] = (True,)  # True: previous logits as mask prompt; False: points only
    first_masks: tuple[str, ...] = ("iou",)  # how the first click's candidate is chosen (engine.session)
    # True: a decode that breaks the clicks gives way to an alternative (engine.session, the product's
    # behaviour); False: SAM's usual decode whatever it does, as "/no-fallback" methods
    honour_clicks: tuple[bool, ...] = (True,)
    stride: int = 1  # every stride-th image (sorted by name): a spread-out subset of a big dataset
    device: str = "auto"
    precision: str = "auto"  # the decoder's: auto (bf16 where native), fp32 or bf16
    embedding_store: str | None = None  # a folder: embeddings kept on disk across runs
    embedding_store_dtype: str = "float32"  # float16 halves the store; embeddings then differ slightly
    # dask.distributed: "local" (a LocalCluster of ``workers`` processes) or a scheduler's address;
    # None runs in this process. Either way the same report (``distributed_benchmark``).
    scheduler: str | None = None
    workers: int | None = None  # a LocalCluster's processes (None: one per core; one with a GPU)

    @property
    def stop_iou(self) -> float | None:
        return None if self.full_curve else max(self.thresholds)


def build_methods(config: BenchmarkConfig) -> list[SamClickModel]:
    """One ``SamClickModel`` per (model, decoder, mask prompt, first-mask rule, fallback);
    decoders of one model share its embeddings."""
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..models.registry import load_model
    from ..models.shipped import DECODER_NAMES
    from .runtime import device_name

    store = config.embedding_store
    methods = []
    for model_name in config.models:
        model = load_model(model_name, config.device)
        if store is None:
            cache, key_tag = EmbeddingCache(), ""
        else:
            cache = EmbeddingCache(store_dir=Path(store).expanduser(), store_dtype=config.embedding_store_dtype)
            key_tag = f"|benchmark:{model.device.type}:{device_name(model.device)}:{config.embedding_store_dtype}"
        for decoder in config.decoders:
            label = decoder if decoder in DECODER_NAMES else Path(decoder).stem
            predictor = Predictor(model, decoder, cache=cache, precision=config.precision)
            for mask_prompt in config.mask_prompts:
                for first_mask in config.first_masks:
                    for honour in config.honour_clicks:
                        name = (f"{model.name}+{label}" + ("" if mask_prompt else "/points")
                                + ("" if first_mask == "iou" else f"/first={first_mask}")
                                + ("" if honour else "/no-fallback"))
                        methods.append(SamClickModel(predictor, name, mask_prompt, key_tag=key_tag,
                                                     first_mask=first_mask, honour_clicks=honour))
    return methods


@dataclass
class BenchmarkEvent:
    """What ``iter_benchmark`` yields after each image: progress, the results so far, the summary."""

    done: int
    total: int
    results: list[SampleResult]
    summary: dict

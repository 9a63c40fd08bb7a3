"""What a training run is asked to do (``TrainConfig``: data, scenario, the paper's schedule and
loss, validation, device), and its learning rate per epoch. ``trainer.Trainer`` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .nfl_loss import DEFAULT_ALPHA, DEFAULT_GAMMA


@dataclass
class TrainConfig:
    datasets: list[str]  # split into train/val by group (unless ``val`` is given)
    out_dir: str
    scenario: str = "modified"
    model: str = "vit_t"
    extra_train: list[str] = field(default_factory=list)  # training only, never validated
    components: list[str] = field(default_factory=list)  # training only, one object per connected region
    val: list[str] = field(default_factory=list)  # explicit validation datasets (no split)
    stride: int = 1  # every stride-th pair of each dataset (a spread-out subset)
    min_object_px: int = 64  # smaller connected regions of ``components`` datasets are left out
    embedding_store: str | None = None  # on-disk float16 embedding cache shared with later runs
    validate_start: bool = False  # validate the untrained weights first (epoch 0; residual = SAM)
    val_fraction: float = 0.2
    hold_out: float = 0.0  # this fraction of the datasets' groups is kept out of training and
    # validation altogether (holdout_manifest.csv: cases to test on that the decoder never saw)
    group_by: str | None = "case_id"  # manifest column that keeps one slide's patches together
    epochs: int = 30
    lr: float = 5e-4
    lr_milestones: tuple[int, ...] = (20, 25)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    batch_size: int = 8
    max_extra_clicks: int = 3
    mask_prompt_prob: float = 0.8
    nfl_alpha: float = DEFAULT_ALPHA
    nfl_gamma: float = DEFAULT_GAMMA
    val_iou: float = 0.85
    val_max_clicks: int = 20
    val_limit: int | None = None  # validate on the first N validation patches each epoch
    limit: int | None = None  # use only the first N pairs of each dataset (quick runs)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto": bf16 autocast on CUDA; "off"
    allow_cpu: bool = False  # let encoder-training scenarios run on a CPU (tests, tiny models)
    resume: bool = False


def lr_for_epoch(config: TrainConfig, epoch: int) -> float:
    """The paper's step schedule (epochs 0-based: x0.1 from epoch 20 and again from 25)."""
    return config.lr * config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones)

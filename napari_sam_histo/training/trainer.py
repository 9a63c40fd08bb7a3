"""The training loop: simulated clicks, NFL loss, the paper's schedule, validation, checkpoints.

One step (Kim et al. §2.2 following RITM's iterative training): a random first click inside each
object; then, without gradient, 0..``max_extra_clicks`` rounds in which the model predicts and a
click is sampled from each prediction's error region; the last prediction is fed back as the mask
prompt (with probability ``mask_prompt_prob``); the final prediction, restored to the patch's own
size, is scored with the Normalized Focal Loss. Each epoch ends with the benchmark engine's click
evaluation on the validation patches (NoC@85); the best epoch's weights are kept.

Determinism: shuffling and click sampling draw from ``numpy.random.default_rng([seed, epoch])``,
so a run resumed after epoch k continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CheckpointError, InputError
from ..evaluation.metrics import summarize
from .click_simulation import simulated_click_loss
from .data import TrainingPatch, load_patches, split_by_group, write_manifest
from .prompted_forward import ImageGeometry, PromptedForward
from .scenarios import get_scenario, prepare_modules
from .train_config import TrainConfig, lr_for_epoch

STATE_FORMAT = "napari-sam-histo-training-state"
STATE_FILE = "training-state.pt"


@dataclass
class TrainResult:
    out_dir: Path
    best_path: Path
    best: dict
    history: list[dict]
    steps: int


def runtime_info(device: torch.device, precision: str) -> dict:
    """Where and how a run computed: recorded with every checkpoint and history (the same device
    name and versions as a benchmark report's runtime)."""
    from ..evaluation.runtime import device_name, versions

    return {"device": device.type, "device_name": device_name(device), "precision": precision,
            **{key: str(value) for key, value in versions().items()}, "threads": torch.get_num_threads()}


class Trainer:
    """Holds the model, the trained modules, the data and the optimizer of one training run."""

    def __init__(self, config: TrainConfig, model=None, log: Callable[[str], None] = print) -> None:
        from ..models.device import pick_device
        from ..models.registry import load_model

        self.config = config
        self.log = log
        self.scenario = get_scenario(config.scenario)
        self.device = model.device if model is not None else pick_device(config.device)
        if self.scenario.trains_image_encoder and self.device.type != "cuda" and not config.allow_cpu:
            raise InputError(f"Scenario {config.scenario!r} trains the image encoder, which needs a CUDA GPU "
                             f"(none is in use here). Use 'md' or 'modified' on a CPU, or --allow-cpu to try.")
        if config.batch_size < 1 or config.epochs < 0 or config.max_extra_clicks < 0:
            raise InputError("batch size must be >= 1, epochs and max extra clicks >= 0.")
        if not math.isfinite(config.lr) or config.lr <= 0:
            raise InputError(f"learning rate must be positive, got {config.lr}")
        self.model = model if model is not None else load_model(config.model, self.device)
        self.out_dir = Path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)  # the modified decoder's new layers start the same every run
        self.decoder, self.trained = prepare_modules(self.model.sam, self.scenario)
        self.forward = PromptedForward(self.model.sam, self.decoder, self.scenario.decoder_kind)
        self.parameters = [p for m in self.trained.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        from ..models.device import bf16_is_fast

        self.amp = config.amp == "auto" and self.device.type == "cuda" and bf16_is_fast(self.device)
        self.train_patches, self.val_patches = self._load_data()
        self._features: dict[str, tuple[torch.Tensor, ImageGeometry]] = {}
        self._preprocessor = None  # a Predictor, used only for its preprocess() (encoder scenarios)
        self.epoch, self.step, self.history = 0, 0, []
        self.best: dict = {}

    # -- data ---------------------------------------------------------------------------------
    def _load_data(self) -> tuple[list[TrainingPatch], list[TrainingPatch]]:
        c = self.config
        patches: list[TrainingPatch] = []
        for dataset in c.datasets:
            patches += load_patches(dataset, c.group_by, c.limit, c.stride)[0]
        if c.hold_out > 0:
            patches, held = split_by_group(patches, c.hold_out, c.seed)
            write_manifest(self.out_dir / "holdout_manifest.csv", [p.sample.pair for p in held],
                           {"group": [p.group for p in held]})
        if c.val:
            train, val = patches, [p for d in c.val for p in load_patches(d, c.group_by, c.limit)[0]]
        else:
            train, val = split_by_group(patches, c.val_fraction, c.seed)
        for dataset in c.extra_train:
            train += load_patches(dataset, c.group_by, c.limit, c.stride)[0]
        for dataset in c.components:
            train += load_patches(dataset, c.group_by, c.limit, c.stride, components=True,
                                  min_object_px=c.min_object_px)[0]
        write_manifest(self.out_dir / "train_manifest.csv", [p.sample.pair for p in train],
                       {"group": [p.group for p in train]})
        if val:
            write_manifest(self.out_dir / "val_manifest.csv", [p.sample.pair for p in val],
                           {"group": [p.group for p in val]})
        self.log(f"train: {len(train)} patches in {len({p.group for p in train})} groups; "
                 f"validation: {len(val)} patches in {len({p.group for p in val})} groups")
        return train, val

    def _embedding_cache(self):
        from ..engine.embedding_cache import EmbeddingCache

        return EmbeddingCache(max_bytes=1 << 26, store_dir=self.config.embedding_store, store_dtype="float16")

    def _predictor(self, cache=None):
        from ..engine.predictor import Predictor
        from ..models.decoders import DecoderChoice, SingleMaskDecoder

        # validate what inference will run: an md checkpoint answers every click with token 0
        module = SingleMaskDecoder(self.decoder) if self.scenario.name == "md" else self.decoder
        choice = DecoderChoice(self.scenario.decoder_kind, module, "training", True)
        # a trained encoder changes under the optimized copy (which would then be dropped): eager
        mode = "eager" if self.scenario.trains_image_encoder else "auto"
        return Predictor(self.model, choice, cache=cache, precision="fp32", encoder_precision="fp32",
                         encoder_mode=mode)

    def precompute_embeddings(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Frozen encoder: each training image is embedded once (objects of one image share it)
        and kept in memory in float16 (2 MiB each); with ``embedding_store`` also on disk (keyed by
        image, model, weights and preprocessing), so later training runs skip the encoder. The
        benchmark's store keys also name the device, so it keeps entries of its own."""
        if not self.scenario.frozen_encoder:
            return
        predictor = self._predictor(self._embedding_cache())
        todo = list({p.sample.identity: p for p in self.train_patches
                     if p.sample.identity not in self._features}.values())
        for done, patch in enumerate(todo):
            embedding = predictor.embedding_for_array(patch.sample.image, patch.sample.identity)
            self._features[patch.sample.identity] = (
                embedding.features.to(self.device, torch.float16),
                ImageGeometry(embedding.input_size, embedding.original_size))
            if progress is not None:
                progress(done + 1, len(todo))

    def _batch_features(self, batch: list[TrainingPatch]) -> tuple[torch.Tensor, list[ImageGeometry]]:
        if self.scenario.frozen_encoder:
            entries = [self._features[p.sample.identity] for p in batch]
            return torch.cat([e[0] for e in entries]).float(), [e[1] for e in entries]
        if self._preprocessor is None:
            self._preprocessor = self._predictor()
        pixels, geometry = [], []
        for patch in batch:
            tensor, input_size, original_size = self._preprocessor.preprocess(patch.sample.image)
            pixels.append(tensor)
            geometry.append(ImageGeometry(input_size, original_size))
        with self._autocast():
            features = self.model.sam.image_encoder(torch.cat(pixels))
        return features.float(), geometry

    def _autocast(self):
        from contextlib import nullcontext

        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: list[TrainingPatch], rng: np.random.Generator) -> float:
        c = self.config
        for module in self.trained.values():
            module.train()
        features, geometry = self._batch_features(batch)
        loss = simulated_click_loss(self.forward, features, geometry, [p.sample.target for p in batch], rng,
                                    c.max_extra_clicks, c.mask_prompt_prob, c.nfl_alpha, c.nfl_gamma, self._autocast)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.step}; lower the lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.item())

    # -- validation ---------------------------------------------------------------------------
    def validate(self, cache=None) -> dict:
        """NoC@``val_iou`` etc. of the current weights, by the benchmark engine's own clicker."""
        from ..engine.embedding_cache import EmbeddingCache
        from ..evaluation.runner import SamClickModel, run_sample

        c = self.config
        patches = self.val_patches[: c.val_limit] if c.val_limit else self.val_patches
        if not patches:
            return {}
        for module in self.trained.values():
            module.eval()
        if cache is None or not self.scenario.frozen_encoder:
            cache = EmbeddingCache(max_bytes=1 << 40)  # a trained encoder changes the embeddings
        method = SamClickModel(self._predictor(cache), "validation")
        ious = [run_sample(method, p.sample, c.val_max_clicks, c.val_iou).ious for p in patches]
        summary = summarize(ious, thresholds=(c.val_iou,), max_clicks=c.val_max_clicks)
        name = f"{round(c.val_iou * 100):d}"
        return {"noc": summary[f"noc@{name}"], "nof": summary[f"nof@{name}"], "n": summary["n_samples"],
                "miou@1": summary["miou_per_click"][0], "miou@5": summary["miou_per_click"][min(4, c.val_max_clicks - 1)]}

    # -- checkpoints --------------------------------------------------------------------------
    def _trained_state(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{key}": value.detach().cpu() for name, module in self.trained.items()
                for key, value in module.state_dict().items()}

    def save_state(self) -> Path:
        """Everything ``resume`` needs, readable with ``torch.load(weights_only=True)``."""
        payload = {
            "format": STATE_FORMAT, "format_version": 1, "epoch": self.epoch, "step": self.step,
            "scenario": self.scenario.name, "base_weights_hash": self.model.weights_hash,
            "weights": self._trained_state(), "optimizer": self.optimizer.state_dict(),
            "best": json.dumps(self.best), "history": json.dumps(self.history),
            "config": json.dumps(asdict(self.config)),
        }
        path = self.out_dir / STATE_FILE
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    def load_state(self) -> None:
        from ..models.state_dict import read_checkpoint

        path = self.out_dir / STATE_FILE
        if not path.is_file():
            raise InputError(f"Nothing to resume: {path} does not exist.")
        data = read_checkpoint(path)
        if data.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a napari-sam-histo training state.")
        if data["scenario"] != self.scenario.name or data["base_weights_hash"] != self.model.weights_hash:
            raise CheckpointError(f"{path} belongs to scenario {data['scenario']!r} on weights "
                                  f"{data['base_weights_hash']}; this run is {self.scenario.name!r} on "
                                  f"{self.model.weights_hash}.")
        for name, module in self.trained.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in data["weights"].items() if k.startswith(prefix)})
        self.optimizer.load_state_dict(data["optimizer"])
        self.epoch, self.step = int(data["epoch"]), int(data["step"])
        self.best, self.history = json.loads(data["best"]), json.loads(data["history"])

    def save_best(self, metrics: dict) -> Path:
        """Frozen-encoder scenarios: our decoder checkpoint. Encoder scenarios: a whole SAM
        checkpoint (the encoder changed too), chosen as the model, not as the decoder."""
        from ..models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint

        if self.scenario.frozen_encoder:
            config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}
            # epoch 0 of --validate-start: md and residual start as SAM itself (a usable decoder);
            # the modified decoder's new layers are random until a step has been taken
            trained = self.step > 0 or self.scenario.name in ("md", "residual")
            metadata = decoder_metadata(self.scenario.decoder_kind, self.model.name, self.model.weights_hash,
                                        self.scenario.name, trained, metrics, config)
            # what the first click runs at inference: md trains token 0 alone (models/decoders.py
            # then answers the first click with it too); residual ranks SAM's three candidates
            metadata["mask_outputs"] = {"md": "single", "residual": "multimask-first"}.get(self.scenario.name, "single")
            metadata["runtime"] = runtime_info(self.device, "bf16" if self.amp else "fp32")
            return save_decoder_checkpoint(self.out_dir / "decoder-best.pt", self.decoder, metadata)
        path = self.out_dir / "model-best.pt"
        state = {k: v.detach().float().cpu() for k, v in self.model.sam.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    @property
    def best_path(self) -> Path:
        return self.out_dir / ("decoder-best.pt" if self.scenario.frozen_encoder else "model-best.pt")

    # -- the loop -----------------------------------------------------------------------------
    def run(self, on_epoch: Callable[[dict], None] | None = None, show_progress: bool = True,
            stop_after_epochs: int | None = None) -> TrainResult:
        from tqdm import tqdm

        c = self.config
        if c.resume:
            self.load_state()
            self.log(f"resumed after epoch {self.epoch} (step {self.step})")
        if self.scenario.frozen_encoder:
            images = len({p.sample.identity for p in self.train_patches})
            bar = tqdm(total=images, desc="embedding", unit="image", disable=not show_progress)
            self.precompute_embeddings(lambda done, total: bar.update(done - bar.n))
            bar.close()
        from ..engine.embedding_cache import EmbeddingCache

        val_cache = EmbeddingCache(max_bytes=1 << 40, store_dir=c.embedding_store, store_dtype="float16")
        if c.validate_start and self.epoch == 0 and not self.history:
            self._validate_untrained(val_cache, on_epoch)
        epochs_run = 0
        while self.epoch < c.epochs and (stop_after_epochs is None or epochs_run < stop_after_epochs):
            started = time.perf_counter()
            lr = lr_for_epoch(c, self.epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([c.seed, self.epoch])
            order = rng.permutation(len(self.train_patches))
            batches = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size)]
            losses = []
            bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="step", disable=not show_progress)
            for indices in bar:
                losses.append(self.train_step([self.train_patches[i] for i in indices], rng))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            bar.close()
            train_s = time.perf_counter() - started
            metrics = self.validate(val_cache)
            self.epoch += 1
            epochs_run += 1
            record = {"epoch": self.epoch, "step": self.step, "lr": lr, "loss": float(np.mean(losses)) if losses else None,
                      "train_s": round(train_s, 2), "val_s": round(time.perf_counter() - started - train_s, 2),
                      **{f"val_{k}": v for k, v in metrics.items()}}
            self._end_epoch(record, metrics, on_epoch)
        if not self.best_path.is_file():  # no validation data: keep the last weights
            self.best = {"epoch": self.epoch}
            self.save_best({})
        return TrainResult(self.out_dir, self.best_path, self.best, self.history, self.step)

    def _validate_untrained(self, val_cache, on_epoch) -> None:
        """Epoch 0: the starting weights (for ``residual``, exactly zero-shot SAM) are a candidate
        like any epoch, so a run that never beats them on the validation sources keeps them."""
        started = time.perf_counter()
        metrics = self.validate(val_cache)
        record = {"epoch": 0, "step": 0, "lr": 0.0, "loss": None, "train_s": 0.0,
                  "val_s": round(time.perf_counter() - started, 2), **{f"val_{k}": v for k, v in metrics.items()}}
        self._end_epoch(record, metrics, on_epoch)

    def _end_epoch(self, record: dict, metrics: dict, on_epoch) -> None:
        """Keep the epoch's weights if they validate best, save the resumable state, report."""
        self.history.append(record)
        if self._is_better(metrics):
            self.best = {"epoch": record["epoch"], **metrics}
            self.save_best(metrics)
        self.save_state()
        self._write_history()
        self.log(self._format_record(record))
        if on_epoch is not None:
            on_epoch(record)

    def _is_better(self, metrics: dict) -> bool:
        if not metrics:
            return False
        if not self.best or "noc" not in self.best:
            return True
        return (metrics["noc"], -metrics["miou@5"]) < (self.best["noc"], -self.best["miou@5"])

    def _write_history(self) -> None:
        with atomic_path(self.out_dir / "history.json") as tmp:
            Path(tmp).write_text(json.dumps({"config": asdict(self.config), "best": self.best,
                                             "runtime": runtime_info(self.device, "bf16" if self.amp else "fp32"),
                                             "history": self.history}, indent=1))

    def _format_record(self, r: dict) -> str:
        if r["loss"] is None:
            text = f"epoch {r['epoch']}: the starting weights, untrained"
        else:
            text = f"epoch {r['epoch']}: loss {r['loss']:.4f}, lr {r['lr']:.1e}, {r['train_s']:.0f} s"
        if "val_noc" in r:
            text += (f"; val NoC@{round(self.config.val_iou * 100)} {r['val_noc']:.2f}, NoF {r['val_nof']}, "
                     f"mIoU@1 {r['val_miou@1']:.3f}, @5 {r['val_miou@5']:.3f} ({r['val_s']:.0f} s)")
        return text


def train(config: TrainConfig, model=None, show_progress: bool = True, log: Callable[[str], None] = print,
          ) -> TrainResult:
    """Train as ``config`` says; the best weights and the resumable state end up in ``out_dir``."""
    return Trainer(config, model, log).run(show_progress=show_progress)

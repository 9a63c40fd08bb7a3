"""Training patches: image + object mask pairs from benchmark-style datasets, split by slide.

Patches cut from one slide look alike, so a validation split must keep each slide's patches on
one side: ``split_by_group`` groups patches by a manifest column (EBHI-Seg's ``case_id``) and
puts whole groups into validation. Without the column, every patch is its own group.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_path
from ..errors import InputError
from ..evaluation.dataset import PairSpec, Sample, Skipped, find_pairs, load_samples, manifest_column


@dataclass
class TrainingPatch:
    sample: Sample
    group: str  # patches of one group (slide, case) never straddle the train/val split


def load_patches(dataset: str | Path, group_by: str | None = None, limit: int | None = None,
                 stride: int = 1, components: bool = False, min_object_px: int = 0,
                 ) -> tuple[list[TrainingPatch], list[Skipped]]:
    """Every usable pair of ``dataset`` (every ``stride``-th) as one object (the whole mask), or
    with ``components`` one object per connected region of at least ``min_object_px`` pixels
    (glomeruli, glands: many objects share one image and so one embedding), with its group."""
    dataset = Path(dataset)
    pairs = find_pairs(dataset, limit=limit, stride=stride)
    groups = manifest_column(dataset, group_by)
    patches, skipped = [], []
    for pair in pairs:
        for sample in load_samples(pair, components=components):
            if isinstance(sample, Skipped):
                skipped.append(sample)
            elif components and int(sample.target.sum()) < min_object_px:
                continue
            else:
                group = groups.get(pair.stem, pair.stem)
                patches.append(TrainingPatch(sample, f"{dataset.name}/{group}"))
    if not patches:
        raise InputError(f"{dataset}: no usable image/mask pair to train on.")
    return patches, skipped


def split_by_group(patches: list[TrainingPatch], val_fraction: float, seed: int
                   ) -> tuple[list[TrainingPatch], list[TrainingPatch]]:
    """(train, val): whole groups go to validation, chosen by a seeded hash (stable across runs and
    machines), until about ``val_fraction`` of the patches are there."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = sorted({p.group for p in patches},
                    key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    sizes = dict.fromkeys(groups, 0)
    for patch in patches:
        sizes[patch.group] += 1
    wanted, chosen, count = val_fraction * len(patches), set(), 0
    for group in groups:
        if count >= wanted:
            break
        chosen.add(group)
        count += sizes[group]
    train = [p for p in patches if p.group not in chosen]
    val = [p for p in patches if p.group in chosen]
    if val_fraction > 0 and (not train or not val):
        raise InputError(f"Cannot split {len(patches)} patches in {len(groups)} groups into train and "
                         f"validation at fraction {val_fraction}; give --val or more data.")
    return train, val


def write_manifest(path: Path, pairs: list[PairSpec], extra: dict[str, list[str]] | None = None) -> None:
    """A CSV manifest (image, mask, paths relative to it) that ``benchmark`` reads."""
    seen, rows = set(), []
    for index, pair in enumerate(pairs):
        if pair.stem in seen:
            continue
        seen.add(pair.stem)
        row = {"stem": pair.stem,
               "image": os.path.relpath(pair.image_path.resolve(), path.parent.resolve()),
               "mask": os.path.relpath(pair.mask_path.resolve(), path.parent.resolve())}
        for column, values in (extra or {}).items():
            row[column] = values[index]
        rows.append(row)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["stem", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)


"""Synthetic training pairs for click segmentation: image + one target mask, made from real tissue.

Two kinds of pair, both written in the ``images/`` + ``masks/`` + ``manifest.csv`` layout that
``benchmark`` and ``train`` read:

* ``composite``: a region of one tissue texture pasted into another through a random smooth blob
  (``smooth_blob``), with a feathered border and the colours of the pasted tissue pulled towards
  those of its surroundings, so the target is defined by texture and has an indistinct border,
  like a tumour in stroma. Textures are random crops of dataset images and of slides
  (``TextureSource``), near-white background refused.
* ``crop``: a random non-square crop of a real pair (a dataset with masks) whose object covers
  ``min_fraction``..``max_fraction`` of the crop (``random_crop``); with no dataset among the
  sources, a crop of a larger composite, so the object may be cut by the crop's border.

Every pair gets H&E-style stain, brightness, contrast and saturation jitter (``stain_jitter``).
Inputs are non-square (aspect up to ``max_aspect``) so that SAM's padded strip occurs in training,
and objects cover 1-90 % of the input. Pair ``i`` of a run depends only on ``(seed, i)`` and the
sources: the same call writes the same files. ``case_id`` names the tissue a pair came from (the
background texture's slide or dataset case), so a split by ``case_id`` keeps related pairs on one
side. Core code: numpy, scipy and PIL; no Qt. The pixels of a pair: ``synthetic_images``; where
its tissue comes from: ``texture_source``; here, the pairs and the dataset written.

Run as ``python -m napari_sam_histo.training.synthetic --out DIR --n 500 --sources A.svs DATASET``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..errors import InputError, SamHistoError
from .synthetic_images import (
    MAX_FRACTION,
    MIN_FRACTION,
    aspect_shape,
    random_crop,
    resize_pixels,
    stain_jitter,
    texture_composite,
    texture_distance,
)
from .texture_source import Texture, TextureSource

KINDS = ("composite", "crop")
MANIFEST_COLUMNS = ("stem", "image", "mask", "width", "height", "fg_frac", "kind", "source", "case_id")


def _fraction_bounds(rng: np.random.Generator, low: float, high: float) -> tuple[float, float]:
    """A window around a log-uniform target object fraction, so small objects are not rare."""
    target = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return max(low, target / 2), min(high, target * 2)


def _two_textures(sources: list[TextureSource], rng: np.random.Generator, shape: tuple[int, int],
                  candidates: int = 3) -> tuple[Texture, Texture]:
    """Background and foreground textures: of ``candidates`` foregrounds (another source when there
    is one), the one least like the background, so the region is defined by a texture change.
    Both are of ``shape`` shrunk so far that none of the chosen sources is enlarged (small dataset
    images): the caller enlarges the composite, so the two textures share one sharpness and the
    region is not given away by a blur."""
    first = int(rng.integers(len(sources)))
    others = [i for i in range(len(sources)) if i != first] or [first]
    picks = [others[int(rng.integers(len(others)))] for _ in range(candidates)]
    factor = min(sources[i].fit(shape) for i in [first, *picks])
    shape = (max(8, int(shape[0] * factor)), max(8, int(shape[1] * factor)))
    background = sources[first].sample(rng, shape)
    best, best_distance = None, -1.0
    for pick in picks:
        texture = sources[pick].sample(rng, shape)
        distance = texture_distance(background.pixels, texture.pixels)
        if distance > best_distance:
            best, best_distance = texture, distance
    return background, best


def make_pair(sources: list[TextureSource], rng: np.random.Generator, kind: str,
              sizes: tuple[int, int] = (256, 1024), max_aspect: float = 2.0,
              min_fraction: float = MIN_FRACTION, max_fraction: float = MAX_FRACTION,
              stain: float = 1.0) -> dict:
    """One synthetic pair of ``kind`` ('composite' or 'crop'): a dict with image, mask, source,
    case_id, kind."""
    low, high = int(min(sizes)), int(max(sizes))
    long_side = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
    bounds = _fraction_bounds(rng, min_fraction, max_fraction)
    if kind == "composite":
        shape = aspect_shape(long_side, rng, max_aspect)
        background, foreground = _two_textures(sources, rng, shape)
        image, mask = texture_composite(background.pixels, foreground.pixels, rng,
                                        fraction=float(np.sqrt(bounds[0] * bounds[1])))
        image, mask = resize_pixels(image, shape), resize_pixels(mask, shape, mask=True)
        return _finish(image, mask, rng, stain, kind, f"{background.source}|{foreground.source}",
                       background.case_id)
    if kind != "crop":
        raise InputError(f"Unknown kind of synthetic pair {kind!r}; expected one of {', '.join(KINDS)}.")
    with_masks = [source for source in sources if source.has_masks]
    for _ in range(8):
        if with_masks:
            source = with_masks[int(rng.integers(len(with_masks)))]
            loaded = source.pair(rng)
            if loaded is None:
                continue
            image, mask, spec = loaded
            name, case = f"{source.name}:{spec.stem}", source.case_of(spec.stem)
            # magnification jitter: the pair is enlarged or reduced before it is cropped
            zoom = float(np.clip(long_side / max(image.shape[:2]), 0.5, 2.0))
            shape = (max(8, round(image.shape[0] * zoom)), max(8, round(image.shape[1] * zoom)))
            image, mask = resize_pixels(image, shape), resize_pixels(mask, shape, mask=True)
        else:  # no real masks: a crop of a composite twice the size, its object cut by the border
            shape = aspect_shape(min(2 * long_side, 2048), rng, max_aspect)
            background, foreground = _two_textures(sources, rng, shape)
            image, mask = texture_composite(background.pixels, foreground.pixels, rng,
                                            fraction=float(rng.uniform(0.05, 0.6)))
            image, mask = resize_pixels(image, shape), resize_pixels(mask, shape, mask=True)
            name, case = f"{background.source}|{foreground.source}", background.case_id
        crop = random_crop(image, mask, rng, min_side=min(low, long_side), max_side=long_side,
                           min_fraction=bounds[0], max_fraction=bounds[1], max_aspect=max_aspect, component=True,
                           min_visible=0.3)
        if crop is None:
            crop = random_crop(image, mask, rng, min_side=min(low, long_side), max_side=long_side,
                               min_fraction=min_fraction, max_fraction=max_fraction, max_aspect=max_aspect,
                               component=True, min_visible=0.3)
        if crop is not None:
            return _finish(crop[0], crop[1], rng, stain, kind, name, case)
    raise InputError(f"No crop with an object covering {min_fraction:.0%}-{max_fraction:.0%} was found in "
                     f"{', '.join(str(s.path) for s in (with_masks or sources))} after 8 pairs; "
                     f"are the masks empty or full?")


def _finish(image, mask, rng, stain, kind, source, case_id) -> dict:
    return {"image": stain_jitter(image, rng, stain), "mask": np.asarray(mask, dtype=bool), "kind": kind,
            "source": source, "case_id": case_id}


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def make_synthetic_dataset(out_dir: str | Path, sources: Sequence[str | Path], n: int, seed: int = 0,
                           sizes: tuple[int, int] = (256, 1024), kinds: Sequence[str] = KINDS,
                           max_aspect: float = 2.0, min_fraction: float = MIN_FRACTION,
                           max_fraction: float = MAX_FRACTION, stain: float = 1.0, min_tissue: float = 0.75,
                           overwrite: bool = False, progress=None) -> Path:
    """Write ``n`` synthetic pairs into ``out_dir``: ``images/NAME.png``, ``masks/NAME.png``
    (uint8 0/255) and ``manifest.csv`` (``MANIFEST_COLUMNS``), each file written atomically, the
    manifest last. ``sources`` are dataset folders (or CSV manifests) and slide or image files;
    ``kinds`` alternate pair by pair. Pair ``i`` depends only on ``(seed, i)``; the run is
    deterministic for a seed. Returns the manifest's path. ``InputError`` names a source that does
    not exist, cannot be read or yields no tissue, and refuses an ``out_dir`` that holds a
    manifest already unless ``overwrite``."""
    out_dir = Path(out_dir)
    n = int(n)
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}.")
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise InputError(f"Unknown kind of synthetic pair {kind!r}; expected one of {', '.join(KINDS)}.")
    if not kinds:
        raise InputError("Give at least one kind of synthetic pair (composite, crop).")
    low, high = int(min(sizes)), int(max(sizes))
    if low < 32:
        raise InputError(f"The smallest side must be at least 32 pixels, not {low}.")
    if not 0 < min_fraction < max_fraction <= 1:
        raise InputError(f"The object fractions must satisfy 0 < min < max <= 1, not {min_fraction}, {max_fraction}.")
    if not sources:
        raise InputError("Give at least one source: a dataset folder or a slide file.")
    manifest = out_dir / "manifest.csv"
    if manifest.exists() and not overwrite:
        raise InputError(f"{manifest} exists already; choose another folder or allow overwriting.")
    opened = [TextureSource(path, min_tissue=min_tissue) for path in sources]
    try:
        probe = np.random.default_rng([int(seed), 2 ** 31])
        for source in opened:  # refuse a blank source before anything is written
            source.sample(probe, (low, low))
        rows = []
        for index in range(n):
            rng = np.random.default_rng([int(seed), index])
            kind = kinds[index % len(kinds)]
            pair = make_pair(opened, rng, kind, (low, high), max_aspect, min_fraction, max_fraction, stain)
            stem = f"synth_{index:05d}_{kind}"
            _save_png(out_dir / "images" / f"{stem}.png", pair["image"])
            _save_png(out_dir / "masks" / f"{stem}.png", pair["mask"].astype(np.uint8) * 255)
            height, width = pair["mask"].shape
            rows.append({"stem": stem, "image": f"images/{stem}.png", "mask": f"masks/{stem}.png",
                         "width": width, "height": height, "fg_frac": f"{pair['mask'].mean():.4f}",
                         "kind": kind, "source": pair["source"], "case_id": pair["case_id"]})
            if progress is not None:
                progress(index + 1, n)
        with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(MANIFEST_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    finally:
        for source in opened:
            source.close()
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sam-histo synth",
        description="Write synthetic click-segmentation pairs (texture composites and random crops) "
                    "made from dataset folders and slides, in the layout benchmark and train read.")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``napari-sam-histo synth`` (also ``python -m napari_sam_histo.training.synthetic``)."""
    parser.add_argument("--out", required=True, help="output folder (images/, masks/, manifest.csv)")
    parser.add_argument("--n", type=int, default=100, help="number of pairs (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same pairs")
    parser.add_argument("--sources", nargs="+", required=True,
                        help="dataset folders (images/ + masks/, or a manifest CSV) and slide or image files")
    parser.add_argument("--min-side", type=int, default=256, help="shortest long side of a pair (default 256)")
    parser.add_argument("--max-side", type=int, default=1024, help="longest long side of a pair (default 1024)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                        help="kinds of pair, taken in turn (default: composite crop)")
    parser.add_argument("--stain", type=float, default=1.0, help="stain/colour jitter strength, 0 for none")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    if args.min_side > args.max_side:
        print(f"Error: --min-side {args.min_side} is larger than --max-side {args.max_side}.", file=sys.stderr)
        return 2
    try:
        manifest = make_synthetic_dataset(
            args.out, args.sources, args.n, args.seed, sizes=(args.min_side, args.max_side), kinds=args.kinds,
            stain=args.stain, overwrite=args.overwrite,
            progress=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True))
    except SamHistoError as err:
        print(f"\nError: {err}", file=sys.stderr)
        return 2
    print(f"\nWrote {args.n} pairs: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

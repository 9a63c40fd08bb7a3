"""Benchmark datasets: image + target-mask pairs, found in a folder or listed in a manifest.

Layouts:
* a folder with ``images/`` and ``masks/`` holding files of the same stem (what ``prepare`` writes);
* a flat folder where the mask of ``X.png`` is ``X<mask_suffix>.<ext>`` (e.g. ``_label``);
* a CSV manifest with ``image`` and ``mask`` columns (paths relative to the manifest, or absolute).

One sample is one image and one binary target. With ``instances=True`` a label image gives one
sample per label (the other labels count as background); with ``components=True`` each connected
region of a binary mask is one sample (e.g. GlaS, whose masks hold many glands as one value). Pixels equal to ``ignore_value`` are
left out of clicks and IoU. A pair that cannot be used is a skipped sample with its reason; the
run goes on; so is an image that has no mask (it is listed with the reason, never dropped unseen).
Reasons are plain sentences a pathologist can act on, naming the file and what is wrong.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..slides.identity import file_identity

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class PairSpec:
    """One image file and its mask file (``None``: the image has no mask; it becomes a skipped sample)."""

    stem: str
    image_path: Path
    mask_path: Path | None


@dataclass
class Sample:
    sample_id: str
    pair: PairSpec
    image: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) bool
    ignore: np.ndarray | None  # (H, W) bool
    identity: str  # the image file's identity: instances of one image share its embedding


@dataclass
class Skipped:
    sample_id: str
    pair: PairSpec
    reason: str


def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def find_pairs(path: str | Path, mask_suffix: str | None = None, limit: int | None = None,
               stride: int = 1) -> list[PairSpec]:
    """The dataset's image/mask pairs, sorted by stem (deterministic); every ``stride``-th of them
    (a spread-out subset), then the first ``limit``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Dataset not found: {path}")
    if path.is_file():
        pairs = _pairs_from_manifest(path)
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        images, masks = _by_stem(path / "images"), _by_stem(path / "masks")
        pairs = [PairSpec(stem, images[stem], masks.get(stem)) for stem in sorted(images)]
    elif mask_suffix:
        files = _by_stem(path)
        pairs = [PairSpec(stem, files[stem], files.get(stem + mask_suffix)) for stem in sorted(files)
                 if not stem.endswith(mask_suffix)]
    else:
        raise InputError(f"{path}: expected a folder with images/ and masks/, a CSV manifest, or a flat "
                         f"folder with --mask-suffix naming the masks.")
    if not any(pair.mask_path is not None for pair in pairs):
        raise InputError(f"{path}: no image/mask pairs found.")
    pairs = pairs[:: max(int(stride), 1)]
    return pairs[:limit] if limit else pairs


def _pairs_from_manifest(path: Path) -> list[PairSpec]:
    try:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"Cannot read the manifest {path}: {err}") from err
    if not rows or not {"image", "mask"} <= set(rows[0]):
        raise InputError(f"{path}: a manifest needs 'image' and 'mask' columns.")
    base = path.parent
    return [PairSpec(row.get("stem") or Path(row["image"]).stem, base / row["image"], base / row["mask"])
            for row in rows]


def manifest_column(dataset: Path, column: str | None) -> dict[str, str]:
    """stem -> value of ``column`` (a case or slide id, say) in the dataset's manifest.csv (or in the
    manifest ``dataset``): empty when there is no manifest or no such column."""
    manifest = dataset / "manifest.csv" if dataset.is_dir() else dataset
    if column is None or not manifest.is_file():
        return {}
    with open(manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or column not in rows[0]:
        return {}
    key = "stem" if "stem" in rows[0] else None
    return {(row[key] if key else Path(row["image"]).stem): row[column] for row in rows}


def _read(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def _why_unreadable(path: Path, err: Exception) -> str:
    """What went wrong reading ``path``, in words; not the library's message, which names its
    plugins and exception classes rather than what the user can do."""
    if isinstance(err, FileNotFoundError) or not path.exists():
        return f"{path} does not exist"
    if isinstance(err, PermissionError):
        return f"{path} may not be read (permission denied)"
    return f"{path} is damaged or not in an image format that can be read (PNG, JPEG, TIFF, BMP)"


def load_samples(pair: PairSpec, instances: bool = False, ignore_value: int | None = None,
                 components: bool = False) -> Iterator[Sample | Skipped]:
    """The samples of one pair (one, or one per instance), or a ``Skipped`` with the reason."""
    from ..slides.rgb import to_rgb_uint8

    if pair.mask_path is None:
        yield Skipped(pair.stem, pair, f"no mask was found for the image {pair.image_path}")
        return
    try:
        raw_image = _read(pair.image_path)
    except Exception as err:  # noqa: BLE001 - image libraries raise many types for unreadable files
        yield Skipped(pair.stem, pair, f"the image file could not be read: {_why_unreadable(pair.image_path, err)}")
        return
    try:
        mask = _read(pair.mask_path)
    except Exception as err:  # noqa: BLE001 - as for the image: many types for unreadable files
        yield Skipped(pair.stem, pair, f"the mask file could not be read: {_why_unreadable(pair.mask_path, err)}")
        return
    if raw_image.dtype != np.uint8:
        yield Skipped(pair.stem, pair, f"the image is {raw_image.dtype}, not 8-bit; convert it to 8-bit to "
                                       f"benchmark it")
        return
    if mask.ndim == 3:
        if np.all(mask == mask[..., :1]):
            mask = mask[..., 0]
        else:
            yield Skipped(pair.stem, pair, "the mask has colour channels; expected a grey or label image")
            return
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        yield Skipped(pair.stem, pair, f"the mask is {mask.dtype}; expected whole-number labels")
        return
    if raw_image.shape[:2] != mask.shape:
        yield Skipped(pair.stem, pair, f"the image is {raw_image.shape[1]}x{raw_image.shape[0]} but the mask is "
                                       f"{mask.shape[1]}x{mask.shape[0]}")
        return
    try:
        image = to_rgb_uint8(raw_image, pair.image_path.name)
    except InputError as err:
        yield Skipped(pair.stem, pair, str(err))
        return
    ignore = (mask == ignore_value) if ignore_value is not None else None
    if ignore is not None and not ignore.any():
        ignore = None
    labels = mask.astype(np.int64)
    if ignore is not None:
        labels[ignore] = 0
    identity = file_identity(pair.image_path)
    if components:
        from scipy.ndimage import label as label_components

        labels, _ = label_components(labels > 0)
    if instances or components:
        ids = [int(i) for i in np.unique(labels) if i != 0]
        if not ids:
            yield Skipped(pair.stem, pair, "the mask is empty: no instance to segment")
        for instance in ids:
            yield _checked(Sample(f"{pair.stem}#{instance}", pair, image, labels == instance, ignore, identity))
    else:
        yield _checked(Sample(pair.stem, pair, image, labels > 0, ignore, identity))


def _checked(sample: Sample) -> Sample | Skipped:
    valid = sample.target if sample.ignore is None else sample.target & ~sample.ignore
    if not valid.any():
        return Skipped(sample.sample_id, sample.pair, "the mask is empty: no object to segment")
    background = ~sample.target if sample.ignore is None else ~sample.target & ~sample.ignore
    if not background.any():
        return Skipped(sample.sample_id, sample.pair, "the mask has no background: the whole image is the object")
    return sample

"""Cut benchmark patches from a WSI and its tumor annotation, as Kim et al. §3.1 did.

At a chosen magnification (5x, 10x, ...), the slide is covered by non-overlapping square patches
(400x400 by default); a patch is kept when its tumor fraction is within [0.2, 0.8]; each kept patch
is written as ``images/<stem>.png`` + ``masks/<stem>.png`` (0/255) and listed in ``manifest.csv``
with its source slide, level, level-0 box and tumor fraction. A folder gathers the patches of
several slides: preparing a slide into it replaces that slide's rows of the manifest and keeps the
others'. The fraction is computed from the polygons first; pixels are read only for kept patches,
one patch at a time, from the pyramid level nearest above the target scale: the whole slide is
never in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.geometry import Polygon, rasterize
from ..atomic import atomic_path
from ..errors import InputError
from ..slides.boxes import TileBox
from ..slides.source import ImageSource

MANIFEST_COLUMNS = ["stem", "image", "mask", "source_slide", "magnification", "level", "downsample",
                    "x0", "y0", "width0", "height0", "tumor_fraction"]


@dataclass
class PrepareResult:
    kept: int
    candidates: int
    out_dir: Path


def base_magnification(source: ImageSource, override: float | None = None) -> float:
    """The slide's scan magnification: given, the slide's objective power, or 10 / mpp."""
    if override:
        return float(override)
    power = source.properties.get("openslide.objective-power")
    try:
        if power:
            return float(power)
    except ValueError:
        pass
    if source.mpp:
        return 10.0 / source.mpp[0]  # the usual convention: 0.25 um/px ~ 40x, 0.5 um/px ~ 20x
    raise InputError(f"{source.name}: the slide states neither its objective power nor its pixel size; "
                     f"give its scan magnification (--base-magnification).")


def _read_scaled(source: ImageSource, x0: float, y0: float, downsample: float, size: int) -> tuple[np.ndarray, int]:
    """Pixels of the level-0 box (x0, y0, size*ds, size*ds) at ``downsample``, read from the
    coarsest level that is still at least as fine; returns (pixels, that level)."""
    from skimage.transform import resize

    level = max((i for i, d in enumerate(source.level_downsamples) if d <= downsample * 1.001), default=0)
    level_ds = source.level_downsamples[level]
    width, height = source.level_dimensions[level]
    lx, ly = int(round(x0 / level_ds)), int(round(y0 / level_ds))
    side = int(round(size * downsample / level_ds))
    side_w, side_h = min(side, width - lx), min(side, height - ly)
    region = source.read_region(TileBox(level, lx, ly, side_w, side_h, level_ds))
    if region.shape[:2] != (size, size):
        scale_h, scale_w = side_h / side, side_w / side
        target = (max(1, round(size * scale_h)), max(1, round(size * scale_w)))
        if region.shape[:2] != target:
            region = (resize(region, target, order=1, anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8)
        padded = np.full((size, size, 3), 255, np.uint8)
        padded[: target[0], : target[1]] = region
        region = padded
    return region, level


def prepare_patches(
    source: ImageSource,
    polygons: list[Polygon],
    out_dir: str | Path,
    magnification: float,
    patch_size: int = 400,
    min_fraction: float = 0.2,
    max_fraction: float = 0.8,
    base: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    out_dir = Path(out_dir)
    if not 0 <= min_fraction <= max_fraction <= 1:
        raise InputError(f"Tumor fraction range [{min_fraction}, {max_fraction}] must lie within [0, 1].")
    downsample = base_magnification(source, base) / float(magnification)
    if downsample < 1 - 1e-6:
        raise InputError(f"{source.name} was scanned at {base_magnification(source, base):g}x; "
                         f"{magnification:g}x would need upsampling.")
    width0, height0 = source.level_dimensions[0]
    step0 = patch_size * downsample  # one patch, in level-0 pixels
    columns, rows = int(width0 // step0), int(height0 // step0)  # whole patches only
    if columns == 0 or rows == 0:
        raise InputError(f"{source.name} is smaller than one {patch_size}px patch at {magnification:g}x.")
    stem_base = Path(source.name).stem
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows_out = []
    candidates = 0
    for row in range(rows):
        for column in range(columns):
            x0, y0 = column * step0, row * step0
            mask = rasterize(polygons, (x0, y0), downsample, (patch_size, patch_size))
            fraction = float(mask.mean())
            if fraction > 0:
                candidates += 1
            if not (min_fraction <= fraction <= max_fraction) or fraction == 0:
                continue
            stem = f"{stem_base}_x{int(round(x0))}_y{int(round(y0))}"
            image, level = _read_scaled(source, x0, y0, downsample, patch_size)
            _write_png(out_dir / "images" / f"{stem}.png", image)
            _write_png(out_dir / "masks" / f"{stem}.png", (mask * 255).astype(np.uint8))
            rows_out.append({
                "stem": stem, "image": f"images/{stem}.png", "mask": f"masks/{stem}.png",
                "source_slide": source.name, "magnification": f"{magnification:g}", "level": level,
                "downsample": f"{downsample:.4f}", "x0": int(round(x0)), "y0": int(round(y0)),
                "width0": int(round(step0)), "height0": int(round(step0)), "tumor_fraction": f"{fraction:.4f}",
            })
        if progress is not None:
            progress(row + 1, rows)
    others = [row for row in _manifest_rows(out_dir / "manifest.csv") if row.get("source_slide") != source.name]
    with atomic_path(out_dir / "manifest.csv") as tmp:
        with open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(others + rows_out)
    return PrepareResult(len(rows_out), candidates, out_dir)


def _manifest_rows(path: Path) -> list[dict]:
    """The rows of a manifest ``prepare`` wrote before (none when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames != MANIFEST_COLUMNS:
            raise InputError(f"{path}: a manifest with other columns than prepare writes; "
                             f"choose an empty folder for --out.")
        return list(reader)


def _write_png(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=".png")

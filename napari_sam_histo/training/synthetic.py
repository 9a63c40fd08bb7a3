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
side. Core code: numpy, scipy and PIL; no Qt.

Run as ``python -m napari_sam_histo.training.synthetic --out DIR --n 500 --sources A.svs DATASET``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..atomic import atomic_path
from ..errors import InputError, SamHistoError

MIN_FRACTION, MAX_FRACTION = 0.01, 0.9
KINDS = ("composite", "crop")
MANIFEST_COLUMNS = ("stem", "image", "mask", "width", "height", "fg_frac", "kind", "source", "case_id")
# Ruifrok & Johnston haematoxylin, eosin, DAB optical densities (the rows skimage's rgb2hed uses).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


# ----------------------------------------------------------------------------- shapes and images

def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def smooth_blob(shape: tuple[int, int], rng: np.random.Generator, fraction: float,
                roughness: float = 0.6) -> np.ndarray:
    """A random smooth connected region without holes covering about ``fraction`` (clipped to
    1-90 %) of an image of ``shape``: low-pass noise plus a Gaussian bump at a random place,
    thresholded so the region has the asked area, then its largest component, holes filled.
    ``roughness`` (0..1) weighs the noise against the bump: 0 gives an ellipse-like region,
    1 a ragged one. The region may touch the image border (an object cut by the crop)."""
    height, width = int(shape[0]), int(shape[1])
    if height < 4 or width < 4:
        raise InputError(f"A blob needs an image of at least 4x4 pixels, not {width}x{height}.")
    fraction = float(np.clip(fraction, MIN_FRACTION, MAX_FRACTION))
    scale = min(1.0, 128.0 / max(height, width))  # the field is made small, then enlarged: smooth and cheap
    small = (max(4, round(height * scale)), max(4, round(width * scale)))
    yy, xx = np.mgrid[0:small[0], 0:small[1]].astype(float)
    radius = np.sqrt(fraction * small[0] * small[1] / np.pi)  # the bump's radius for the asked area
    centre = [rng.uniform(min(radius, n / 2) * 0.6, n - min(radius, n / 2) * 0.6) for n in small]
    stretch = rng.uniform(0.6, 1.6)  # an elongated, rotated bump
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / stretch
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * stretch
    bump = np.exp(-(u ** 2 + v ** 2) / (2 * max(radius, 1.0) ** 2))
    noise = ndimage.gaussian_filter(rng.standard_normal(small), sigma=max(1.0, radius / 2.5), mode="wrap")
    noise += 0.5 * ndimage.gaussian_filter(rng.standard_normal(small), sigma=max(1.0, radius / 6), mode="wrap")
    noise /= noise.std() + 1e-9
    field = (1 - roughness) * bump / (bump.std() + 1e-9) + roughness * noise
    field = ndimage.zoom(field, (height / small[0], width / small[1]), order=1, mode="nearest")[:height, :width]
    if field.shape != (height, width):  # zoom rounds its output size
        field = np.pad(field, ((0, height - field.shape[0]), (0, width - field.shape[1])), mode="edge")
    # The threshold that gives the asked area to the largest hole-free component (bisection on a
    # sub-sample of the field: the area is monotone in the threshold up to component splits).
    # The threshold tried whose area is closest wins.
    step = max(1, int(np.ceil(max(height, width) / 256)))
    coarse = field[::step, ::step]
    low, high = float(coarse.min()), float(coarse.max())
    best, best_error = (low + high) / 2, np.inf
    for _ in range(16):
        middle = (low + high) / 2
        area = ndimage.binary_fill_holes(_largest_component(coarse > middle)).mean()
        if abs(area - fraction) < best_error:
            best, best_error = middle, abs(area - fraction)
        low, high = (middle, high) if area > fraction else (low, middle)
    blob = ndimage.binary_fill_holes(_largest_component(field > best))
    if not blob.any():  # a degenerate field: fall back to the bump's peak
        blob[int(np.clip(centre[0] / scale, 0, height - 1)), int(np.clip(centre[1] / scale, 0, width - 1))] = True
    return blob


def _features(image: np.ndarray) -> np.ndarray:
    """Colour and texture statistics of an RGB image (to pick textures that differ)."""
    grey = image.astype(float).mean(axis=2)
    fine = np.abs(ndimage.laplace(grey))
    coarse = np.abs(ndimage.laplace(ndimage.gaussian_filter(grey, 3)))
    stats = [image.reshape(-1, 3).mean(0) / 255, image.reshape(-1, 3).std(0) / 64,
             [fine.mean() / 20, coarse.mean() / 3, ndimage.gaussian_filter(grey, 4).std() / 30]]
    return np.concatenate(stats)


def texture_distance(first: np.ndarray, second: np.ndarray) -> float:
    """How unlike two textures are (0: the same statistics), colour and texture alike."""
    return float(np.linalg.norm(_features(first) - _features(second)))


def _match_colours(foreground: np.ndarray, background: np.ndarray, amount: float) -> np.ndarray:
    """``foreground`` with its per-channel mean and spread moved ``amount`` (0..1) towards
    ``background``'s, so the region does not stand out by colour alone."""
    fg, bg = foreground.reshape(-1, 3).astype(float), background.reshape(-1, 3).astype(float)
    fg_mean, bg_mean = fg.mean(0), bg.mean(0)
    fg_std, bg_std = fg.std(0) + 1e-6, bg.std(0) + 1e-6
    gain = (1 - amount) + amount * bg_std / fg_std
    out = (foreground.astype(float) - fg_mean) * gain + fg_mean + amount * (bg_mean - fg_mean)
    return np.clip(out, 0, 255)


def texture_composite(background: np.ndarray, foreground: np.ndarray, rng: np.random.Generator,
                      fraction: float | None = None, feather: float | None = None,
                      match: float | None = None, roughness: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``foreground`` tissue seen through a smooth blob in ``background`` tissue (two RGB uint8
    crops of one size). The blob (``smooth_blob``, ``fraction`` of the image; random 1-90 %
    log-uniform when ``None``) is blended with an alpha that fades over about ``feather`` pixels
    each side of its border (random 2-8 when ``None``) so no hard edge gives the region away, and
    the foreground's colours are pulled ``match`` (0..1; random 0.3-0.9) towards the background's.
    Returns (image uint8 HxWx3, mask bool): the mask is the blob, exactly where the foreground
    weighs more than half."""
    background, foreground = np.asarray(background), np.asarray(foreground)
    if background.shape != foreground.shape or background.ndim != 3 or background.shape[2] != 3:
        raise InputError(f"A composite needs two RGB images of one size, not {background.shape} and "
                         f"{foreground.shape}.")
    if fraction is None:
        fraction = float(np.exp(rng.uniform(np.log(MIN_FRACTION * 2), np.log(MAX_FRACTION))))
    feather = float(rng.uniform(2.0, 8.0) if feather is None else feather)
    match = float(rng.uniform(0.3, 0.9) if match is None else match)
    roughness = float(rng.uniform(0.3, 0.8) if roughness is None else roughness)
    blob = smooth_blob(background.shape[:2], rng, fraction, roughness=roughness)
    # alpha from the signed distance to the blob's border: above one half exactly on the blob,
    # so the mask is the blob (one piece, no holes) and the foreground fades out over ~feather px
    signed = ndimage.distance_transform_edt(blob) - ndimage.distance_transform_edt(~blob)
    alpha = (0.5 * (1 + np.tanh(signed / max(feather, 1e-3)))).astype(np.float32)
    mask = blob
    pasted = _match_colours(foreground, background, match)
    image = background.astype(np.float32) * (1 - alpha[..., None]) + pasted * alpha[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def stain_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """H&E-style colour augmentation of an RGB uint8 image: each stain's concentration (Ruifrok's
    HED optical densities, as ``skimage.color.rgb2hed``, but inverted exactly) scaled by
    1 +- 0.2·strength and shifted by +-0.02·strength (DAB a third of that), then brightness
    (+-0.06), contrast (x 1 +- 0.15) and saturation (x 1 +- 0.2), each times ``strength``. ``strength`` 0 returns
    the image unchanged; the result depends only on the image, ``rng``'s state and ``strength``."""
    image = np.asarray(image)
    strength = float(strength)
    if strength <= 0:
        return image.copy()
    rgb = image.astype(np.float64)
    density = -np.log((rgb + 1.0) / 256.0)
    stains = density @ _HED_FROM_RGB
    alpha = 1 + rng.uniform(-0.2, 0.2, 3) * strength
    beta = rng.uniform(-0.02, 0.02, 3) * strength
    alpha[2], beta[2] = 1 + (alpha[2] - 1) * 0.3, beta[2] * 0.3  # DAB is all but absent in H&E
    rgb = 256.0 * np.exp(-((stains * alpha + beta) @ _RGB_FROM_HED)) - 1.0
    brightness = rng.uniform(-0.06, 0.06) * strength * 255
    contrast = 1 + rng.uniform(-0.15, 0.15) * strength
    saturation = 1 + rng.uniform(-0.2, 0.2) * strength
    mean = rgb.mean()
    rgb = (rgb - mean) * contrast + mean + brightness
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + (rgb - grey) * saturation
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def tissue_fraction(image: np.ndarray) -> float:
    """The share of pixels that look like stained tissue: coloured (saturation above 0.07) and
    neither near-white glass (brightness above 0.92 with little colour) nor black (below 0.08)."""
    rgb = np.asarray(image).astype(np.float32) / 255
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1e-6)
    tissue = (saturation > 0.07) & (high > 0.08) & ~((high > 0.92) & (saturation < 0.12))
    return float(tissue.mean())


def _aspect_shape(long_side: int, rng: np.random.Generator, max_aspect: float) -> tuple[int, int]:
    """(height, width) with the long side ``long_side`` and a random aspect 1.15..max_aspect."""
    aspect = rng.uniform(1.15, max(max_aspect, 1.2))
    short = max(8, int(round(long_side / aspect)))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def random_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, min_side: int, max_side: int,
                min_fraction: float = MIN_FRACTION, max_fraction: float = MAX_FRACTION, max_aspect: float = 2.0,
                component: bool = False, point: tuple[int, int] | None = None, tries: int = 20,
                min_visible: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """A non-square crop of the pair (``image`` HxWx3, ``mask`` HxW) whose long side is
    ``min_side``..``max_side`` (at most the image's), aspect 1.15..``max_aspect``, and whose object
    covers ``min_fraction``..``max_fraction`` of the crop; ``tries`` random crops are tried, then
    ``None`` (no such crop was found: e.g. an object too large for the smallest crop).

    The crop's mask is the pair's mask as it is, all objects in the crop included. With
    ``component=True`` only one connected object is kept, the others become background: the one
    under ``point`` (row, col in crop coordinates; a crop whose point is background is retried),
    or, without ``point``, the one under a random object pixel of the crop; the fraction is that
    of the kept object. ``min_visible`` (with ``component``) refuses a crop that shows less than
    that share of the kept object's whole area, unless the object covers 30 % of the crop or more
    (a sliver of an object at the crop's corner is a poor target)."""
    image, mask = np.asarray(image), np.asarray(mask).astype(bool)
    height, width = mask.shape
    if image.shape[:2] != mask.shape:
        raise InputError(f"The image is {width}x{height} but the mask is {mask.shape[1]}x{mask.shape[0]}.")
    if min(height, width) < 8:
        return None
    if component:
        full_labels, _ = ndimage.label(mask)
        areas = np.bincount(full_labels.ravel())
    for _ in range(int(tries)):
        long_cap = min(int(max_side), max(height, width))
        long_side = int(rng.integers(min(int(min_side), long_cap), long_cap + 1))
        crop_h, crop_w = _aspect_shape(long_side, rng, max_aspect)
        if crop_h > height or crop_w > width:  # the image's shape decides which way the crop lies
            crop_h, crop_w = crop_w, crop_h
        crop_h, crop_w = min(crop_h, height), min(crop_w, width)
        if crop_h == crop_w:  # a square image smaller than the long side: shorten one side
            if rng.random() < 0.5:
                crop_h = max(8, int(round(crop_h / rng.uniform(1.15, max(max_aspect, 1.2)))))
            else:
                crop_w = max(8, int(round(crop_w / rng.uniform(1.15, max(max_aspect, 1.2)))))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        sub = mask[top:top + crop_h, left:left + crop_w]
        if not sub.any():
            continue
        if component:
            labels = full_labels[top:top + crop_h, left:left + crop_w]
            if point is not None:
                row, col = int(point[0]), int(point[1])
                if not (0 <= row < crop_h and 0 <= col < crop_w) or labels[row, col] == 0:
                    continue
                chosen = labels[row, col]
            else:
                rows, cols = np.nonzero(sub)
                pick = int(rng.integers(rows.size))
                chosen = labels[rows[pick], cols[pick]]
            sub = labels == chosen
            if sub.sum() < min_visible * areas[chosen] and sub.mean() < 0.3:
                continue
        fraction = float(sub.mean())
        if min_fraction <= fraction <= max_fraction:
            return image[top:top + crop_h, left:left + crop_w].copy(), sub.copy()
    return None


def _resize(image: np.ndarray, shape: tuple[int, int], mask: bool = False) -> np.ndarray:
    if image.shape[:2] == tuple(shape):
        return image
    resample = Image.BILINEAR if mask else Image.BICUBIC  # a mask: smooth, then thresholded
    pil = Image.fromarray(image.astype(np.uint8) * (255 if mask else 1))
    out = np.asarray(pil.resize((int(shape[1]), int(shape[0])), resample))
    return out > 127 if mask else out


# ----------------------------------------------------------------------------- texture sources

@dataclass
class Texture:
    pixels: np.ndarray  # (H, W, 3) uint8
    source: str  # "<source name>:<image or region>"
    case_id: str  # the slide or dataset case it came from


class TextureSource:
    """Random RGB tissue crops of one source: a dataset folder (``images/`` + ``masks/``, or a CSV
    manifest, as ``evaluation.dataset.find_pairs`` reads; its masks also give ``crop`` pairs),
    a slide or a plain image file (``slides.open_image``). A crop is resampled from a region
    ``scale_range`` times its size (magnification jitter); a crop with less than ``min_tissue``
    tissue (``tissue_fraction``) is drawn again, up to ``tries`` times."""

    def __init__(self, path: str | Path, min_tissue: float = 0.75, scale_range: tuple[float, float] = (0.7, 1.5),
                 tries: int = 30):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"Synthetic-data source not found: {self.path}")
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.min_tissue, self.scale_range, self.tries = float(min_tissue), scale_range, int(tries)
        self.pairs: list = []
        self._cases: dict[str, str] = {}
        self._slide = None
        self._native: tuple[int, int] | None = None
        self._cache: dict[Path, np.ndarray] = {}
        if self.path.is_dir() or self.path.suffix.lower() == ".csv":
            from ..evaluation.dataset import find_pairs

            self.pairs = [pair for pair in find_pairs(self.path) if pair.mask_path is not None]
            self._cases = _case_ids(self.path)
        else:
            from ..slides.reader import open_image

            self._slide = open_image(self.path)

    def fit(self, shape: tuple[int, int]) -> float:
        """The factor (at most 1) by which a crop of ``shape`` must shrink to be cut from this
        source's images without enlarging them (1 for a slide)."""
        if self._slide is not None:
            width, height = self._slide.level_dimensions[0]
        else:
            if self._native is None:
                self._native = self._image(self.pairs[0].image_path).shape[:2]
            height, width = self._native
        return float(min(1.0, height / shape[0], width / shape[1]))

    @property
    def has_masks(self) -> bool:
        return bool(self.pairs)

    def case_of(self, stem: str) -> str:
        return f"{self.name}:{self._cases.get(stem, stem)}"

    def _image(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            from ..slides.reader import open_image

            source = open_image(path)
            width, height = source.level_dimensions[0]
            from ..engine.tiles import TileBox

            self._cache[path] = source.read_region(TileBox(0, 0, 0, width, height))
            source.close()
        return self._cache[path]

    def _draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> Texture:
        height, width = shape
        scale = float(np.exp(rng.uniform(*np.log(self.scale_range))))
        if self._slide is None:
            pair = self.pairs[int(rng.integers(len(self.pairs)))]
            image = self._image(pair.image_path)
            # a small image gives its largest region of the crop's aspect, enlarged
            fit = min(1.0, image.shape[0] / (height * scale), image.shape[1] / (width * scale))
            region = (max(4, int(height * scale * fit)), max(4, int(width * scale * fit)))
            top = int(rng.integers(0, image.shape[0] - region[0] + 1))
            left = int(rng.integers(0, image.shape[1] - region[1] + 1))
            pixels = image[top:top + region[0], left:left + region[1]]
            return Texture(_resize(pixels, shape), f"{self.name}:{pair.stem}", self.case_of(pair.stem))
        from ..engine.tiles import TileBox

        slide = self._slide
        wanted = (height * scale, width * scale)  # level-0 pixels
        level = 0  # the coarsest level that still has the wanted pixels at least at crop resolution
        for index, down in enumerate(slide.level_downsamples):
            if down <= scale:
                level = index
        down = slide.level_downsamples[level]
        level_w, level_h = slide.level_dimensions[level]
        region_h, region_w = min(level_h, int(round(wanted[0] / down))), min(level_w, int(round(wanted[1] / down)))
        x = int(rng.integers(0, level_w - region_w + 1))
        y = int(rng.integers(0, level_h - region_h + 1))
        pixels = slide.read_region(TileBox(level, x, y, region_w, region_h, down))
        x0, y0 = int(round(x * down)), int(round(y * down))
        return Texture(_resize(pixels, shape), f"{self.name}:{x0},{y0}", self.name)

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> Texture:
        """A random tissue crop of ``shape`` (height, width); ``InputError`` naming the source when
        ``tries`` crops in a row are background."""
        best_tissue = 0.0
        for _ in range(self.tries):
            texture = self._draw(rng, shape)
            tissue = tissue_fraction(texture.pixels)
            if tissue >= self.min_tissue:
                return texture
            best_tissue = max(best_tissue, tissue)
        raise InputError(f"{self.path}: yields no tissue ({self.tries} random {shape[1]}x{shape[0]} crops, "
                         f"the best {best_tissue:.0%} tissue, {self.min_tissue:.0%} needed); "
                         f"is it blank, or mostly glass?")

    def pair(self, rng: np.random.Generator):
        """A random (image, mask, PairSpec) of the dataset (``None`` if its file cannot be used)."""
        from ..evaluation.dataset import Sample, load_samples

        spec = self.pairs[int(rng.integers(len(self.pairs)))]
        for sample in load_samples(spec):
            if isinstance(sample, Sample):
                return sample.image, sample.target, spec
        return None

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()


def _case_ids(path: Path) -> dict[str, str]:
    """stem -> case_id from the dataset's manifest.csv, when it has that column."""
    manifest = path / "manifest.csv" if path.is_dir() else path
    if not manifest.is_file():
        return {}
    try:
        with open(manifest, newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return {row["stem"]: row["case_id"] for row in rows if row.get("stem") and row.get("case_id")}


# ----------------------------------------------------------------------------- the dataset

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
        shape = _aspect_shape(long_side, rng, max_aspect)
        background, foreground = _two_textures(sources, rng, shape)
        image, mask = texture_composite(background.pixels, foreground.pixels, rng,
                                        fraction=float(np.sqrt(bounds[0] * bounds[1])))
        image, mask = _resize(image, shape), _resize(mask, shape, mask=True)
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
            image, mask = _resize(image, shape), _resize(mask, shape, mask=True)
        else:  # no real masks: a crop of a composite twice the size, its object cut by the border
            shape = _aspect_shape(min(2 * long_side, 2048), rng, max_aspect)
            background, foreground = _two_textures(sources, rng, shape)
            image, mask = texture_composite(background.pixels, foreground.pixels, rng,
                                            fraction=float(rng.uniform(0.05, 0.6)))
            image, mask = _resize(image, shape), _resize(mask, shape, mask=True)
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

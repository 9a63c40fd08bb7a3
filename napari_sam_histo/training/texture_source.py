"""Where a synthetic pair's tissue comes from (``synthetic``): random RGB tissue crops of a dataset
folder, a slide or an image file, with magnification jitter and near-white crops refused."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .synthetic_images import resize_pixels, tissue_fraction


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
            from ..slides.boxes import TileBox

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
            return Texture(resize_pixels(pixels, shape), f"{self.name}:{pair.stem}", self.case_of(pair.stem))
        from ..slides.boxes import TileBox

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
        return Texture(resize_pixels(pixels, shape), f"{self.name}:{x0},{y0}", self.name)

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

"""Open images as tile sources: WSIs through OpenSlide (read region by region, never whole), generic
and OME pyramidal TIFFs through tifffile (``tiff_source``, also lazy), plain images (PNG, JPEG,
small TIFF) and in-memory arrays through one small interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.rgb import to_rgb_uint8
from ..engine.tiles import TileBox
from ..errors import InputError
from .identity import array_identity, file_identity

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff", ".svslide", ".dcm")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")  # .ome.tif and .ome.tiff too


@dataclass
class ImageSource:
    """Pixels by pyramid level and box. Level 0 is full resolution."""

    name: str
    identity: str
    level_dimensions: list[tuple[int, int]]  # (width, height) per level
    level_downsamples: list[float]
    mpp: tuple[float, float] | None = None  # microns per level-0 pixel (x, y)
    properties: dict = field(default_factory=dict)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, box: TileBox) -> np.ndarray:
        """The (H, W, 3) uint8 pixels of ``box``."""
        self._check_box(box)
        return to_rgb_uint8(self._read(box), name=f"{self.name} {box.key()}")

    def _check_box(self, box: TileBox) -> None:
        if not 0 <= box.level < self.level_count:
            raise InputError(f"{self.name} has levels 0..{self.level_count - 1}; level {box.level} was asked for.")
        width, height = self.level_dimensions[box.level]
        if box.x < 0 or box.y < 0 or box.x + box.width > width or box.y + box.height > height:
            raise InputError(f"Box {box.key()} reaches outside level {box.level} of {self.name} ({width}x{height}).")

    def _read(self, box: TileBox) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class ArraySource(ImageSource):
    """One in-memory image: a single level."""

    array: np.ndarray | None = None

    def _read(self, box: TileBox) -> np.ndarray:
        return self.array[box.y: box.y + box.height, box.x: box.x + box.width]


@dataclass
class OpenSlideSource(ImageSource):
    slide: object = None

    def _read(self, box: TileBox) -> np.ndarray:
        d = self.level_downsamples[box.level]
        location = (int(round(box.x * d)), int(round(box.y * d)))
        region = self.slide.read_region(location, box.level, (box.width, box.height))
        return np.asarray(region)  # RGBA; transparent (outside the scan) becomes white

    def close(self) -> None:
        self.slide.close()


def from_array(array, name: str = "array") -> ArraySource:
    rgb = to_rgb_uint8(array, name)
    height, width = rgb.shape[:2]
    return ArraySource(name, array_identity(rgb), [(width, height)], [1.0], array=rgb)


def open_image(path: str | Path) -> ImageSource:
    """Open a WSI or a plain image file; ``InputError`` naming the file when it cannot be."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file.")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix in SLIDE_SUFFIXES:
        source = _try_openslide(path)
        if source is not None:
            return source
    if suffix in PLAIN_SUFFIXES:
        return _open_plain(path)
    raise InputError(
        f"{path.name}: unsupported file type {suffix or '(none)'}; expected a slide "
        f"({', '.join(SLIDE_SUFFIXES)}) or an image ({', '.join(PLAIN_SUFFIXES)})."
    )


def _open_tiff(path: Path) -> ImageSource:
    """Which reader gets a .tif/.tiff (.ome.tif) file:

    1. a vendor TIFF that OpenSlide recognises (Aperio, Philips, Ventana, Leica, Trestle: any
       driver but "generic-tiff") -> OpenSlide, which knows the vendor's metadata (pixel size,
       objective power, bounds) and its quickhash;
    2. any other TIFF that is tiled, pyramidal or large -> tifffile, lazily (``TiffSource``):
       OpenSlide's generic driver reads only the first IFD, so it shows an OME-TIFF SubIFD pyramid
       as one huge level, ignores OME metadata and refuses stripped or greyscale layouts;
    3. a small untiled single-level TIFF -> read whole, like a PNG.
    The vendor check reads only the header; a corrupt file gets tifffile's error, naming the file.
    """
    import openslide

    from .tiff_source import open_tiff

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor not in (None, "generic-tiff"):
        return _try_openslide(path) or _open_plain(path)
    return open_tiff(path) or _open_plain(path)


def _try_openslide(path: Path) -> OpenSlideSource | None:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if path.suffix.lower() in (".tif", ".tiff"):
            return None  # a plain (non-pyramidal) TIFF: read it as an image
        raise InputError(f"{path.name}: OpenSlide does not recognise this file as a slide.") from None
    except openslide.OpenSlideError as err:
        raise InputError(f"{path.name}: the slide is damaged or unreadable ({err}).") from err
    props = dict(slide.properties)
    mpp = None
    try:
        mpp = (float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y]))
    except (KeyError, ValueError):
        pass
    return OpenSlideSource(
        name=path.name,
        identity=file_identity(path, props.get(openslide.PROPERTY_NAME_QUICKHASH1)),
        level_dimensions=[tuple(map(int, dims)) for dims in slide.level_dimensions],
        level_downsamples=[float(d) for d in slide.level_downsamples],
        mpp=mpp,
        properties=props,
        slide=slide,
    )


def _open_plain(path: Path) -> ArraySource:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            array = iio.imread(path)
    except Exception as err:  # image libraries raise many types for a bad file
        raise InputError(f"{path.name}: cannot read the image ({err.__class__.__name__}: {err}).") from err
    rgb = to_rgb_uint8(array, path.name)
    height, width = rgb.shape[:2]
    return ArraySource(path.name, file_identity(path), [(width, height)], [1.0], array=rgb)

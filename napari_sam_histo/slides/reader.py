"""Open images as tile sources: WSIs through OpenSlide (read region by region, never whole), generic
and OME pyramidal TIFFs through tifffile (``tiff_source``, also lazy), plain images (PNG, JPEG,
small TIFF) and in-memory arrays through one small interface.

A file that cannot be opened is one ``InputError`` naming it: "empty (0 bytes)" for an empty file;
"truncated or damaged (N bytes)" for a TIFF-based file (.svs, .tif, .ndpi, .scn, ...) whose first
image directory or image data lie past its end (a download or copy cut short), checked from the
header and the directories before any reader is tried, or that a reader fails on although its
header says TIFF; "not recognised" only for a file that is not a slide at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .boxes import TileBox
from .damage import is_tiff, size_text, tiff_damage, truncated_message
from .identity import array_identity, file_identity
from .rgb import to_rgb_uint8
from .source import ImageSource

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff", ".svslide", ".dcm")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")  # .ome.tif and .ome.tiff too


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
        import openslide

        d = self.level_downsamples[box.level]
        location = (int(round(box.x * d)), int(round(box.y * d)))
        try:
            region = self.slide.read_region(location, box.level, (box.width, box.height))
        except openslide.OpenSlideError as err:
            raise InputError(f"{self.name}: cannot read {box.key()} ({err}); the file may be damaged or "
                             "truncated (OpenSlide reads nothing more from it until it is opened again).") from err
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
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"{path.name}: cannot read the file ({err.strerror or err}).") from err
    if size == 0:
        raise InputError(f"{path.name} is empty (0 bytes); copy or download it again.")
    damage = tiff_damage(path)
    if damage:
        raise InputError(truncated_message(path, damage))
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
        if is_tiff(path):
            raise InputError(truncated_message(path, "OpenSlide finds no slide in this TIFF")) from None
        raise InputError(f"{path.name}: OpenSlide does not recognise this file as a slide "
                         f"({size_text(path.stat().st_size)}, not a TIFF-based file).") from None
    except openslide.OpenSlideError as err:
        raise InputError(truncated_message(path, f"OpenSlide: {err}")) from err
    props = dict(slide.properties)
    mpp = None
    with contextlib.suppress(KeyError, ValueError):
        mpp = (float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y]))
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
        detail = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"{path.name}: cannot read the image ({err.__class__.__name__}: {detail}); the "
                         f"file ({size_text(path.stat().st_size)}) may be truncated or damaged, or not "
                         f"of the type its name says.") from err
    rgb = to_rgb_uint8(array, path.name)
    height, width = rgb.shape[:2]
    return ArraySource(path.name, file_identity(path), [(width, height)], [1.0], array=rgb)

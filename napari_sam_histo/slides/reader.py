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

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boxes import TileBox
from .rgb import to_rgb_uint8
from ..errors import InputError
from .identity import array_identity, file_identity

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff", ".svslide", ".dcm")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")  # .ome.tif and .ome.tiff too
TIFF_MAGICS = {b"II*\x00": "<I", b"MM\x00*": ">I", b"II+\x00": "<Q", b"MM\x00+": ">Q"}  # classic, BigTIFF
_PAGES_CHECKED = 64  # a slide pyramid has a handful of top-level images; a long stack is refused later


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
        """The (H, W, 3) uint8 pixels of ``box`` (of a virtual level too: read from the finer
        pyramid level ``box.level`` and resized)."""
        self._check_box(box)
        if box.virtual:
            return self._read_virtual(box)
        return to_rgb_uint8(self._read(box), name=f"{self.name} {box.key()}")

    def reading_level(self, downsample: float) -> int:
        """The pyramid level a tile at ``downsample`` is read from: the coarsest one at least as fine."""
        fine_enough = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(fine_enough, key=lambda i: self.level_downsamples[i]) if fine_enough else 0

    def size_at(self, downsample: float, level: int | None = None) -> tuple[int, int]:
        """(width, height) of the (possibly virtual) level at ``downsample``, read from ``level``
        (default ``reading_level``): whole pixels of that level only, so every box fits inside it."""
        level = self.reading_level(downsample) if level is None else level
        width, height = self.level_dimensions[level]
        factor = downsample / self.level_downsamples[level]
        if abs(factor - 1) < 1e-6:
            return width, height
        return max(int(width / factor + 1e-6), 1), max(int(height / factor + 1e-6), 1)

    def _check_box(self, box: TileBox) -> None:
        if not 0 <= box.level < self.level_count:
            raise InputError(f"{self.name} has levels 0..{self.level_count - 1}; level {box.level} was asked for.")
        if box.virtual and box.downsample < self.level_downsamples[box.level] * (1 - 1e-6):
            raise InputError(f"Box {box.key()} is finer than level {box.level} of {self.name}, which it would "
                             f"be read from.")
        width, height = self.size_at(box.downsample, box.level) if box.virtual else self.level_dimensions[box.level]
        if box.x < 0 or box.y < 0 or box.x + box.width > width or box.y + box.height > height:
            where = f"downsample {box.downsample:g}" if box.virtual else f"level {box.level}"
            raise InputError(f"Box {box.key()} reaches outside {where} of {self.name} ({width}x{height}).")

    def _read_virtual(self, box: TileBox) -> np.ndarray:
        # The finer level's pixels under the box, resized with Pillow's antialiased bilinear filter,
        # whose ``box`` argument takes the exact (fractional) source rectangle.
        from PIL import Image

        factor = box.downsample / self.level_downsamples[box.level]
        x0, y0 = box.x * factor, box.y * factor
        x1, y1 = (box.x + box.width) * factor, (box.y + box.height) * factor
        width, height = self.level_dimensions[box.level]
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        ix1, iy1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        inner = TileBox(box.level, ix0, iy0, ix1 - ix0, iy1 - iy0, self.level_downsamples[box.level])
        pixels = to_rgb_uint8(self._read(inner), name=f"{self.name} {box.key()}")
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
            (box.width, box.height), Image.BILINEAR, box=(x0 - ix0, y0 - iy0, min(x1, ix1) - ix0, min(y1, iy1) - iy0))
        return np.asarray(resized)

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


def _size_text(size: int) -> str:
    return f"{size} bytes" if size < 10_000 else f"{size} bytes, {size / 2**20:.1f} MiB"


def truncated_message(path: Path, detail: str) -> str:
    return (f"{path.name} is truncated or damaged ({_size_text(path.stat().st_size)}): {detail}. "
            "Copy or download it again.")


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a TIFF or BigTIFF header (SVS, NDPI, SCN, BIF and OME files do)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(4) in TIFF_MAGICS
    except OSError:
        return False


def tiff_damage(path: Path) -> str | None:
    """Why a TIFF-based file is certainly truncated: its first image directory starts past the end,
    or a top-level image's data run past it. ``None`` for a complete file, a file that is not a TIFF,
    or one whose damage only a reader can find (tifffile errors here are left to the readers)."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(16)
    layout = TIFF_MAGICS.get(head[:4])
    if layout is None:
        return None
    start = 8 if layout.endswith("Q") else 4
    if len(head) < start + struct.calcsize(layout):
        return f"the file ends inside its {len(head)}-byte header"
    first = struct.unpack(layout, head[start: start + struct.calcsize(layout)])[0]
    if first >= size:
        return f"its first image directory would start at byte {first}, past the end"
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.ERROR)  # tifffile logs each damaged directory; the error below says it once
    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                if i >= _PAGES_CHECKED:
                    break
                ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
                if ends and max(ends) > size:
                    return f"image {i} needs {max(ends)} bytes"
    except Exception:  # a directory tifffile cannot parse: the reader tried next reports it
        return None
    finally:
        logger.setLevel(level)
    return None


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
                         f"({_size_text(path.stat().st_size)}, not a TIFF-based file).") from None
    except openslide.OpenSlideError as err:
        raise InputError(truncated_message(path, f"OpenSlide: {err}")) from err
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
        detail = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"{path.name}: cannot read the image ({err.__class__.__name__}: {detail}); the "
                         f"file ({_size_text(path.stat().st_size)}) may be truncated or damaged, or not "
                         f"of the type its name says.") from err
    rgb = to_rgb_uint8(array, path.name)
    height, width = rgb.shape[:2]
    return ArraySource(path.name, file_identity(path), [(width, height)], [1.0], array=rgb)

"""Generic and OME pyramidal TIFFs read lazily with tifffile.

OpenSlide's generic-TIFF driver sees only the first IFD of a file, so an OME-TIFF pyramid stored
as SubIFDs (bioformats' and QuPath's layout) opens as one full-resolution level, and it refuses
stripped or non-RGB layouts. tifffile understands SubIFD and multi-page pyramids alike (a series'
``levels``) and the OME metadata. Each level is wrapped as a zarr array over tifffile's store, so a
region read decodes only the tiles (or strips) it touches; the level-0 array is never built.

Pixels go through the same conversion as every other source (``slides.rgb``), with one difference:
an image that is not 8-bit is stretched with one global min..max (taken from the coarsest level),
not per region, so neighbouring tiles of a 16-bit image match.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .boxes import TileBox
from .damage import is_tiff, tiff_damage, truncated_message
from .identity import file_identity
from .source import ImageSource

FLAT_MAX_PIXELS = 64 * 2**20  # an untiled single-level TIFF up to this size is read whole, like a PNG
RANGE_MAX_PIXELS = 16 * 2**20  # the coarsest level read whole to find a non-8-bit image's value range
MPP_PLAUSIBLE = (0.01, 100.0)  # µm/px; outside it a resolution tag is a default (72 dpi = 353 µm), not a scan
_MICRONS_PER_UNIT = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
                     "mm": 1e3, "cm": 1e4, "m": 1e6, "in": 25400.0, "inch": 25400.0}
_MICRONS_PER_RESUNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit: inch, cm, (tifffile: mm, µm)


@dataclass
class TiffSource(ImageSource):
    """A TIFF pyramid: one zarr array per level, read region by region."""

    tif: object = None
    arrays: list = field(default_factory=list)
    planar: bool = False  # samples first (S, Y, X): moved last after reading
    value_range: tuple[float, float] | None = None  # None: already 8-bit

    def _read(self, box: TileBox) -> np.ndarray:
        rows, cols = slice(box.y, box.y + box.height), slice(box.x, box.x + box.width)
        try:
            region = self.arrays[box.level][(slice(None), rows, cols) if self.planar else (rows, cols)]
        except Exception as err:  # codecs and zarr raise many types for damaged tile data
            raise InputError(f"{self.name}: cannot read {box.key()} ({err.__class__.__name__}: {err}); "
                             "the file may be damaged or truncated.") from err
        region = np.asarray(region)
        if self.planar:
            region = np.moveaxis(region, 0, -1)
        return region if self.value_range is None else _stretch(region, *self.value_range)

    def close(self) -> None:
        self.tif.close()


def open_tiff(path: str | Path) -> TiffSource | None:
    """A lazy source for a tiled, pyramidal or large TIFF; ``None`` for a small flat one (read it whole).

    ``InputError`` naming the file when it is not a readable TIFF, is truncated, or holds something
    other than one brightfield RGB/RGBA or greyscale image (multi-channel fluorescence, Z-stacks and
    time series are refused rather than shown as false colours).
    """
    import tifffile

    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path.name} is empty (0 bytes); copy or download it again.")
    damage = tiff_damage(path)
    if damage:
        raise InputError(truncated_message(path, damage))
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # TiffFileError, struct.error, ValueError... for a damaged header
        if is_tiff(path):  # a TIFF header, then something tifffile cannot parse
            raise InputError(truncated_message(path, f"{err.__class__.__name__}: {err}")) from err
        raise InputError(f"{path.name}: not a readable TIFF ({err.__class__.__name__}: {err}).") from err
    try:
        source = _source(tif, path)
    except BaseException:
        tif.close()
        raise
    if source is None:
        tif.close()
    return source


def _source(tif, path: Path) -> TiffSource | None:
    if not tif.series:
        if is_tiff(path):
            raise InputError(truncated_message(path, "a TIFF header, but no image found in it"))
        raise InputError(f"{path.name}: not a readable TIFF (no image found in it).")
    # the largest image: files may also carry a thumbnail, label or macro image as other series
    index, series = max(enumerate(tif.series), key=lambda s: _area(s[1].levels[0]))
    page = series.keyframe
    height, width = _yx(series.levels[0])
    if len(series.levels) == 1 and not page.is_tiled and width * height <= FLAT_MAX_PIXELS:
        return None
    planar = _check_layout(series, path.name)
    _check_complete(series, path)
    arrays = [_zarr_level(series, i, path.name) for i in range(len(series.levels))]
    dims = [(_yx(level)[1], _yx(level)[0]) for level in series.levels]
    downsamples = [(width / w + height / h) / 2 for w, h in dims]  # as OpenSlide averages them
    source = TiffSource(
        name=path.name, identity=file_identity(path), level_dimensions=dims, level_downsamples=downsamples,
        mpp=_ome_mpp(tif, index) or _tag_mpp(tif, page), properties=_properties(tif, series, page),
        tif=tif, arrays=arrays, planar=planar,
    )
    source.value_range = _value_range(source, series.dtype)
    _probe(source)
    return source


def _area(level) -> int:
    height, width = _yx(level)
    return height * width


def _yx(level) -> tuple[int, int]:
    axes, shape = level.axes, level.shape
    return shape[axes.index("Y")], shape[axes.index("X")]


def _check_layout(series, name: str) -> bool:
    """One plane of 1, 3 or 4 samples; returns whether the samples come first (planar)."""
    axes, shape = series.axes, series.shape  # singleton T/C/Z axes are squeezed out already
    samples = dict(zip(axes, shape)).get("S", 1)
    extra = {a: n for a, n in zip(axes, shape) if a not in "YXS"}
    if extra or samples not in (1, 3, 4) or axes not in ("YX", "YXS", "SYX"):
        what = ", ".join(f"{a}={n}" for a, n in extra.items()) or f"{samples} samples per pixel"
        raise InputError(
            f"{name}: unsupported TIFF layout (axes {axes}, shape {shape}: {what}); expected one brightfield "
            "RGB/RGBA or greyscale image. Multi-channel fluorescence, Z-stacks and time series are not supported.")
    if not (np.issubdtype(series.dtype, np.integer) or np.issubdtype(series.dtype, np.floating)
            or series.dtype == bool):
        raise InputError(f"{name}: pixel type {series.dtype} is not supported; expected integers or floats.")
    return axes == "SYX"


def _check_complete(series, path: Path) -> None:
    """Every level's tile data lies inside the file: a truncated download fails here, not mid-pan."""
    size = path.stat().st_size
    for i, level in enumerate(series.levels):
        page = level.keyframe
        end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c), default=0)
        if end > size:
            raise InputError(truncated_message(path, f"level {i} needs {end} bytes"))


def _zarr_level(series, level: int, name: str):
    import zarr

    try:
        return zarr.open_array(series.aszarr(level=level), mode="r")
    except Exception as err:
        raise InputError(f"{name}: cannot read level {level} ({err.__class__.__name__}: {err}).") from err


def _probe(source: TiffSource) -> None:
    """Decode one tile of the coarsest level now: a missing codec or a damaged file fails at open."""
    level = source.level_count - 1
    width, height = source.level_dimensions[level]
    source._read(TileBox(level, 0, 0, min(width, 64), min(height, 64)))


def _value_range(source: TiffSource, dtype) -> tuple[float, float] | None:
    if dtype in (np.uint8, bool):
        return None
    level = source.level_count - 1
    width, height = source.level_dimensions[level]
    if width * height > RANGE_MAX_PIXELS:
        raise InputError(f"{source.name}: a {dtype} image needs a pyramid level of at most "
                         f"{RANGE_MAX_PIXELS} pixels to find its value range; convert it to 8-bit.")
    values = source._read(TileBox(level, 0, 0, width, height)).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{source.name} contains NaN or infinite pixel values.")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return (0.0, 1.0)  # as slides.rgb: floats in [0, 1] are scaled by 255
    return (low, high)


def _stretch(region: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return np.zeros(region.shape, np.uint8)
    scaled = (region.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _plausible(mpp: tuple[float, float]) -> tuple[float, float] | None:
    low, high = MPP_PLAUSIBLE
    return mpp if all(low <= m <= high for m in mpp) else None


def _ome_mpp(tif, index: int) -> tuple[float, float] | None:
    """PhysicalSizeX/Y of the series' OME ``Pixels``, in µm (the OME default unit)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        images = [el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
        pixels = next(el for el in images[index].iter() if el.tag.rsplit("}", 1)[-1] == "Pixels")
        attrib = pixels.attrib
        y = "Y" if "PhysicalSizeY" in attrib else "X"  # square pixels when only X is stated
        mpp = tuple(float(attrib[f"PhysicalSize{a}"]) * _MICRONS_PER_UNIT[attrib.get(f"PhysicalSize{a}Unit", "µm")]
                    for a in ("X", y))
    except (ET.ParseError, IndexError, StopIteration, KeyError, ValueError):
        return None
    return _plausible(mpp)


def _tag_mpp(tif, page) -> tuple[float, float] | None:
    """TIFF X/YResolution with a physical ResolutionUnit (or ImageJ's unit when it is NONE)."""
    try:
        xres, yres = (v[0] / v[1] for v in (page.tags["XResolution"].value, page.tags["YResolution"].value))
        unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
        microns = _MICRONS_PER_RESUNIT.get(unit)
        if unit == 1 and tif.is_imagej:
            microns = _MICRONS_PER_UNIT.get(str((tif.imagej_metadata or {}).get("unit", "")).lower())
        if microns is None or xres <= 0 or yres <= 0:
            return None
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return _plausible((microns / xres, microns / yres))


def _properties(tif, series, page) -> dict:
    props = {
        "tifffile.series": series.kind, "tifffile.axes": series.axes, "tifffile.dtype": str(series.dtype),
        "tiff.compression": getattr(page.compression, "name", str(page.compression)),
        "tiff.photometric": getattr(page.photometric, "name", str(page.photometric)),
        "tiff.tile": f"{page.tilewidth}x{page.tilelength}" if page.is_tiled else "strips",
        "tiff.levels": str(len(series.levels)), "tiff.subifds": str(bool(page.subifds)),
    }
    power = _ome_magnification(tif)
    if power:
        props["openslide.objective-power"] = power  # OpenSlide's key, so `prepare` finds it too
    return props


def _ome_magnification(tif) -> str | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        for el in ET.fromstring(tif.ome_metadata).iter():
            if el.tag.rsplit("}", 1)[-1] == "Objective" and "NominalMagnification" in el.attrib:
                return str(float(el.attrib["NominalMagnification"]))
    except (ET.ParseError, ValueError):
        pass
    return None

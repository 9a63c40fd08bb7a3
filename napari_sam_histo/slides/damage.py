"""Damaged files named before a reader tries them: a TIFF-based file (.svs, .tif, .ndpi, .scn, ...)
whose first image directory or image data lie past its end (a download or copy cut short) is
found from its header and directories, and reported as "truncated or damaged (N bytes)"."""

from __future__ import annotations

import struct
from pathlib import Path

TIFF_MAGICS = {b"II*\x00": "<I", b"MM\x00*": ">I", b"II+\x00": "<Q", b"MM\x00+": ">Q"}  # classic, BigTIFF
_PAGES_CHECKED = 64  # a slide pyramid has a handful of top-level images; a long stack is refused later


def size_text(size: int) -> str:
    return f"{size} bytes" if size < 10_000 else f"{size} bytes, {size / 2**20:.1f} MiB"


def truncated_message(path: Path, detail: str) -> str:
    return (f"{path.name} is truncated or damaged ({size_text(path.stat().st_size)}): {detail}. "
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
    except Exception:  # noqa: BLE001 - a directory tifffile cannot parse: the reader tried next reports it
        return None
    finally:
        logger.setLevel(level)
    return None



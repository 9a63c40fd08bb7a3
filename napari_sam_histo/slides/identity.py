"""A cheap, stable key for an image source: never hash a whole slide.

For a file: OpenSlide's own ``openslide.quickhash-1`` when the slide has one (it hashes a few
header tiles and survives renames); otherwise the resolved path, size and modification time.
For an in-memory array: a hash of its bytes (arrays are small images, not WSIs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_identity(path: str | Path, quickhash: str | None = None) -> str:
    path = Path(path).resolve()
    if quickhash:
        return f"slide:{quickhash}"
    stat = path.stat()
    return f"file:{_short(f'{path}|{stat.st_size}|{stat.st_mtime_ns}')}"


def array_identity(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(str((array.shape, array.dtype.str)).encode())
    digest.update(memoryview(array).cast("B"))
    return f"array:{digest.hexdigest()[:32]}"

"""Write files so that a failure never leaves a half-written or lost file: write a temporary file
in the same folder, then rename it over the target (an atomic step on one filesystem)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, but a written report should be 0644-like


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists already; choose another name or allow overwriting.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as err:
        raise InputError(f"Cannot write to {path.parent}: {err.strerror or err}.") from err
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""Write files so that a failure never leaves a half-written or lost file: write a temporary file
in the same folder, then rename it over the target (an atomic step on one filesystem).

A full disk (``ENOSPC``, or ``EDQUOT`` for a used-up quota) while creating the temporary file,
while writing it (the ``with`` body) or while renaming it is reported as one ``DiskFullError``
(an ``InputError``, and an ``OSError``) naming the target file; the temporary file is removed and
an existing file at the target is left as it was. Writers that hide the errno (``torch.save``
raises a ``RuntimeError`` "file write failed") are recognised by the folder having less than
1 MiB free when they fail.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError, InputError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, but a written report should be 0644-like

_FULL_ERRNOS = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
LOW_SPACE_BYTES = 1 << 20  # below this, a write failure without an errno is taken for a full disk


def disk_full_errno(err: BaseException) -> int | None:
    """ENOSPC/EDQUOT when ``err``, or an error it was raised from, says the disk is full."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _full_errno(err: BaseException, folder: Path) -> int | None:
    """``disk_full_errno``, or ENOSPC for a write error without an errno when ``folder`` is all but full."""
    code = disk_full_errno(err)
    if code is not None:
        return code
    if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, InputError):
        try:
            if shutil.disk_usage(folder).free < LOW_SPACE_BYTES:
                return errno.ENOSPC
        except OSError:
            pass
    return None


def _disk_full(path: Path, existed: bool, code: int) -> DiskFullError:
    what = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
    kept = f"the existing {path.name} was left as it was" if existed else "nothing was written"
    return DiskFullError(f"Cannot write {path}: {what} (no space left in {path.parent}). Free some space "
                         f"or choose another folder, then try again; {kept}.", code)


def refuse_existing(path: str | Path) -> None:
    """``InputError`` when ``path`` exists (checked before work that would end in overwriting it)."""
    if Path(path).exists():
        raise InputError(f"{path} exists already; choose another name or allow overwriting.")


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    existed = path.exists()
    if not overwrite:
        refuse_existing(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as err:
        code = err.errno if err.errno in _FULL_ERRNOS else None
        if code is not None:
            raise _disk_full(path, existed, code) from err
        raise InputError(f"Cannot write to {path.parent}: {err.strerror or err}.") from err
    os.close(handle)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except Exception as err:
            code = _full_errno(err, path.parent)  # before the temp file is removed and frees its space
            if code is not None:
                raise _disk_full(path, existed, code) from err
            raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a report's JSON or table)."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | Path, header, rows) -> Path:
    """Write a CSV (``header``, then each of ``rows``) to ``path`` atomically."""
    import csv

    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            writer.writerows(rows)
    return Path(path)


def write_png(path: str | Path, fig, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure and write it to ``path`` as a PNG atomically.

    ``fig`` is a bare ``matplotlib.figure.Figure`` with an Agg canvas, never one of pyplot's: the
    figures are drawn inside napari's process, whose matplotlib backend and pyplot state stay as
    they are."""
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)

"""Autosave: a slide's accepted objects in a GeoJSON sidecar, rewritten atomically after each change.

A day's annotation must survive a crash, a closed window or a pressed *Start* with other settings.
The sidecar sits next to the slide (``<slide file>.sam-annotations.geojson``, found by QuPath users
beside the slide) when that folder is writable, else in the user cache under the slide's name and
identity. It is the same QuPath-shaped GeoJSON as an export, so it can be opened or imported too.

A sidecar the user chose not to resume is never overwritten: ``set_aside`` renames it with a time
stamp before the new session's first save.

The object being clicked (not accepted yet) is kept too, in its own file beside the sidecar
(``live_path``), rewritten as it changes and removed when it is accepted or cancelled: after a
crash or a quit it is offered back with the accepted objects.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from .geojson import read_geojson, write_geojson
from .objects import AnnotatedObject

SUFFIX = ".sam-annotations.geojson"


def sidecar_path(slide_path: str | Path | None, identity: str, name: str) -> Path:
    """Where the autosave of a slide goes (the folder is not created here)."""
    if slide_path:
        slide_path = Path(slide_path)
        if os.access(slide_path.parent, os.W_OK):
            return slide_path.with_name(slide_path.name + SUFFIX)
    from ..models.weights import cache_dir

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"
    return cache_dir() / "annotations" / f"{safe}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}{SUFFIX}"


LIVE_SUFFIX = ".sam-annotations.live.geojson"


def live_path(sidecar: str | Path) -> Path:
    """Where the object being clicked is kept, beside the sidecar ``sidecar``."""
    sidecar = Path(sidecar)
    return sidecar.with_name(sidecar.name[:-len(SUFFIX)] + LIVE_SUFFIX if sidecar.name.endswith(SUFFIX)
                             else sidecar.name + ".live.geojson")


def remove(path: str | Path) -> None:
    """Remove a file if it is there (the object being clicked was accepted or cancelled)."""
    Path(path).unlink(missing_ok=True)


def save(path: str | Path, objects: list[AnnotatedObject], mpp=None) -> Path:
    """Rewrite the sidecar atomically (the old one stays whole if this fails)."""
    return write_geojson(path, objects, mpp=mpp, overwrite=True)


def load(path: str | Path) -> list[AnnotatedObject]:
    return read_geojson(path)


def set_aside(path: str | Path) -> Path:
    """Rename a sidecar that is not resumed to ``<name>.<time stamp>.geojson``; returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name[:-len('.geojson')]}.{stamp}.geojson")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name[:-len('.geojson')]}.{stamp}-{n}.geojson")
    os.replace(path, target)
    return target

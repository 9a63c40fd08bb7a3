"""Where one slide's embeddings live on disk: the folder the annotator dock reads ("keep embeddings
on disk") and ``napari-sam-histo embed`` writes, so one precompute serves every later session.

One folder per slide (named by a hash of its identity), holding every model's entries (their keys
tell them apart). The root is ``cache_dir()/embeddings`` unless ``NAPARI_SAM_HISTO_EMBEDDINGS``
names another: a lab points its annotators and its cluster at one shared store.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EMBEDDINGS_ENV = "NAPARI_SAM_HISTO_EMBEDDINGS"


def embeddings_root() -> Path:
    """The folder holding every slide's store (``NAPARI_SAM_HISTO_EMBEDDINGS``, else the cache's)."""
    chosen = os.environ.get(EMBEDDINGS_ENV)
    if chosen:
        return Path(chosen).expanduser()
    from ..models.weights import cache_dir

    return cache_dir() / "embeddings"


def slide_store(identity: str, root: str | Path | None = None) -> Path:
    """The store folder of the slide with ``identity`` (``ImageSource.identity``) under ``root``
    (default ``embeddings_root()``)."""
    base = Path(root).expanduser() if root is not None else embeddings_root()
    return base / hashlib.sha256(identity.encode()).hexdigest()[:16]


PRECOMPUTED_MARKER = "precomputed.json"  # written by ``embed`` into each slide store it fills


def mark_precomputed(store: str | Path, info: dict) -> None:
    """Record in ``store`` that ``embed`` filled it (what, when): the annotator then never evicts
    from it (its size limit is for stores that grow by clicking, not for a planned precompute)."""
    import json
    import time

    from ..atomic import atomic_path
    from ..errors import InputError

    store = Path(store)
    try:
        store.mkdir(parents=True, exist_ok=True)
        with atomic_path(store / PRECOMPUTED_MARKER, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps({**info, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    except OSError as err:
        raise InputError(f"Cannot write into the embedding store {store}: {err.strerror or err}.") from err


def is_precomputed(store: str | Path) -> bool:
    return (Path(store) / PRECOMPUTED_MARKER).is_file()

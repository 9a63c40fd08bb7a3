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

"""Image embeddings, computed once per (image, tile, model) and kept: in memory (LRU bounded in
bytes) and optionally on disk (one zarr array per tile) so they survive a restart.

A key records everything that changes the embedding: image identity, level and tile box, model
name, weights hash and input preprocessing. A disk entry whose recorded key differs from the one
asked for, or that cannot be read, is recomputed and rewritten, never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB: 256 tiles of SAM's 256x64x64 float32 embedding


@dataclass(frozen=True)
class EmbeddingKey:
    image: str  # identity of the image source (slides.identity)
    tile: str  # TileBox.key(): level and box
    model: str
    weights_hash: str
    preprocessing: str  # pixel conversion + encoder precision

    def digest(self) -> str:
        text = "|".join(asdict(self).values())
        return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass
class Embedding:
    """The encoder's output for one tile, and the sizes needed to map clicks and masks back."""

    features: torch.Tensor  # (1, C, 64, 64)
    input_size: tuple[int, int]  # (h, w) after resizing the longest side to the encoder's input
    original_size: tuple[int, int]  # (h, w) of the tile
    encode_s: float = 0.0  # what computing it took (the benchmark charges it to every sample)

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


class EmbeddingCache:
    """Thread-safe: a tile requested by two threads at once is computed once."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES, store_dir: str | Path | None = None,
                 store_dtype: str = "float32") -> None:
        """``store_dtype="float16"`` halves the disk store (2 MiB a tile; training caches
        thousands of patches); entries are read back as float32 either way."""
        if store_dtype not in ("float32", "float16"):
            raise ValueError(f"store_dtype must be 'float32' or 'float16', not {store_dtype!r}")
        self.max_bytes = int(max_bytes)
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.store_dtype = store_dtype
        self._entries: OrderedDict[EmbeddingKey, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[EmbeddingKey, threading.Lock] = {}
        self.hits = self.misses = self.disk_hits = 0

    # -- memory -------------------------------------------------------------------------------
    def __contains__(self, key: EmbeddingKey) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: EmbeddingKey) -> Embedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: EmbeddingKey, embedding: Embedding) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = embedding
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], Embedding]) -> Embedding:
        """Memory, then disk, then ``compute()`` (which is called at most once per key at a time)."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self.get(key)  # another thread may have finished it while we waited
            if entry is not None:
                self.hits += 1
                return entry
            entry = self._load(key)
            if entry is not None:
                self.disk_hits += 1
            else:
                self.misses += 1
                entry = compute()
                if self.store_dir is not None and self.store_dtype == "float16":
                    # the same values as a later read-back, so a run does not depend on whether
                    # the store already held the entry
                    entry = Embedding(entry.features.half().float(), entry.input_size, entry.original_size,
                                      entry.encode_s)
                self._save(key, entry)
            self.put(key, entry)
        with self._lock:
            self._key_locks.pop(key, None)
        return entry

    # -- disk ---------------------------------------------------------------------------------
    def _path(self, key: EmbeddingKey) -> Path:
        return self.store_dir / f"{key.digest()}.zarr"

    def _load(self, key: EmbeddingKey) -> Embedding | None:
        if self.store_dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            import zarr

            array = zarr.open_array(str(path), mode="r")
            attrs = dict(array.attrs)
            if attrs.get("key") != asdict(key):
                return None  # another model, weights or preprocessing wrote here: recompute
            features = torch.from_numpy(np.asarray(array[...], dtype=np.float32))
            return Embedding(features, tuple(attrs["input_size"]), tuple(attrs["original_size"]),
                             float(attrs.get("encode_s", 0.0)))
        except Exception:  # an unreadable entry (truncated, foreign) is recomputed, never used
            return None

    def _save(self, key: EmbeddingKey, embedding: Embedding) -> None:
        """Write to a temporary folder, then rename: a crash never leaves a half-written entry."""
        if self.store_dir is None:
            return
        import zarr

        self.store_dir.mkdir(parents=True, exist_ok=True)
        final = self._path(key)
        tmp = self.store_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
        try:
            data = embedding.features.detach().float().cpu().numpy().astype(self.store_dtype)
            array = zarr.open_array(str(tmp), mode="w", shape=data.shape, dtype=self.store_dtype, chunks=data.shape)
            array[...] = data
            array.attrs.update({
                "key": asdict(key),
                "input_size": list(embedding.input_size),
                "original_size": list(embedding.original_size),
                "encode_s": embedding.encode_s,
            })
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except OSError:
            pass  # a read-only or full disk only costs a recompute next session
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

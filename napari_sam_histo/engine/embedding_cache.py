"""Image embeddings, computed once per (image, tile, model) and kept: in memory (LRU bounded in
bytes) and optionally on disk (one zarr array per tile) so they survive a restart.

A key records everything that changes the embedding: image identity, level and tile box, model
name, weights hash and input preprocessing. A disk entry whose recorded key differs from the one
asked for, or that cannot be read, is recomputed and rewritten, never used.

The store may be shared (several processes, a cluster): entries appear and vanish only by atomic
renames, a failed write costs a recompute next time (never the caller's click), and the store is
kept under ``max_disk_bytes`` by evicting the least recently used entries (access = mtime).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB: 256 tiles of SAM's 256x64x64 float32 embedding
DEFAULT_DISK_BYTES = 20 << 30  # 20 GiB: about 5000 float32 (10000 float16) tiles
_RESCAN_S = 60.0  # how stale the disk usage may get before it is measured again (other writers)
_STALE_TMP_S = 3600.0  # a temporary folder this old was left by a crashed writer


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
                 store_dtype: str = "float32", max_disk_bytes: int | None = DEFAULT_DISK_BYTES) -> None:
        """``store_dtype="float16"`` halves the disk store (2 MiB a tile; training caches
        thousands of patches); entries are read back as float32 either way. ``max_disk_bytes``
        bounds the store (None: unbounded); a save beyond it evicts least recently used entries."""
        if store_dtype not in ("float32", "float16"):
            raise ValueError(f"store_dtype must be 'float32' or 'float16', not {store_dtype!r}")
        self.max_bytes = int(max_bytes)
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.store_dtype = store_dtype
        self.max_disk_bytes = None if max_disk_bytes is None else int(max_disk_bytes)
        self._entries: OrderedDict[EmbeddingKey, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # key -> [lock, number of callers holding or waiting on it]; dropped when that reaches 0
        self._key_locks: dict[EmbeddingKey, list] = {}
        self._disk_lock = threading.Lock()
        self._disk_index: dict[str, list] | None = None  # entry name -> [last access, bytes]
        self._disk_scanned_at = 0.0
        self.hits = self.misses = self.disk_hits = 0
        self.save_failures = self.disk_evictions = 0
        self.save_error: str | None = None  # the last failed save, in words (a UI may show it)

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

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], Embedding],
                       device: torch.device | str | None = None) -> Embedding:
        """Memory, then disk, then ``compute()`` (which is called at most once per key at a time).
        ``device``: where the caller runs the decoder; disk entries are read onto the CPU, so
        they (and memory entries held elsewhere) are moved there. A failed save is warned about
        once, never raised: the embedding is still returned and kept in memory."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return _on(entry, device)
        with self._lock:
            slot = self._key_locks.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                entry = self.get(key)  # another thread may have finished it while we waited
                if entry is not None:
                    self.hits += 1
                    return _on(entry, device)
                entry = self._load(key)
                if entry is not None:
                    self.disk_hits += 1
                    entry = _on(entry, device)
                    self.put(key, entry)
                    return entry
                self.misses += 1
                entry = compute()
                if self.store_dir is not None and self.store_dtype == "float16":
                    # the same values as a later read-back, so a run does not depend on whether
                    # the store already held the entry
                    entry = Embedding(entry.features.half().float(), entry.input_size, entry.original_size,
                                      entry.encode_s)
                self.put(key, entry)  # first: a failing disk must not cost the click its embedding
                self._save(key, entry)
                return _on(entry, device)
        finally:
            # also when compute() raised: a later call recomputes and the dict does not grow;
            # waiters still hold ``slot``, so it goes only when the last of them is done
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0 and self._key_locks.get(key) is slot:
                    del self._key_locks[key]

    # -- disk ---------------------------------------------------------------------------------
    def _path(self, key: EmbeddingKey) -> Path:
        return self.store_dir / f"{key.digest()}.zarr"

    def stored(self, key: EmbeddingKey, verify: bool = False) -> bool:
        """Whether the store holds an entry for ``key``: one stat (entries appear only whole, by
        rename, and are named by the key's digest), cheap enough for every click. ``verify`` also
        reads the entry's recorded key (a resume that must not trust a foreign entry)."""
        if self.store_dir is None:
            return False
        path = self._path(key)
        if not verify:
            return path.is_dir()
        return self._recorded_key(path) == asdict(key)  # None when missing, vanished or unreadable

    def store(self, key: EmbeddingKey, embedding: Embedding) -> bool:
        """Write ``embedding`` to the store (atomically, as ``get_or_compute`` does) without keeping
        it in memory: for a batch writer (``cohort.embed``). True when the entry is on disk."""
        return self._save(key, embedding)

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
            if not features.isfinite().all() or not features.any():
                # the entry was moved aside (replaced, evicted) between reading its metadata and its
                # chunk: zarr then answers with the fill value (NaN; 0 in older entries), which no
                # encoder produces. Recompute rather than hand out a blank embedding.
                return None
            entry = Embedding(features, tuple(attrs["input_size"]), tuple(attrs["original_size"]),
                              float(attrs.get("encode_s", 0.0)))
        except Exception:  # noqa: BLE001 - an unreadable entry (truncated, foreign) is recomputed, never used
            return None
        self._touch(path)
        return entry

    def _save(self, key: EmbeddingKey, embedding: Embedding) -> bool:
        """Write to a temporary folder, then rename: a crash or a failed write never leaves a
        half-written entry readable. Any failure (zarr, codec, full or read-only disk) is warned
        about once per cache and otherwise only costs a recompute next session. Another process
        writing the same key at the same moment is no failure: its entry is as good as ours.
        Returns whether the entry is on disk."""
        if self.store_dir is None:
            return False
        final = self._path(key)
        tmp = self.store_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
        trash = self.store_dir / f".{final.name}.{uuid.uuid4().hex}.old.tmp"
        try:
            import zarr

            self.store_dir.mkdir(parents=True, exist_ok=True)
            data = embedding.features.detach().float().cpu().numpy().astype(self.store_dtype)
            if final.exists() and self._recorded_key(final) == asdict(key):
                return True  # another writer stored this very entry: replacing it would only race its readers
            array = zarr.open_array(str(tmp), mode="w", shape=data.shape, dtype=self.store_dtype, chunks=data.shape,
                                    fill_value=np.nan)  # a missing chunk reads as NaN: refused by _load
            array[...] = data
            array.attrs.update({
                "key": asdict(key),
                "input_size": list(embedding.input_size),
                "original_size": list(embedding.original_size),
                "encode_s": embedding.encode_s,
            })
            if final.exists():  # a stale or foreign entry: move it aside whole (a reader of a
                os.replace(final, trash)  # half-deleted zarr would get fill values), then replace
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                return True  # another writer's rename came first (a folder cannot replace a full one)
        except Exception as err:  # noqa: BLE001 - zarr, a codec, a full or read-only disk: a recompute next session
            self._save_failed(err)
            return False
        finally:
            for leftover in (tmp, trash):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        self._touch(final)
        try:
            self._account(final.name, _folder_bytes(final))
        except Exception as err:  # noqa: BLE001 - measuring or evicting failed: the entry itself is fine
            self._save_failed(err)
        return True

    @staticmethod
    def _recorded_key(path: Path) -> dict | None:
        try:
            import zarr

            return dict(zarr.open_array(str(path), mode="r").attrs).get("key")
        except Exception:  # noqa: BLE001 - unreadable or vanished: not a valid entry
            return None

    def _save_failed(self, err: Exception) -> None:
        self.save_failures += 1
        self.save_error = (f"could not save an image embedding to the store folder {self.store_dir} "
                           f"({type(err).__name__}: {err}); it is kept in memory and will be recomputed "
                           "next session")
        if self.save_failures == 1:  # once: a broken store would otherwise warn at every click
            warnings.warn(self.save_error, RuntimeWarning, stacklevel=4)

    # -- disk size limit ----------------------------------------------------------------------
    def _touch(self, path: Path) -> None:
        """Record an access (the entry's mtime) for least-recently-used eviction, here and in
        any other process sharing the store."""
        now = time.time()
        try:
            os.utime(path, (now, now))
        except OSError:
            return  # a read-only store: eviction order is only less exact
        with self._disk_lock:
            if self._disk_index is not None and path.name in self._disk_index:
                self._disk_index[path.name][0] = now

    def _scan(self) -> None:
        """Measure the store as it is on disk (other processes write and evict too); remove
        temporary folders left by crashed writers. Called with ``_disk_lock`` held."""
        index: dict[str, list] = {}
        now = time.time()
        for item in os.scandir(self.store_dir):
            try:
                if item.name.startswith("."):
                    if item.name.endswith(".tmp") and now - item.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(item.path, ignore_errors=True)
                elif item.name.endswith(".zarr") and item.is_dir():
                    index[item.name] = [item.stat().st_mtime, _folder_bytes(item.path)]
            except OSError:
                continue  # vanished while scanned (evicted by another process)
        self._disk_index, self._disk_scanned_at = index, now

    def _account(self, name: str, nbytes: int) -> None:
        """Count a new entry; past ``max_disk_bytes``, evict the least recently used others."""
        if self.max_disk_bytes is None:
            return
        with self._disk_lock:
            if self._disk_index is None or time.time() - self._disk_scanned_at > _RESCAN_S:
                self._scan()
            self._disk_index[name] = [time.time(), nbytes]
            if sum(size for _, size in self._disk_index.values()) <= self.max_disk_bytes:
                return
            self._scan()  # decide on what is really there, with other processes' accesses
            self._disk_index.setdefault(name, [time.time(), nbytes])
            total = sum(size for _, size in self._disk_index.values())
            for victim, (_, size) in sorted(self._disk_index.items(), key=lambda item: item[1][0]):
                if total <= self.max_disk_bytes:
                    break
                if victim == name:
                    continue  # the newest entry stays, even alone over the limit
                aside = self.store_dir / f".{victim}.{uuid.uuid4().hex}.evicted.tmp"
                try:
                    os.replace(self.store_dir / victim, aside)  # atomic: readers see all or nothing
                except OSError:
                    pass  # already gone (another process evicted it)
                else:
                    shutil.rmtree(aside, ignore_errors=True)
                    self.disk_evictions += 1
                del self._disk_index[victim]
                total -= size


def _on(entry: Embedding, device: torch.device | str | None) -> Embedding:
    """``entry`` with its features on ``device`` (itself when they are there already)."""
    if device is None:
        return entry
    features = entry.features.to(device)
    if features is entry.features:
        return entry
    return Embedding(features, entry.input_size, entry.original_size, entry.encode_s)


def _folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names)

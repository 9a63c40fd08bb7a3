import threading
import time

import torch

from napari_sam_histo.engine.embedding_cache import Embedding, EmbeddingCache, EmbeddingKey


def _key(tile="t0", model="m", weights="w"):
    return EmbeddingKey("img", tile, model, weights, "rgb8")


def _emb(value=1.0):
    return Embedding(torch.full((1, 4, 8, 8), value), (8, 8), (8, 8))


def test_lru_is_bounded_in_bytes():
    one = _emb().nbytes
    cache = EmbeddingCache(max_bytes=2 * one)
    for i in range(3):
        cache.put(_key(f"t{i}"), _emb(float(i)))
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert _key("t0") not in cache and _key("t2") in cache
    cache.get(_key("t1"))  # touch: now t2 is the oldest
    cache.put(_key("t3"), _emb())
    assert _key("t1") in cache and _key("t2") not in cache


def test_compute_runs_once_even_for_concurrent_requests():
    cache, calls = EmbeddingCache(), []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return _emb()

    threads = [threading.Thread(target=cache.get_or_compute, args=(_key(), compute)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.misses == 1 and cache.hits == 3


def test_disk_store_survives_a_restart(tmp_path):
    EmbeddingCache(store_dir=tmp_path).get_or_compute(_key(), lambda: _emb(7.0))
    fresh = EmbeddingCache(store_dir=tmp_path)
    loaded = fresh.get_or_compute(_key(), lambda: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert fresh.disk_hits == 1 and torch.all(loaded.features == 7.0) and loaded.input_size == (8, 8)


def test_entry_for_other_weights_is_recomputed_not_used(tmp_path):
    cache = EmbeddingCache(store_dir=tmp_path)
    cache.get_or_compute(_key(weights="old"), lambda: _emb(1.0))
    # Simulate a key collision on disk: the file written for "old" weights sits where "new" looks.
    old_path = cache._path(_key(weights="old"))
    old_path.rename(cache._path(_key(weights="new")))
    fresh = EmbeddingCache(store_dir=tmp_path)
    got = fresh.get_or_compute(_key(weights="new"), lambda: _emb(2.0))
    assert fresh.misses == 1 and torch.all(got.features == 2.0)


def test_unreadable_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(store_dir=tmp_path)
    cache.get_or_compute(_key(), lambda: _emb(1.0))
    for f in cache._path(_key()).rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    fresh = EmbeddingCache(store_dir=tmp_path)
    got = fresh.get_or_compute(_key(), lambda: _emb(3.0))
    assert fresh.misses == 1 and torch.all(got.features == 3.0)
    assert not list(tmp_path.glob(".*.tmp"))


# -- robustness ------------------------------------------------------------------------------
import os  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402


def _break_zarr_writes(monkeypatch):
    """Writes fail after the data is in (a half-written entry), as a numcodecs error would."""
    import zarr

    real = zarr.open_array

    class Exploding:
        def __init__(self, array):
            self._array = array

        def __setitem__(self, index, value):
            self._array[index] = value
            raise RuntimeError("numcodecs: codec exploded")

    def open_array(path, *args, mode="a", **kwargs):
        array = real(path, *args, mode=mode, **kwargs)
        return Exploding(array) if mode == "w" else array

    monkeypatch.setattr(zarr, "open_array", open_array)


def test_failed_save_still_returns_the_embedding_and_warns_once(tmp_path, monkeypatch):
    _break_zarr_writes(monkeypatch)
    cache = EmbeddingCache(store_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="codec exploded") as caught:
        got = cache.get_or_compute(_key("t0"), lambda: _emb(5.0))
    assert torch.all(got.features == 5.0) and _key("t0") in cache
    assert str(tmp_path) in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second failure is not warned again
        assert torch.all(cache.get_or_compute(_key("t1"), lambda: _emb(6.0)).features == 6.0)
    assert cache.save_failures == 2
    monkeypatch.undo()
    # nothing half-written is left readable: a fresh cache recomputes, no temporary folder remains
    fresh = EmbeddingCache(store_dir=tmp_path)
    assert torch.all(fresh.get_or_compute(_key("t0"), lambda: _emb(9.0)).features == 9.0)
    assert fresh.misses == 1 and fresh.disk_hits == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_compute_drops_the_key_lock_and_a_later_call_recomputes():
    cache = EmbeddingCache()

    def fail():
        raise ValueError("reader failed")

    with pytest.raises(ValueError):
        cache.get_or_compute(_key(), fail)
    assert cache._key_locks == {}
    assert torch.all(cache.get_or_compute(_key(), lambda: _emb(2.0)).features == 2.0)
    assert cache._key_locks == {}


def test_waiters_survive_a_failed_compute():
    cache, calls, errors, results = EmbeddingCache(), [], [], []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        if len(calls) == 1:
            raise ValueError("first try fails")
        return _emb(4.0)

    def request():
        try:
            results.append(cache.get_or_compute(_key(), compute))
        except ValueError as err:
            errors.append(err)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one failure, then exactly one recompute shared by the remaining waiters
    assert len(errors) == 1 and len(results) == 3 and len(calls) == 2
    assert cache._key_locks == {}


def test_disk_hits_move_to_the_callers_device(tmp_path):
    EmbeddingCache(store_dir=tmp_path).get_or_compute(_key(), lambda: _emb(7.0))
    fresh = EmbeddingCache(store_dir=tmp_path)
    meta = torch.device("meta")  # stands in for cuda/mps: a device other than the CPU
    got = fresh.get_or_compute(_key(), lambda: _emb(0.0), device=meta)
    assert fresh.disk_hits == 1 and got.features.device == meta
    # a memory entry computed on the CPU, asked for by another device's caller, comes on that device
    cache = EmbeddingCache()
    cache.get_or_compute(_key("t1"), _emb)
    assert cache.get_or_compute(_key("t1"), _emb, device=meta).features.device == meta
    assert cache.get(_key("t1")).features.device.type == "cpu"  # the entry itself stays put


def test_predictor_asks_the_cache_for_its_device(tiny_model):
    import numpy as np

    from napari_sam_histo.engine.predictor import Predictor

    class Recording(EmbeddingCache):
        def get_or_compute(self, key, compute, device=None):
            self.device_asked = device
            return _emb()

    cache = Recording()
    Predictor(tiny_model, "sam", cache=cache, precision="fp32").embedding_for_array(
        np.zeros((16, 16, 3), np.uint8), "img")
    assert cache.device_asked == tiny_model.device


def _entry_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_disk_store_evicts_least_recently_used_entries(tmp_path):
    probe = EmbeddingCache(store_dir=tmp_path / "probe")
    probe.get_or_compute(_key("p"), _emb)
    one = _entry_bytes(probe._path(_key("p")))
    store = tmp_path / "store"
    cache = EmbeddingCache(store_dir=store, max_disk_bytes=int(2.5 * one))
    for tile in ("t0", "t1"):
        cache.get_or_compute(_key(tile), _emb)
        time.sleep(0.02)
    # another process reads t0: it becomes the most recently used
    EmbeddingCache(store_dir=store).get_or_compute(_key("t0"), lambda: (_ for _ in ()).throw(AssertionError()))
    time.sleep(0.02)
    cache.get_or_compute(_key("t2"), lambda: _emb(2.0))
    assert not cache._path(_key("t1")).exists()
    assert cache._path(_key("t0")).exists() and cache._path(_key("t2")).exists()
    assert cache.disk_evictions == 1
    fresh = EmbeddingCache(store_dir=store)
    assert torch.all(fresh.get_or_compute(_key("t2"), lambda: _emb(9.0)).features == 2.0)
    assert fresh.disk_hits == 1
    assert EmbeddingCache().max_disk_bytes == 20 << 30
    assert EmbeddingCache(max_disk_bytes=None).max_disk_bytes is None


def test_stored_is_one_stat_and_verify_reads_the_recorded_key(tmp_path):
    cache = EmbeddingCache(store_dir=tmp_path)
    assert not cache.stored(_key()) and not EmbeddingCache().stored(_key())
    assert cache.store(_key(), _emb(5.0)) and len(cache) == 0  # written, not kept in memory
    assert cache.stored(_key()) and cache.stored(_key(), verify=True)
    cache._path(_key()).rename(cache._path(_key(weights="other")))  # a foreign entry under that name
    assert cache.stored(_key(weights="other")) and not cache.stored(_key(weights="other"), verify=True)
    got = EmbeddingCache(store_dir=tmp_path).get_or_compute(_key(), lambda: _emb(6.0))
    assert torch.all(got.features == 6.0)


def test_a_writer_that_loses_the_rename_race_keeps_the_winners_entry_quietly(tmp_path, monkeypatch):
    import os
    import warnings

    import napari_sam_histo.engine.embedding_cache as module

    winner, real_replace = EmbeddingCache(store_dir=tmp_path), os.replace

    def racing(src, dst):
        if str(src).endswith(".tmp") and ".old." not in str(src):
            monkeypatch.setattr(module.os, "replace", real_replace)
            winner.store(_key(), _emb(3.0))  # another process renames its entry in first
        return real_replace(src, dst)

    monkeypatch.setattr(module.os, "replace", racing)
    loser = EmbeddingCache(store_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loser.store(_key(), _emb(1.0))
    assert loser.save_failures == 0 and sorted(p.name for p in tmp_path.iterdir()) == [loser._path(_key()).name]
    assert torch.all(EmbeddingCache(store_dir=tmp_path)._load(_key()).features == 3.0)


def test_an_entry_whose_chunk_vanished_is_recomputed_not_read_as_blank(tmp_path):
    # another writer moved the entry aside between its metadata and its chunk being read: zarr
    # would answer with the fill value; a blank embedding must never reach a click
    cache = EmbeddingCache(store_dir=tmp_path)
    cache.get_or_compute(_key(), lambda: _emb(1.0))
    chunks = [f for f in cache._path(_key()).rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert chunks
    for f in chunks:
        f.unlink()
    fresh = EmbeddingCache(store_dir=tmp_path)
    got = fresh.get_or_compute(_key(), lambda: _emb(3.0))
    assert fresh.misses == 1 and torch.all(got.features == 3.0)


def test_saving_an_entry_another_writer_already_stored_leaves_it_in_place(tmp_path):
    first = EmbeddingCache(store_dir=tmp_path)
    first.store(_key(), _emb(1.0))
    path = first._path(_key())
    inode = path.stat().st_ino
    assert EmbeddingCache(store_dir=tmp_path).store(_key(), _emb(1.0)) is True
    assert path.stat().st_ino == inode  # not replaced under its readers

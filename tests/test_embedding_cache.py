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

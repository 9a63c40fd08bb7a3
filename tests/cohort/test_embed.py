"""``napari-sam-histo embed`` on a real LocalCluster (2 worker processes): the annotator then runs no
encoder on the slide, an interrupted run resumes, and an annotator may work on the slide meanwhile."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from napari_sam_histo.cli import main
from napari_sam_histo.cohort.cluster import cluster_client
from napari_sam_histo.cohort.embed import run_embed
from napari_sam_histo.cohort.embed_plan import plan_slide
from napari_sam_histo.cohort.store import EMBEDDINGS_ENV, slide_store
from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.slides.reader import open_image

from ..slides.test_tissue import half_glass

TILE = 256
TINY = {"model": "tiny", "random_weights": True, "tile_size": TILE, "progress": False, "log": lambda line: None}


@pytest.fixture(scope="module")
def client():
    with cluster_client("local", 2) as made:
        yield made


@pytest.fixture
def slide(tmp_path):
    """A 768x512 pyramidal TIFF (levels 1 and 1/2), its left half glass."""
    import tifffile

    level0 = half_glass(768, 512)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        for f in (1, 2):
            tif.write(level0[::f, ::f], tile=(128, 128), photometric="rgb", subfiletype=0 if f == 1 else 1)
    return path


def _predictor(model, store):
    return Predictor(model, "sam", cache=EmbeddingCache(store_dir=store), precision="fp32")


def _entries(store):
    return sorted(p.name for p in store.iterdir() if p.name.endswith(".zarr")) if store.exists() else []


def test_the_store_folder_is_the_docks_and_an_environment_variable_moves_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HISTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(EMBEDDINGS_ENV, raising=False)
    assert slide_store("slide:abc").parent == tmp_path / "cache" / "embeddings"
    monkeypatch.setenv(EMBEDDINGS_ENV, str(tmp_path / "shared"))
    assert slide_store("slide:abc").parent == tmp_path / "shared" and len(slide_store("slide:abc").name) == 16
    assert slide_store("slide:abc") != slide_store("slide:abd")


@pytest.mark.slow
def test_an_embedded_slide_runs_no_encoder_in_the_annotator(client, slide, tmp_path, tiny_model):
    summary = run_embed([slide], out=tmp_path / "store", tissue_only=True, client=client, **TINY)
    source = open_image(slide)
    plan = plan_slide(source, str(slide), "auto", None, TILE, tissue_only=True)
    assert summary.ok and summary.computed == len(plan.tiles) == summary.planned and summary.failed == 0
    assert 0 < summary.background < summary.lattice and summary.already == 0
    store = slide_store(source.identity, tmp_path / "store")
    assert len(_entries(store)) == len(plan.tiles)

    predictor = _predictor(tiny_model, store)
    annotator = Annotator(predictor, source, level="auto", tile_size=TILE)
    try:
        for working in annotator.levels:  # every level auto can pick, clicks on the stained half
            for x0, y0 in ((500, 100), (700, 400), (420, 250), (767, 511)):
                annotator.click(x0, y0, downsample=working.downsample)
                annotator.click(x0 - 30, y0 - 20, positive=False, downsample=working.downsample)
                annotator.clear()
    finally:
        annotator.close(wait=True)
    assert predictor.encoder_calls == 0 and predictor.cache.misses == 0 and predictor.cache.disk_hits > 0

    reference = Predictor(tiny_model, "sam", precision="fp32")
    for box in plan.tiles[::3]:  # the workers' embeddings are the single-process encoder's
        got = predictor.cache._load(predictor.key_for(source.identity, box.key()))
        expected = reference.embed(source.read_region(box))
        assert got.original_size == expected.original_size and got.input_size == expected.input_size
        assert torch.allclose(got.features, expected.features, atol=1e-4, rtol=1e-4)
    assert run_embed([slide], out=tmp_path / "store", tissue_only=True, client=client, **TINY).already == len(plan.tiles)


@pytest.mark.slow
def test_an_interrupted_embed_leaves_whole_entries_and_resumes(client, slide, tmp_path, tiny_model):
    root = tmp_path / "store"
    source = open_image(slide)
    store = slide_store(source.identity, root)
    planned = plan_slide(source, str(slide), 0, None, TILE).tiles
    command = [sys.executable, "-m", "napari_sam_histo.cli", "embed", str(slide), "--out", str(root), "--level", "0",
               "--tile-size", str(TILE), "--model", "tiny", "--random-weights", "--workers", "1", "--batch-size", "1",
               "--quiet"]
    env = {**os.environ, "NAPARI_SAM_HISTO_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not _entries(store) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the driver, its scheduler and its worker, mid-run
    run.wait()
    time.sleep(0.5)
    done = _entries(store)
    assert 1 <= len(done) < len(planned), run.stdout.read().decode()[-2000:]

    cache = EmbeddingCache(store_dir=store)
    keys = {cache._path(_predictor(tiny_model, None).key_for(source.identity, b.key())).name: b for b in planned}
    assert set(done) <= set(keys)
    for name in done:  # every entry that is visible is whole and carries its key
        box = keys[name]
        assert cache._load(_predictor(tiny_model, None).key_for(source.identity, box.key())) is not None

    summary = run_embed([slide], out=root, level=0, client=client, **TINY)
    assert summary.ok and summary.already == len(done) and summary.computed == len(planned) - len(done)
    assert len(_entries(store)) == len(planned)


@pytest.mark.slow
def test_an_annotator_and_an_embed_on_the_same_slide_corrupt_nothing(client, slide, tmp_path, tiny_model):
    root = tmp_path / "store"
    source = open_image(slide)
    store = slide_store(source.identity, root)
    planned = plan_slide(source, str(slide), 0, None, TILE).tiles
    result = {}
    embed = threading.Thread(target=lambda: result.update(summary=run_embed(
        [slide], out=root, level=0, batch_size=1, client=client, **TINY)))
    predictor = _predictor(tiny_model, store)
    annotator = Annotator(predictor, source, level=0, tile_size=TILE)
    embed.start()
    try:
        for x0, y0 in ((600, 300), (200, 100), (700, 480), (64, 450)):  # writes lattice tiles the embed writes too
            annotator.prefetch_around(x0, y0).result(timeout=120)
            annotator.submit_click(x0, y0).result(timeout=120)
            annotator.clear()
    finally:
        embed.join(timeout=300)
        annotator.close(wait=True)
    summary = result["summary"]
    assert summary.ok and summary.failed == 0 and summary.already + summary.computed == len(planned)
    assert predictor.cache.save_failures == 0
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")]  # no temporary folder left
    reference = Predictor(tiny_model, "sam", precision="fp32")
    check = EmbeddingCache(store_dir=store)
    for box in planned:
        got = check._load(reference.key_for(source.identity, box.key()))
        assert got is not None, box
        assert torch.allclose(got.features, reference.embed(source.read_region(box)).features, atol=1e-4, rtol=1e-4)


def test_the_command_names_a_bad_slide_and_fails_without_a_traceback(tmp_path, capsys):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide at all")
    code = main(["embed", str(tmp_path / "missing.svs"), str(broken), "--out", str(tmp_path / "store"), "--quiet"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.out + out.err
    assert "missing.svs" in out.err and "broken.svs" in out.err and "2 could not be embedded" in out.out
    assert main(["embed", str(broken), "--level", "coarse"]) == 2
    assert "--level 'coarse'" in capsys.readouterr().err


def _worker_environment():
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def test_local_workers_run_one_thread_each_with_glibcs_own_malloc_settings(client):
    # dask's MALLOC_TRIM_THRESHOLD_=65536 made every MobileSAM tile ~1.8x slower (cohort.cluster)
    assert set(client.run(_worker_environment).values()) == {(None, "1")}
    assert len(client.scheduler_info()["workers"]) == 2


def test_bad_numbers_an_unwritable_store_and_a_missing_gpu_are_named_before_any_work(client, slide, tmp_path):
    from napari_sam_histo.errors import InputError

    for bad, match in (({"batch_size": 0}, "--batch-size"), ({"tile_size": 0}, "--tile-size"),
                       ({"workers": 0}, "--workers")):
        with pytest.raises(InputError, match=match):
            run_embed([slide], out=tmp_path / "s", client=client, **{**TINY, **bad})
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError, match="Cannot write embeddings"):
        run_embed([slide], out=blocked / "store", client=client, **TINY)
    with pytest.raises(InputError, match="offers a GPU"):  # this cluster has none: no hang
        run_embed([slide], out=tmp_path / "s", client=client, **{**TINY, "device": "cuda"})


@pytest.mark.slow
def test_embed_marks_the_store_precomputed(client, slide, tmp_path):
    from napari_sam_histo.cohort.store import is_precomputed

    run_embed([slide], out=tmp_path / "store", tissue_only=True, client=client, **TINY)
    assert is_precomputed(slide_store(open_image(slide).identity, tmp_path / "store"))

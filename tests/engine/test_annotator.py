import threading
import time

import numpy as np
import pytest

from napari_sam_histo.annotations.geometry import rasterize
from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.object_state import combine_tile_masks
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.engine.session import ClickSession
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array

IMAGE = np.random.default_rng(0).integers(0, 255, (1500, 2500, 3), dtype=np.uint8)  # 2500 wide, 1500 high


def _annotator(model, **kwargs):
    predictor = Predictor(model, "sam", cache=EmbeddingCache(), precision="fp32")
    return Annotator(predictor, from_array(IMAGE, "big.png"), level=0, tile_size=1024, **kwargs)


@pytest.fixture(scope="module")
def annotator(tiny_model):
    a = _annotator(tiny_model)
    yield a
    a.close()


@pytest.fixture
def fresh(tiny_model):
    """An annotator with an empty cache: nothing computed, nothing to reuse."""
    a = _annotator(tiny_model)
    yield a
    a.close(wait=True)


def _sessions(annotator):
    return {key: s for key, s in annotator.object.sessions.items() if s.clicks}


def test_an_object_across_a_tile_border_is_one_polygon_not_two():
    left, right = TileBox(0, 0, 0, 100, 100), TileBox(0, 100, 0, 100, 100)
    disk = np.hypot(*np.mgrid[0:100, 0:200][::-1] - np.array([100, 50])[:, None, None]) < 30
    (x, y), joint = combine_tile_masks([left, right], [disk[:, :100], disk[:, 100:]])
    assert (x, y) == (0, 0) and np.array_equal(joint, disk)
    from napari_sam_histo.annotations.geometry import mask_to_polygons

    assert len(mask_to_polygons(joint)) == 1


def test_the_first_click_gets_a_tile_centred_on_it(fresh):
    state = fresh.click(1030, 700)  # next to the grid line x = 1024
    assert state.boxes == (TileBox(0, 1030 - 512, 700 - 512, 1024, 1024),)
    fresh.clear()
    state = fresh.click(2450, 30)  # near the corner: shifted inward, still full-size
    assert state.boxes == (TileBox(0, 2500 - 1024, 0, 1024, 1024),)


def test_later_clicks_inside_the_tile_reuse_it_and_outside_open_a_tile_centred_on_them(fresh):
    first = fresh.click(1030, 700).boxes[0]
    calls = fresh.predictor.encoder_calls
    state = fresh.click(1200, 900, positive=False)  # inside: same tile, no encoder
    state = fresh.click(1200, 700)  # inside, a quarter tile or more from the borders: same tile
    assert state.boxes == (first,) and fresh.predictor.encoder_calls == calls
    state = fresh.click(1700, 800)  # outside the first tile: a new tile centred on it
    second = TileBox(0, 1700 - 512, 800 - 512, 1024, 1024)
    assert set(state.boxes) == {first, second} and fresh.predictor.encoder_calls == calls + 1
    # the new tile starts from the object's earlier clicks that fall inside it, in order
    assert [(c.x + second.x, c.y + second.y, c.positive) for c in fresh.object.sessions[second.key()].clicks] == [
        (1200, 900, False), (1200, 700, True), (1700, 800, True)]
    assert [c[:2] for c in fresh.clicks] == [(1030, 700), (1200, 900), (1200, 700), (1700, 800)]
    (x, y), mask = state.mask  # over both tiles' joint extent
    assert (x, y) == (first.x, first.y) and mask.shape == (second.y + 1024 - first.y, second.x + 1024 - first.x)


def test_a_positive_click_near_an_inner_border_opens_a_tile_too(fresh):
    first = fresh.click(1030, 700).boxes[0]  # x 518..1542
    state = fresh.click(1500, 700)  # inside, 42 px from the right border
    assert len(state.boxes) == 2 and len(_sessions(fresh)[first.key()].clicks) == 2


def test_a_negative_click_goes_to_every_tile_that_holds_it_and_undo_follows(fresh):
    fresh.click(1030, 700)
    fresh.click(1700, 800)
    assert len(_sessions(fresh)) == 2
    fresh.click(1300, 700, positive=False)  # in the overlap of both tiles
    assert [len(s.clicks) for s in _sessions(fresh).values()] == [2, 2]
    fresh.undo()
    assert [len(s.clicks) for s in _sessions(fresh).values()] == [1, 1]
    fresh.undo()  # the click that opened the second tile
    assert len(_sessions(fresh)) == 1 and len(fresh.state().boxes) == 1
    fresh.redo()
    fresh.redo()
    assert [len(s.clicks) for s in _sessions(fresh).values()] == [2, 2]


def test_a_negative_click_outside_the_object_is_only_recorded(fresh):
    fresh.click(600, 600)
    calls = fresh.predictor.encoder_calls
    state = fresh.click(2300, 1300, positive=False)
    assert fresh.predictor.encoder_calls == calls and len(state.boxes) == 1 and len(state.clicks) == 2
    state = fresh.click(2000, 1200)  # a tile opened over it takes it as a prompt
    assert [c.positive for c in _sessions(fresh)[state.boxes[-1].key()].clicks] == [False, True]


def test_a_prefetched_tile_is_reused_when_it_holds_the_click_well(tiny_model):
    a = _annotator(tiny_model)
    try:
        boxes = a.prefetch_around(1030, 700).result(timeout=300)
        assert boxes and boxes == a.prefetch_boxes(1030, 700)
        assert boxes[0] == TileBox(0, 512, 0, 1024, 1024)  # its central half holds (1030, 700)
        calls = a.predictor.encoder_calls
        assert a.click(1030, 700).boxes == (boxes[0],) and a.predictor.encoder_calls == calls
    finally:
        a.close(wait=True)
    always_centred = _annotator(tiny_model, reuse_margin=0.5)
    try:
        always_centred.prefetch_around(1030, 700).result(timeout=300)
        assert always_centred.click(1030, 700).boxes == (TileBox(0, 518, 188, 1024, 1024),)
    finally:
        always_centred.close(wait=True)


def test_prefetch_plans_the_tiles_where_the_object_is_cut(fresh, monkeypatch):
    monkeypatch.setattr(ClickSession, "mask", lambda self: np.ones(self.box.shape, bool))  # fills its tile
    box = fresh.click(1030, 200).boxes[0]  # x 518..1542, y 0..1024: the top is the slide's border
    points = fresh.cut_points()
    assert len(points) == 3  # left, right, bottom; not the top
    assert {round(x) for x, _ in points} >= {518, 1542} and any(round(y) == 1024 for _, y in points)
    planned = fresh.prefetch_boxes(1030, 200)
    for x, y in points:
        assert any(b.contains(x, y) and abs(b.x + 512 - x) <= 1 and b != box for b in planned)


def test_prefetch_waits_for_queued_clicks_and_gives_way_to_a_newer_request(fresh):
    gate = threading.Event()
    blocker = fresh._submit(gate.wait)  # a click that takes as long as we like
    try:
        first = fresh.prefetch_around(100, 100)
        time.sleep(0.5)
        assert fresh.predictor.encoder_calls == 0  # nothing computed while a click is queued
        second = fresh.prefetch_around(2000, 1000)
    finally:
        gate.set()
    blocker.result(timeout=60)
    assert second.result(timeout=300) == fresh.prefetch_boxes(2000, 1000)
    assert first.cancelled() or first.result(timeout=60) == []


def test_listeners_hear_when_an_embedding_is_computed(fresh):
    events = []
    fresh.listeners.append(lambda event, box, purpose: events.append((event, box.key(), purpose)))
    box = fresh.click(300, 300).boxes[0]
    fresh.click(320, 310)  # same tile: nothing computed
    assert events == [("started", box.key(), "click"), ("finished", box.key(), "click")]
    fresh.clear()
    done = fresh.prefetch_around(2000, 1000).result(timeout=300)
    assert [e for e in events[2:] if e[0] == "started"] == [("started", b.key(), "prefetch") for b in done
                                                            if b.key() != box.key()]


@pytest.mark.slow
def test_accept_makes_an_annotation_in_level0(annotator):
    annotator.clear()
    annotator.click(300, 300)
    annotator.click(320, 310)
    expected = annotator.current_mask()
    obj = annotator.accept("Tumor")
    if obj is None:  # the random tiny model may predict nothing; then nothing is accepted
        assert not expected[1].any()
        return
    assert obj.class_name == "Tumor" and obj.clicks == 2 and obj.model == "tiny-random"
    (x, y), mask = expected
    back = rasterize(obj.polygons, (x, y), 1.0, mask.shape)
    assert (back ^ mask).mean() < 0.01
    assert annotator.clicks == [] and not hasattr(annotator, "objects")  # the caller keeps accepted objects


@pytest.mark.slow
def test_accept_and_clear_can_be_undone_through_a_snapshot(annotator):
    annotator.clear()
    annotator.click(300, 300)
    annotator.click(320, 310, positive=False)
    before = annotator.state()
    snapshot = annotator.snapshot()
    annotator.accept("Tumor")
    assert annotator.clicks == [] and annotator.current_mask() is None
    after = annotator.restore(snapshot)
    assert after.clicks == before.clicks and after.boxes == before.boxes
    assert (after.mask[1] == before.mask[1]).all()
    annotator.undo()  # the restored object keeps its own undo history
    assert annotator.clicks == [before.clicks[0]]
    annotator.clear()
    assert annotator.restore(snapshot).clicks == before.clicks  # a snapshot survives a later clear


@pytest.mark.slow
def test_undoable_actions_snapshot_after_the_clicks_queued_before_them(annotator):
    annotator.clear()
    annotator.submit_click(300, 300)
    annotator.submit_click(320, 310)  # still queued when "Enter" is pressed
    accepted = annotator.submit_accept_undoable("Tumor").result(timeout=60)
    assert len(accepted.before.history) == 2  # both clicks are in what undo brings back
    assert annotator.restore(accepted.before).clicks == ((300.0, 300.0, True), (320.0, 310.0, True))
    cleared = annotator.submit_clear_undoable().result(timeout=60)
    assert cleared.result.clicks == () and len(cleared.before.history) == 2


def test_a_hand_edited_mask_replaces_sams_on_accept(annotator):
    annotator.clear()
    annotator.click(300, 300)
    edited = np.zeros((64, 64), bool)
    edited[10:30, 20:50] = True
    obj = annotator.accept("Stroma", edited=((200, 100), edited))
    assert obj is not None and obj.properties["edited"]
    [polygon] = obj.polygons
    x0, y0, x1, y1 = polygon.bounds()
    assert (x0, y0, x1, y1) == (220, 110, 250, 130)  # level 0 == level here (downsample 1)


def test_a_new_class_gets_its_own_colour(annotator):
    assert annotator.add_class("Tumor") == (200, 0, 0)
    color = annotator.add_class("Lymphocytes")
    assert color not in [c for name, c in annotator.classes.items() if name != "Lymphocytes"]


def test_queued_clicks_run_in_order_on_the_worker(annotator):
    annotator.clear()
    futures = [annotator.submit_click(50 + 10 * i, 60) for i in range(4)]
    for f in futures:
        f.result(timeout=60)
    assert [c[0] for c in annotator.clicks] == [50, 60, 70, 80]
    assert annotator.submit_undo().result(timeout=60).clicks == tuple(annotator.clicks)
    assert len(annotator.clicks) == 3 and annotator.idle


def test_prefetch_computes_its_tiles_once(annotator):
    annotator.prefetch_around(100, 100).result(timeout=300)
    calls = annotator.predictor.encoder_calls
    annotator.prefetch_around(100, 100).result(timeout=300)
    assert annotator.predictor.encoder_calls == calls  # all cached now


def test_clicks_outside_the_slide_are_refused(annotator):
    with pytest.raises(InputError, match="outside level 0"):
        annotator.click(2600, 10)


def test_working_level_must_exist(tiny_model):
    with pytest.raises(InputError, match="levels 0..0"):
        Annotator(Predictor(tiny_model, "sam"), from_array(np.zeros((64, 64, 3), np.uint8)), level=2)


def test_a_precomputed_lattice_tile_on_disk_is_reused_and_no_encoder_runs(tiny_model, tmp_path):
    from napari_sam_histo.engine.object_tiles import ObjectTiles

    source = from_array(IMAGE, "big.png")
    writer = Predictor(tiny_model, "sam", cache=EmbeddingCache(store_dir=tmp_path), precision="fp32")
    grid_tiles = ObjectTiles(writer, source, level=0, tile_size=1024).grid
    stored = grid_tiles.lattice_around(1300, 700, 0)[0]  # the lattice tile holding (1300, 700) well: (1024, 0)
    writer.cache.store(writer.key_for(source.identity, stored.key()), writer.embed(source.read_region(stored)))
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(store_dir=tmp_path), precision="fp32")
    tiles = ObjectTiles(predictor, source, level=0, tile_size=1024)
    state = tiles.click(1300, 700)
    assert state.boxes == (stored,) and predictor.encoder_calls == 0 and predictor.cache.disk_hits == 1
    tiles.clear()
    tiles.click(2300, 1300)  # no stored tile holds it: a tile centred on it is computed
    assert predictor.encoder_calls == 1 and tiles.state().boxes[0] == tiles.grid.centred_at(2300, 1300)

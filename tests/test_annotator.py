import numpy as np
import pytest

from napari_sam_histo.annotations.geometry import rasterize
from napari_sam_histo.engine.annotator import Annotator, combine_tile_masks
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.engine.tiles import TileBox
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.reader import from_array


@pytest.fixture(scope="module")
def annotator(tiny_model):
    image = np.random.default_rng(0).integers(0, 255, (1500, 2500, 3), dtype=np.uint8)
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    a = Annotator(predictor, from_array(image, "big.png"), level=0, tile_size=1024)
    yield a
    a.close()


def test_an_object_across_a_tile_border_is_one_polygon_not_two():
    left, right = TileBox(0, 0, 0, 100, 100), TileBox(0, 100, 0, 100, 100)
    disk = np.hypot(*np.mgrid[0:100, 0:200][::-1] - np.array([100, 50])[:, None, None]) < 30
    (x, y), joint = combine_tile_masks([left, right], [disk[:, :100], disk[:, 100:]])
    assert (x, y) == (0, 0) and np.array_equal(joint, disk)
    from napari_sam_histo.annotations.geometry import mask_to_polygons

    assert len(mask_to_polygons(joint)) == 1


def test_clicks_in_two_tiles_continue_one_object_and_undo_follows_them(annotator):
    annotator.clear()
    calls = annotator.predictor.encoder_calls
    annotator.click(1000, 500)  # tile (0, 0)
    annotator.click(1100, 520, positive=False)  # tile (1, 0): the same object continues there
    assert annotator.predictor.encoder_calls - calls == 2
    assert [c[:2] for c in annotator.clicks] == [(1000, 500), (1100, 520)]
    annotator.undo()
    assert len(annotator.clicks) == 1
    annotator.redo()
    assert annotator.clicks[-1] == (1100, 520, False)
    (x, y), mask = annotator.current_mask()
    assert (x, y) == (0, 0) and mask.shape == (1024, 2048)


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
    assert annotator.objects[-1] is obj and annotator.clicks == []


def test_queued_clicks_run_in_order_on_the_worker(annotator):
    annotator.clear()
    futures = [annotator.submit_click(50 + 10 * i, 60) for i in range(4)]
    for f in futures:
        f.result(timeout=60)
    assert [c[0] for c in annotator.clicks] == [50, 60, 70, 80]
    annotator.submit("undo").result(timeout=60)
    assert len(annotator.clicks) == 3


def test_prefetch_computes_the_neighbours_once(annotator):
    for f in annotator.prefetch_around(100, 100):
        f.result(timeout=120)
    calls = annotator.predictor.encoder_calls
    for f in annotator.prefetch_around(100, 100):
        f.result(timeout=120)
    assert annotator.predictor.encoder_calls == calls  # all cached now


def test_clicks_outside_the_slide_are_refused(annotator):
    with pytest.raises(InputError, match="outside level 0"):
        annotator.click(2600, 10)


def test_working_level_must_exist(tiny_model):
    with pytest.raises(InputError, match="levels 0..0"):
        Annotator(Predictor(tiny_model, "sam"), from_array(np.zeros((64, 64, 3), np.uint8)), level=2)

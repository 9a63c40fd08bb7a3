"""One object across working levels: auto level per click, refinement at a finer level, undo."""

import pytest

from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import InputError

from .test_working_levels import _pyramid_source


@pytest.fixture
def auto(tiny_model):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    annotator = Annotator(predictor, _pyramid_source(), level="auto", tile_size=512)
    yield annotator
    annotator.close(wait=True)


def test_auto_follows_the_view_a_ui_passes_with_each_click(auto):
    assert auto.level_for_view(4096, 3000).downsample == 8.0
    state = auto.click(3000, 2000, downsample=8.0)
    (box,) = state.boxes
    assert box.downsample == 8.0 and box.virtual and state.downsample == 8.0
    assert auto.grid.downsample == 8.0  # the working level is the last click's


@pytest.mark.slow
def test_a_finer_click_refines_the_coarse_object_as_one_object_and_undo_steps_back(auto, monkeypatch):
    coarse = auto.click(3000, 2000, downsample=8.0).boxes[0]
    prompts = []
    decode = auto.predictor.decode
    monkeypatch.setattr(auto.predictor, "decode",
                        lambda *a, **k: prompts.append(k.get("mask_input")) or decode(*a, **k))
    state = auto.click(3100, 2050, positive=False, downsample=1.0)  # zoomed in: a negative click on the border
    fine = next(b for b in state.boxes if b.downsample == 1.0)
    assert set(state.boxes) == {coarse, fine}  # one object, two levels
    low_res_frame = (auto.predictor.image_size // 4,) * 2  # SAM's low-res frame
    assert prompts and prompts[0] is not None and tuple(prompts[0].shape[-2:]) == low_res_frame
    assert len(auto.object.sessions[coarse.key()].clicks) == 1  # the coarse tile did not take the fine click
    assert state.downsample == 1.0
    (x, y), mask = state.mask
    assert x * 1.0 <= coarse.x * 8 and (x + mask.shape[1]) >= (coarse.x + coarse.width) * 8  # the whole object
    back = auto.undo()
    assert back.boxes == (coarse,) and back.downsample == 8.0
    again = auto.redo()
    assert set(again.boxes) == {coarse, fine}


@pytest.mark.slow
def test_a_coarse_click_reaches_the_finer_tiles_that_hold_it(auto):
    auto.click(3000, 2000, downsample=8.0)
    fine = next(b for b in auto.click(3100, 2050, downsample=1.0).boxes if b.downsample == 1.0)
    auto.click(3120, 2060, positive=False, downsample=8.0)
    assert len(auto.object.sessions[fine.key()].clicks) == 3  # its own start (2 clicks) and the coarse click


@pytest.mark.slow
def test_the_accepted_object_records_the_finest_level_and_a_fixed_level_refuses_bad_input(auto, tiny_model):
    auto.click(3000, 2000, downsample=8.0)
    auto.click(3010, 2010, downsample=2.0)
    obj = auto.accept("Tumor")
    if obj is not None:  # a random-init model may predict nothing
        assert obj.properties["downsample"] == 2.0
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    with pytest.raises(InputError, match="or 'auto'"):
        Annotator(predictor, _pyramid_source(), level="coarse")


def test_continuation_grows_the_object_into_the_tile_beyond_a_cut_border_and_undo_removes_it(tiny_model,
                                                                                            monkeypatch):
    import numpy as np

    from napari_sam_histo.engine import continuation
    from napari_sam_histo.slides.reader import from_array

    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    image = np.random.default_rng(1).integers(0, 255, (600, 1400, 3), dtype=np.uint8)
    annotator = Annotator(predictor, from_array(image, "wide.png"), level=0, tile_size=512, continuation=True)
    events = []
    annotator.listeners.append(lambda event, box, purpose: events.append((event, purpose)))
    try:
        # the object reaches the first tile's right border at x = 956 (a random model cuts nothing
        # reliably, so the border point is given)
        cuts = iter([[(950.5, 300.5)], [(950.5, 300.5)], [], []])
        monkeypatch.setattr(annotator.object.growth, "cut_points", lambda: next(cuts, []))
        first = annotator.submit_click(700, 300).result()
        annotator.wait_continuation(60)
        state = annotator.state()
        assert len(first.boxes) == 1 and len(state.boxes) == 2  # grown by itself, no click there
        grown = next(b for b in state.boxes if b not in first.boxes)
        assert grown.x < 950.5 < grown.x + grown.width and ("extended", "continuation") in events
        session = annotator.object.sessions[grown.key()]
        assert [(c.x + grown.x, c.positive) for c in session.clicks] == [(700.0, True), (950.5, True)]
        assert annotator.undo().boxes == ()  # the click and the tile it grew into go together
        assert len(annotator.redo().boxes) == 2
    finally:
        annotator.close(wait=True)
    assert continuation.MAX_CONTINUATION_TILES == 8


def _growing(tiny_model, cuts):
    import numpy as np

    from napari_sam_histo.slides.reader import from_array

    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    image = np.random.default_rng(1).integers(0, 255, (600, 1400, 3), dtype=np.uint8)
    annotator = Annotator(predictor, from_array(image, "wide.png"), level=0, tile_size=512, continuation=True)
    annotator.object.growth.cut_points = cuts
    return annotator


def test_an_undo_right_after_a_click_stops_its_continuation_and_redo_brings_the_click_back_whole(tiny_model):
    cuts = iter([[], [(1000.5, 300.5)]])
    annotator = _growing(tiny_model, lambda: next(cuts, []))
    try:
        annotator.submit_click(700, 300).result()
        annotator.wait_continuation(30)
        second = annotator.submit_click(1000, 300)  # schedules a continuation (it waits for idle)
        undone = annotator.submit_undo()  # Ctrl-Z at once
        second.result(), undone.result()
        annotator.wait_continuation(30)
        assert [len(step.keys) for step in annotator.object.history] == [1]  # nothing grew into the undone state
        state = annotator.redo()
        box = next(b for b in state.boxes if b.x > 600)
        assert len(annotator.object.sessions[box.key()].clicks) == 1  # click B is still in its tile
        assert annotator.undo().boxes == state.boxes[:1]
    finally:
        annotator.close(wait=True)


def test_undone_growth_frees_its_budget(tiny_model):
    annotator = _growing(tiny_model, lambda: [(950.5, 300.5)])
    try:
        annotator.submit_click(700, 300).result()
        annotator.wait_continuation(30)
        assert len(annotator.state().boxes) == 2
        annotator.undo()
        annotator.submit_click(700, 300).result()
        annotator.wait_continuation(30)
        assert len(annotator.state().boxes) == 2  # grown again, not counted twice
    finally:
        annotator.close(wait=True)

"""The object grows only inside what the user sees, a click corrects the whole object, and Accept
takes only an object the user has seen whole."""

import numpy as np
import pytest

from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.object_state import BeyondView, box_within, mask_extent
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.reader import from_array

CUT = (950.5, 300.5)  # where the first tile (centred on x=700, 512 wide) is cut by its right border


@pytest.fixture
def growing(tiny_model):
    """A level-0 annotator on a 1400x600 image whose object is cut at ``CUT`` (a random model cuts
    nothing reliably, so the cut is given); continuation is run by hand."""
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    image = np.random.default_rng(1).integers(0, 255, (600, 1400, 3), dtype=np.uint8)
    annotator = Annotator(predictor, from_array(image, "wide.png"), level=0, tile_size=512)
    annotator.object.growth.cut_points = lambda: [CUT]
    yield annotator
    annotator.close(wait=True)


def test_the_object_grows_only_where_the_view_shows_the_cut(growing):
    growing.click(700, 300)
    growing.view = (0, 0, 900, 600)  # the cut border lies right of the view: the user has not seen it
    assert growing.continue_object() == []
    growing.view = (0, 0, 1400, 600)
    [grown] = growing.continue_object()
    assert grown.x < CUT[0] < grown.x + grown.width and len(growing.state().boxes) == 2


def test_a_click_empties_the_grown_tiles_and_growth_starts_again_from_the_new_shape(growing):
    first = growing.click(700, 300)
    [grown] = growing.continue_object()
    before = growing.object.sessions[grown.key()].logits.clone()
    state = growing.click(650, 320, positive=False)  # inside the first tile only
    assert state.boxes == first.boxes  # the grown tile was emptied with the click
    assert growing.object.history[-1].dropped == (grown.key(),) and growing.grown == 0
    assert growing.continue_object() == [grown]  # grown again from the corrected object
    assert len(growing.state().boxes) == 2 and growing.grown == 1
    undone = growing.undo()  # the click, its emptying and its regrowth go together
    assert set(undone.boxes) == {first.boxes[0], grown} and growing.grown == 1
    assert np.array_equal(growing.object.sessions[grown.key()].logits, before)
    assert growing.undo().boxes == ()


def test_no_growth_where_the_tile_spans_the_view(growing):
    growing.view = (0, 0, 1000, 600)  # the 512-px tile spans about the view (as auto's levels do)
    state = growing.click(700, 300)
    [session] = [growing.object.sessions[b.key()] for b in state.boxes]
    assert session.first_mask == "unflooded"  # SAM's smaller candidate when the best one takes the tile
    assert growing.continue_object() == []  # past its border inside the view: a leak, not an object
    growing.view = (0, 0, 1400, 600)  # zoomed out: the tile is a small part of the view
    assert len(growing.continue_object()) == 1


def test_accept_refuses_an_object_reaching_beyond_the_view_and_keeps_it(growing):
    growing.click(300, 300)
    edited = np.zeros((64, 64), bool)
    edited[10:30, 20:50] = True  # level-0 box (220, 110, 250, 130)
    beyond = growing.accept("Tumor", edited=((200, 100), edited), view=(0, 0, 240, 600))
    assert beyond == BeyondView((220.0, 110.0, 250.0, 130.0)) and growing.clicks == [(300.0, 300.0, True)]
    obj = growing.accept("Tumor", edited=((200, 100), edited), view=(0, 0, 1400, 600))
    assert obj.polygons[0].bounds() == (220, 110, 250, 130) and growing.clicks == []


def test_extent_and_within():
    mask = np.zeros((10, 10), bool)
    assert mask_extent(mask, 0, 0, 4.0) is None
    mask[2:4, 5:9] = True
    assert mask_extent(mask, 1, 1, 4.0) == (24.0, 12.0, 40.0, 20.0)
    assert box_within((24, 12, 40, 20), (24, 12, 40, 20)) and not box_within((24, 12, 41, 20), (24, 12, 40, 20))
    assert box_within((24, 12, 41, 20), (24, 12, 40, 20), slack=1)


def test_an_unknown_first_mask_rule_is_refused(tiny_model):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    with pytest.raises(InputError, match="first_mask 'largest'"):
        Annotator(predictor, from_array(np.zeros((64, 64, 3), np.uint8), "a.png"), first_mask="largest")


def test_an_accepted_object_names_the_decoder_as_chosen(tiny_model, growing):
    growing.click(300, 300)
    edited = np.zeros((64, 64), bool)
    edited[10:30, 20:50] = True
    obj = growing.accept("Tumor", edited=((200, 100), edited))
    provenance = growing.predictor.provenance
    assert obj.properties["decoder"] == provenance.decoder and obj.properties["decoder_kind"] == "sam"
    assert obj.properties["model_hash"] == provenance.model_hash


def test_a_tile_much_smaller_than_the_view_takes_sams_own_first_mask(growing):
    growing.view = (0, 0, 1400, 1400)  # a 512-px tile in a 1400-px view: a finer level pinned
    state = growing.click(700, 300)
    assert growing.object.sessions[state.boxes[0].key()].first_mask == "iou"

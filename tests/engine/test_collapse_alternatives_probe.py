"""scripts/collapse-alternatives: the mask made by subtraction, and when it is shown."""

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array
from tests.engine.test_session import _frame, _ScriptedDecoder
from tests.scripts import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("collapse-alternatives")


@pytest.fixture
def square_tile(tiny_model):
    """A 256-px tile: it fills SAM's 256² low-resolution frame, so frame pixel = tile pixel."""
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    box = TileBox(0, 0, 0, 256, 256)
    return predictor, box, predictor.embedding_for(from_array(image, "random.png"), box), predictor.image_size // 4


@pytest.mark.parametrize("variant", ["subtract", "subtract-ties"])
def test_a_negative_click_that_shrinks_the_object_to_its_positive_click(probe, square_tile, monkeypatch, variant):
    """A large first mask; a negative click in its corner makes SAM shrink the mask to a small
    square around the positive click, which honours both clicks. SAM's segment for the complement
    prompt is the corner: the mask before minus the corner honours both clicks too, so it is shown
    only on a tie (``subtract-ties``), and then it keeps the object."""
    predictor, box, embedding, side = square_tile
    large, small = _frame(side, (40, 200, 40, 200)), _frame(side, (50, 70, 50, 70))
    corner = _frame(side, (170, 210, 170, 210))

    def answer(prompted, multimask):
        if prompted:
            return [small] * (3 if multimask else 1), [0.9] * (3 if multimask else 1)
        return ([large] * 3, [0.8, 0.5, 0.4]) if multimask else ([corner], [0.7])

    monkeypatch.setattr(predictor, "decode", _ScriptedDecoder(answer))
    monkeypatch.setattr(probe.ProbeSession, "variant", variant)
    session = probe.ProbeSession(predictor, box, embedding)
    session.add_click(60, 60)
    session.add_click(190, 190, positive=False)
    mask = session.mask()
    if variant == "subtract":
        assert session.fallback is None and mask.sum() == 20 * 20
        return
    assert session.fallback == "subtract"
    assert mask[60, 60] and not mask[190, 190] and mask.sum() == 160 * 160 - 30 * 30
    expected_prompt = torch.minimum(large, -corner)  # the next decode starts from the subtracted logits
    assert torch.equal(session.low_res_logits.reshape(expected_prompt.shape), expected_prompt)

"""Behaviour with the real MobileSAM weights on real H&E (the CC0 CMU-1 region)."""

import numpy as np
import pytest

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.engine.session import ClickSession
from napari_sam_histo.slides.boxes import TileBox

# A small tissue fragment lying alone on the glass (top right of the slide), and its tile.
FRAGMENT_TILE = TileBox(0, 1196, 100, 1024, 1024)
FRAGMENT_CENTRE = (2091 - 1196, 615 - 100)
TISSUE_TILE = TileBox(0, 1024, 1024, 1024, 1024)


@pytest.fixture(scope="module")
def predictor(mobile_sam):
    return Predictor(mobile_sam, "sam", cache=EmbeddingCache(), precision="fp32")


@pytest.mark.slow
def test_positive_click_on_a_separate_fragment_segments_just_that_fragment(predictor, sample_source):
    session = ClickSession.on_tile(predictor, sample_source, FRAGMENT_TILE)
    mask = session.add_click(*FRAGMENT_CENTRE).mask
    x, y = FRAGMENT_CENTRE
    assert mask[y, x], "the mask must contain the click"
    assert 0.0005 < mask.mean() < 0.05, f"mask covers {mask.mean():.3f} of the tile, not just the fragment"
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - y) < 60 and abs(cols.mean() - x) < 60


@pytest.mark.slow
def test_negative_click_removes_area(predictor, sample_source):
    session = ClickSession.on_tile(predictor, sample_source, TISSUE_TILE)
    first = session.add_click(150, 150).mask
    assert first[150, 150] and first.mean() < 0.95
    ys, xs = np.nonzero(first)
    far = np.argmax((ys - 150) ** 2 + (xs - 150) ** 2)  # the mask pixel farthest from the positive click
    second = session.add_click(xs[far], ys[far], positive=False).mask
    assert second.sum() < first.sum()
    assert not second[ys[far], xs[far]]


@pytest.mark.slow
def test_bf16_decoding_matches_fp32(mobile_sam, sample_source, predictor):
    bf16 = Predictor(mobile_sam, "sam", cache=predictor.cache, precision="bf16")
    masks = []
    for p in (predictor, bf16):
        session = ClickSession.on_tile(p, sample_source, TISSUE_TILE)
        session.add_click(150, 150)
        masks.append(session.add_click(700, 300, positive=False).mask)
    iou = (masks[0] & masks[1]).sum() / max((masks[0] | masks[1]).sum(), 1)
    assert iou > 0.98

"""The engine's protocols (``engine.protocols``) are what the product's classes implement: the
predictor and its embedding store, a decode's result, a click session as the learners read it."""

import inspect

import numpy as np
import pytest

from napari_sam_histo.engine import protocols
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.engine.session import Click, ClickSession
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array


def _methods(protocol) -> dict:
    return {name: member for name, member in vars(protocol).items()
            if inspect.isfunction(member) and (not name.startswith("_") or name in ("__contains__", "__call__"))}


def _same_parameters(protocol, implementation) -> None:
    """Every method of ``protocol`` takes the parameters the implementation's does, by name and in order."""
    for name, method in _methods(protocol).items():
        declared = list(inspect.signature(method).parameters)
        real = list(inspect.signature(getattr(type(implementation), name)).parameters)
        assert declared == real, (protocol.__name__, name, declared, real)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


def test_the_predictor_and_its_cache_are_what_the_engine_takes(predictor):
    assert isinstance(predictor, protocols.TilePredictor)
    assert isinstance(predictor.cache, protocols.EmbeddingStore)
    _same_parameters(protocols.TilePredictor, predictor)
    _same_parameters(protocols.EmbeddingStore, predictor.cache)


def test_a_decode_and_a_click_session_are_what_the_learners_read(predictor):
    source = from_array(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "small.png")
    session = ClickSession.on_tile(predictor, source, TileBox(0, 0, 0, 64, 64))
    session.add_click(30, 30, True)
    decoded = predictor.decode(session.embedding, np.array([[30.0, 30.0]]), np.array([1]))
    assert isinstance(decoded, protocols.Decoded)
    assert isinstance(session, protocols.ClickedTile)
    assert isinstance(session.clicks[0], protocols.TileClick) and isinstance(Click(1.0, 2.0), protocols.TileClick)


def test_an_object_without_the_members_is_refused():
    assert not isinstance(object(), protocols.TilePredictor)
    assert not isinstance(object(), protocols.EmbeddingStore)

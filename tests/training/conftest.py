"""Fixtures of the decoder training tests: SAM's decoder on the tiny random model, and disc images
embedded by it as training examples."""

import pytest

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.training.examples import AdaptationExample

from ..discs import disc_image


@pytest.fixture(scope="module")
def predictor(tiny_model):
    """SAM's decoder on the tiny random model, fp32, with an embedding cache of its own per test module."""
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


@pytest.fixture(scope="module")
def examples(request, predictor):
    """Discs of growing radius at shifting centres, embedded by ``predictor``: as many as the test
    module's ``DISC_EXAMPLES``."""
    out = []
    for i in range(request.module.DISC_EXAMPLES):
        image, target = disc_image(96, centre=(40 + 3 * i, 45 + 2 * i), radius=15 + 2 * i, seed=i)
        out.append(AdaptationExample(predictor.embed(image), target))
    return out

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


@pytest.fixture()
def shipped_modified(predictor, tmp_path, monkeypatch):
    """A "shipped" modified decoder for the tiny model (the package ships one for MobileSAM only)."""
    import napari_sam_histo.models.decoders as decoders
    from napari_sam_histo.models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint
    from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder

    model = predictor.model
    module = ModifiedMaskDecoder.from_sam_decoder(model.sam.mask_decoder)
    path = save_decoder_checkpoint(tmp_path / "decoder-modified-tiny.pt", module,
                                   decoder_metadata("modified", model.name, model.weights_hash, "test", True))
    monkeypatch.setattr(decoders, "shipped_decoder_path", lambda base, kind="modified": path)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

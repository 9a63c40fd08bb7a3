"""The predictor's preprocessing of a tile: a read-only array (a cached slide region) is preprocessed
without a warning in the user's console, into the same input as a writable one, and is left
read-only."""

import warnings

import numpy as np
import torch


def test_a_read_only_tile_is_preprocessed_without_a_warning(tiny_model):
    from napari_sam_histo.engine.predictor import Predictor

    predictor = Predictor(tiny_model, "sam", precision="fp32")
    tile = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    read_only = tile.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, resized, original = predictor.preprocess(read_only)
    assert original == (40, 60)
    assert torch.equal(pixels, predictor.preprocess(tile)[0])
    assert not read_only.flags.writeable  # the caller's array is left as it was

"""A click's mask logits upscaled to the tile on the CPU (OpenCV) as PyTorch's ``restore_logits``
does: square tiles, tiles smaller than the model's input, larger ones and non-square ones."""

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.predictor import restore_logits, restore_logits_cpu


@pytest.mark.parametrize("original", [(1024, 1024), (700, 500), (2048, 1536), (300, 1024), (1024, 37)])
def test_the_cpu_upscale_is_pytorchs(original):
    scale = 1024 / max(original)
    input_size = (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))
    low = 5 * torch.randn(256, 256, generator=torch.Generator().manual_seed(sum(original)))
    expected = restore_logits(low, 1024, input_size, original).numpy()
    got = restore_logits_cpu(low.numpy(), 1024, input_size, original)
    assert got.shape == expected.shape == original and got.dtype == np.float32
    assert np.allclose(got, expected, rtol=0, atol=1e-5)


def test_the_predictor_upscales_on_the_cpu_through_it(tiny_model, monkeypatch):
    from napari_sam_histo.engine import predictor as predictor_module
    from napari_sam_histo.engine.embedding_cache import Embedding

    calls = []
    original = predictor_module.restore_logits_cpu

    def recording(*args):
        calls.append(args[1:])
        return original(*args)

    monkeypatch.setattr(predictor_module, "restore_logits_cpu", recording)
    predictor = predictor_module.Predictor(tiny_model, "sam", precision="fp32")
    embedding = Embedding(torch.zeros(1, 1, 1, 1), (1024, 800), (512, 400))
    out = predictor.upscale(embedding, torch.randn(256, 256, dtype=torch.bfloat16))
    assert calls == [(predictor.image_size, (1024, 800), (512, 400))]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (512, 400)

"""The Winograd form of a 3x3 convolution measured by scripts/winograd-conv-probe computes the same
convolution (so its timings compare like with like)."""

import torch
from torch import nn

from tests.scripts import load_script


def test_winograd_form_equals_the_convolution():
    probe = load_script("winograd-conv-probe")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        assert torch.allclose(probe.WinogradConv3x3(conv)(x), conv(x), atol=1e-5)


def test_only_the_chosen_blocks_change():
    probe = load_script("winograd-conv-probe")
    from napari_sam_histo.models.modified_decoder import ConvBlock, UpConvBlock

    upsampling = nn.Sequential(UpConvBlock(32), ConvBlock(16, upsample=False)).eval()
    changed = probe.with_winograd(upsampling, {1})
    assert isinstance(changed[1].conv1, probe.WinogradConv3x3)
    assert isinstance(changed[0].conv1, nn.Conv2d) and isinstance(upsampling[1].conv1, nn.Conv2d)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        assert torch.allclose(changed(x), upsampling(x), atol=1e-4)

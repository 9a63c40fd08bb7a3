import torch
from torch import nn

from napari_sam_histo.models.modified_decoder import ConvBlock, GlobalSelfAttention, ModifiedMaskDecoder


def _prompts(sam, points, labels, mask=None):
    return sam.prompt_encoder(points=(torch.tensor([points], dtype=torch.float32), torch.tensor([labels])),
                              boxes=None, masks=mask)


def test_architecture_follows_kim_et_al(tiny_model):
    decoder = ModifiedMaskDecoder.from_sam_decoder(tiny_model.sam.mask_decoder)
    assert not hasattr(decoder, "output_hypernetworks_mlps")  # no token x embedding dot product
    assert isinstance(decoder.global_attention, GlobalSelfAttention)
    blocks = list(decoder.upsampling)
    assert [b.up is not None for b in blocks] == [True, True, False]  # UpConv, UpConv, Conv
    c = decoder.transformer_dim
    assert [b.conv2.out_channels for b in blocks] == [c // 2, c // 4, c // 8]  # second conv halves
    assert all(isinstance(b.norm1, nn.InstanceNorm2d) for b in blocks)
    assert decoder.mask_head.kernel_size == (1, 1) and decoder.mask_head.out_channels == 1


def test_transformer_starts_as_a_copy_of_sams(tiny_model):
    sam_decoder = tiny_model.sam.mask_decoder
    decoder = ModifiedMaskDecoder.from_sam_decoder(sam_decoder)
    for (name, a), (_, b) in zip(sam_decoder.transformer.state_dict().items(), decoder.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    assert decoder.transformer is not sam_decoder.transformer  # a copy: training it leaves SAM's alone


def test_output_is_one_low_res_mask_that_depends_on_the_prompt(tiny_model):
    sam = tiny_model.sam
    decoder = ModifiedMaskDecoder.from_sam_decoder(sam.mask_decoder).eval()
    embedding = torch.randn(1, decoder.transformer_dim, 64, 64)
    with torch.no_grad():
        pe = sam.prompt_encoder.get_dense_pe()
        masks_a, iou = decoder(embedding, pe, *_prompts(sam, [[100.0, 100.0]], [1]), multimask_output=True)
        masks_b, _ = decoder(embedding, pe, *_prompts(sam, [[900.0, 800.0]], [0]))
    assert masks_a.shape == (1, 1, 256, 256) and iou.shape == (1, 1)
    assert not torch.allclose(masks_a, masks_b)


def test_gradients_reach_the_transformer_and_the_new_layers(tiny_model):
    sam = tiny_model.sam
    decoder = ModifiedMaskDecoder.from_sam_decoder(sam.mask_decoder).train()
    sparse, dense = _prompts(sam, [[10.0, 20.0]], [1])
    masks, _ = decoder(torch.randn(1, decoder.transformer_dim, 64, 64), sam.prompt_encoder.get_dense_pe(),
                       sparse.detach(), dense.detach())
    masks.mean().backward()
    assert decoder.transformer.layers[0].self_attn.q_proj.weight.grad is not None
    assert decoder.upsampling[0].conv1.weight.grad.abs().sum() > 0
    assert decoder.global_attention.q_proj.weight.grad.abs().sum() > 0


def test_block_shortcut_and_upsampling_shapes():
    block = ConvBlock(16, upsample=True)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 8, 16, 16)
    assert ConvBlock(16, upsample=False)(torch.randn(1, 16, 8, 8)).shape == (1, 8, 8, 8)

"""SAM network shapes by architecture name, and telling the architecture from a state dict.

``vit_b``/``vit_l``/``vit_h`` come from segment-anything, ``vit_t`` (MobileSAM) from mobile_sam.
``tiny`` is a random-init SAM of our own, small enough for tests and timing mechanics; it is never
offered for real segmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch

from ..errors import CheckpointError

SAM_ARCHITECTURES = ("vit_t", "vit_b", "vit_l", "vit_h")

# Patch-embedding width of each ViT encoder, as stored in
# ``image_encoder.patch_embed.proj.weight`` (out channels).
_VIT_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def build_sam(arch: str) -> torch.nn.Module:
    """A SAM network of architecture ``arch`` with random weights, in eval mode."""
    if arch == "vit_t":
        from mobile_sam import sam_model_registry as mobile_registry

        return mobile_registry["vit_t"]().eval()
    if arch in ("vit_b", "vit_l", "vit_h"):
        from segment_anything import sam_model_registry

        return sam_model_registry[arch]().eval()
    if arch == "tiny":
        return build_tiny_sam()
    raise CheckpointError(f"Unknown SAM architecture {arch!r}; expected one of {', '.join(SAM_ARCHITECTURES)}.")


def build_tiny_sam(embed_dim: int = 32, seed: int = 0) -> torch.nn.Module:
    """A 1-block ViT SAM with ``embed_dim``-wide prompts: the same tensor shapes as a real SAM
    (1024 input, 64x64 embedding grid, 256x256 low-res masks) at a fraction of the cost."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=1, embed_dim=32, img_size=1024, mlp_ratio=2,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=1, patch_size=16,
                qkv_bias=True, use_rel_pos=False, global_attn_indexes=(), window_size=8,
                out_chans=embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=embed_dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=embed_dim, mlp_dim=64, num_heads=2),
                transformer_dim=embed_dim, iou_head_depth=2, iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return sam.eval()


def detect_architecture(state: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> str:
    """Name the SAM architecture a state dict belongs to, or raise naming ``source``."""
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is not None:
        arch = _VIT_WIDTH.get(int(proj.shape[0]))
        if arch is None:
            raise CheckpointError(
                f"{source}: image encoder width {proj.shape[0]} matches no SAM architecture "
                f"(vit_b 768, vit_l 1024, vit_h 1280)."
            )
        return arch
    # MobileSAM's TinyViT starts with a conv stem and has no ViT patch projection.
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return "vit_t"
    if any(key.startswith("mask_decoder.") for key in state) and not any(
        key.startswith("image_encoder.") for key in state
    ):
        raise CheckpointError(f"{source} holds only decoder weights, not a whole SAM model.")
    raise CheckpointError(f"{source} does not look like a SAM checkpoint (no image-encoder weights found).")

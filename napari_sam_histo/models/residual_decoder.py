"""SAM's decoder plus a learned correction: Kim et al.'s idea that keeps SAM's generality.

Kim et al.'s modified decoder (``modified_decoder.py``) replaces SAM's mask head by global
self-attention and a deeper convolutional upsampling path. Trained on one histology dataset it
wins there and loses elsewhere (our GlaS glands: NoC@85 5.4 -> 20). This variant keeps SAM's
decoder, frozen and exactly as shipped, and adds the modified path as a *correction* of SAM's mask
logits: ``logits = sam_logits + correction(...)``. The correction's last layer starts at zero, so
an untrained residual decoder is exactly zero-shot SAM (tested), and training can only move away
from SAM as far as the data pays for.

The correction sees what SAM's mask head sees, and SAM's answer:

* the image tokens after SAM's two-way transformer (prompt-aware), directly and through one global
  self-attention layer (the modified decoder's layer: SAM-style post-norm, positional encoding on
  queries and keys; here one head over a 32-wide projection, on the tokens pooled to 32x32, which
  costs a sixteenth of attending over all 4096: the CPU-trainable choice);
* SAM's upscaled embedding (32 channels at 256x256, what SAM's hypernetwork reads);
* the SAM mask logits being corrected, at each scale (so it learns where SAM is wrong).

Then conv blocks at 64x64 and 128x128 with a 2x2 up-convolution between them (the modified
decoder's UpConv idea at a quarter of its width: under 1 GMAC per mask instead of ~12), a
zero-initialised 1x1 conv to a logit offset at 128x128, bilinearly upsampled to 256x256. Output: SAM's 256x256
low-resolution shape, so the
result feeds the next click's mask prompt exactly as SAM's logits do.

Multimask: with ``multimask_output=True`` SAM's three masks are each corrected (the correction
depends on the mask it corrects) and SAM's IoU predictions are returned unchanged, so the first
click ranks its candidates exactly as training did (``forward_best``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .modified_decoder import GlobalSelfAttention

LOGIT_SCALE = 10.0  # SAM's logits span about +-20; the correction sees them scaled to ~+-2


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels),
                         nn.GELU())


class CorrectionHead(nn.Module):
    """Logit offset (N, 1, 256, 256) from SAM's image tokens, upscaled embedding and logits."""

    def __init__(self, dim: int = 256, upscaled_dim: int = 32, width: int = 64) -> None:
        super().__init__()
        self.attention = GlobalSelfAttention(dim, num_heads=1, downsample_rate=8)
        self.attention_out = nn.Conv2d(dim, width, 1)
        self.reduce = nn.Conv2d(dim, width, 1)
        self.block64 = nn.Sequential(_conv_block(width + 1, width), _conv_block(width, width))
        self.up128 = nn.ConvTranspose2d(width, width // 2, 2, stride=2)
        self.mix128 = nn.Sequential(nn.Conv2d(width // 2 + upscaled_dim + 1, width // 2, 1), nn.GELU())
        self.block128 = nn.Sequential(_conv_block(width // 2, width // 2), _conv_block(width // 2, width // 2))
        self.out = nn.Conv2d(width // 2, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, upscaled: torch.Tensor,
                logits: torch.Tensor) -> torch.Tensor:
        n, hw, c = tokens.shape
        side = int(round(hw ** 0.5))
        grid = tokens.transpose(1, 2).reshape(n, c, side, side)
        # global attention over a 32x32 grid of the tokens (a quarter of them: 16x less work than
        # over all 4096 while still relating every part of the tile to every other)
        pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        pooled_pos = F.avg_pool2d(pos.transpose(1, 2).reshape(n, c, side, side), 2).flatten(2).transpose(1, 2)
        context = self.attention(pooled, pooled_pos).transpose(1, 2).reshape(n, c, side // 2, side // 2)
        context = F.interpolate(self.attention_out(context), scale_factor=2, mode="nearest")
        m = logits.clamp(-2 * LOGIT_SCALE, 2 * LOGIT_SCALE) / LOGIT_SCALE
        x = self.block64(torch.cat([self.reduce(grid) + context, F.avg_pool2d(m, 4)], 1))
        x = self.mix128(torch.cat([self.up128(x), F.avg_pool2d(upscaled, 2), F.avg_pool2d(m, 2)], 1))
        x = self.block128(x)
        # the offset is made at 128x128 and upsampled: SAM's own 256x256 logits keep the fine
        # detail (nuclei, gland borders); the correction moves regions (a 4x cheaper last stage)
        return F.interpolate(self.out(x), scale_factor=2, mode="bilinear", align_corners=False)


def sam_mask_parts(d: nn.Module, image_embeddings, image_pe, sparse, dense):
    """SAM's ``predict_masks`` (all four masks and IoUs) with image i paired with prompt set i when
    the batches match and one image repeated for every prompt set otherwise; also the image tokens,
    the positional encoding (as broadcast) and the upscaled embedding, which a correction may read."""
    batch = sparse.shape[0]
    output_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1).to(sparse.dtype), sparse), dim=1)
    src = image_embeddings if image_embeddings.shape[0] == batch else image_embeddings.expand(batch, -1, -1, -1)
    src = src + dense
    pos = image_pe if image_pe.shape[0] == batch else image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, image_tokens = d.transformer(src, pos, tokens)
    upscaled = d.output_upscaling(image_tokens.transpose(1, 2).reshape(b, c, h, w))
    mask_tokens_out = hs[:, 1:1 + d.num_mask_tokens, :]
    hyper = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(d.output_hypernetworks_mlps)], 1)
    b, c2, h2, w2 = upscaled.shape
    masks = (hyper @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
    return masks, d.iou_prediction_head(hs[:, 0, :]), image_tokens, pos, upscaled


class ResidualMaskDecoder(nn.Module):
    """Drop-in for SAM's ``MaskDecoder``: SAM's (frozen) masks plus a trained correction."""

    kind = "residual"

    def __init__(self, sam_decoder: nn.Module, correction: CorrectionHead | None = None) -> None:
        super().__init__()
        self.sam_decoder = sam_decoder
        dim = sam_decoder.transformer_dim
        self.correction = correction if correction is not None else CorrectionHead(dim, dim // 8)
        for parameter in self.sam_decoder.parameters():
            parameter.requires_grad_(False)

    @classmethod
    def from_sam_decoder(cls, sam_decoder: nn.Module) -> ResidualMaskDecoder:
        """A copy of ``sam_decoder`` (so the base model's own decoder is never changed) plus an
        untrained, zero-output correction."""
        device = sam_decoder.iou_token.weight.device
        return cls(copy.deepcopy(sam_decoder)).to(device)

    def _sam_parts(self, image_embeddings, image_pe, sparse, dense):
        """SAM's ``predict_masks``, with image i paired with prompt set i when the batches match
        (training) and one image repeated for every prompt set otherwise (SAM's own use); also
        returns what the correction reads (image tokens, positional encoding, upscaled embedding)."""
        masks, iou, image_tokens, pos, upscaled = sam_mask_parts(self.sam_decoder, image_embeddings, image_pe,
                                                                 sparse, dense)
        return masks, iou, image_tokens, pos.flatten(2).transpose(1, 2), upscaled

    def _corrected(self, masks, tokens, pos, upscaled) -> torch.Tensor:
        """Each of the ``k`` masks of every prompt set plus its own correction."""
        b, k = masks.shape[:2]
        if k == 1:
            return masks + self.correction(tokens, pos, upscaled, masks)
        rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
        delta = self.correction(rep(tokens), rep(pos), rep(upscaled), masks.reshape(b * k, 1, *masks.shape[2:]))
        return masks + delta.reshape(masks.shape)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # SAM's part is frozen: no graph for it, also while training
            masks, iou, tokens, pos, upscaled = self._sam_parts(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou = masks[:, chosen], iou[:, chosen]
        return self._corrected(masks, tokens, pos, upscaled), iou

    def forward_best(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool) -> torch.Tensor:
        """(B, 1, 256, 256): with ``multimask_output`` SAM's candidate of highest predicted IoU,
        corrected (what the first click returns at inference, at a third of the cost); else the
        single mask, corrected."""
        with torch.no_grad():
            masks, iou, tokens, pos, upscaled = self._sam_parts(image_embeddings, image_pe, sparse, dense)
            if multimask_output:
                best = iou[:, 1:].argmax(dim=1) + 1
                masks = masks[torch.arange(masks.shape[0], device=masks.device), best][:, None]
            else:
                masks = masks[:, :1]
        return self._corrected(masks, tokens, pos, upscaled)

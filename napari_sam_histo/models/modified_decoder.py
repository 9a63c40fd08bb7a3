"""The modified mask decoder of Kim et al. (2023), §2.3 and Fig. 2c.

SAM's decoder predicts a mask as the dot product of a hypernetwork-transformed output token with
an upscaled image embedding; Kim et al. replace that with (1) one global self-attention layer over
the image-embedding tokens after SAM's two-way transformer and (2) a deeper convolutional upsampling
path: UpConvBlock, UpConvBlock, ConvBlock, then a 1x1 conv to mask logits. There is no dot product
between the output token and the image embedding.

The authors published no code; where the paper is silent we chose, and say so here:

* How the prompts reach the upsampling path: only through the two-way transformer, whose
  image-to-token cross-attention writes the prompt into the image tokens. The upsampling path then
  sees the transformer's updated image embedding alone. The token set is SAM's IoU token, one mask
  token (SAM's single-mask token) and the prompt tokens; the IoU head is kept so the decoder still
  reports a quality estimate.
* Initialisation: the two-way transformer, tokens and IoU head start as copies of the base model's
  SAM decoder (``from_sam_decoder``); the new layers start at random.
* Global self-attention: SAM's post-norm style (``x = LayerNorm(x + Attn(x + pe, x + pe, x))``,
  positional encoding added to queries and keys as SAM's attention layers do), through PyTorch's
  SDPA. It attends over all 64x64 = 4096 tokens, so its cost grows with the internal width: we
  project to a quarter of the embedding (64 for SAM's 256, ``downsample_rate=4``) in one head,
  which measured ~30 ms per click on a 2-core CPU against ~60-75 ms for SAM's usual half width
  (and ~7 ms less than 2 heads of 32).
* Inside a block: conv3x3 (C->C) -> InstanceNorm -> GELU -> conv3x3 (C->C/2) -> InstanceNorm,
  plus the shortcut (1x1 conv C->C/2 of the block input), -> GELU. An UpConvBlock then applies the
  2x2 transposed conv (stride 2) -> InstanceNorm -> GELU. The convs run before the upsampling so
  the 3x3 work happens at the lower resolution (about 2x cheaper than upsampling first).
* Widths: 256x64x64 -> 128x128x128 -> 64x256x256 -> 32x256x256 -> 1x256x256. The output has SAM's
  low-resolution mask shape (256x256), so it is a drop-in: its logits feed the next click's mask
  prompt exactly as SAM's do.
* One mask per prompt set: ``multimask_output`` is accepted for interface compatibility and ignored.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


class GlobalSelfAttention(nn.Module):
    """Self-attention over all image-embedding tokens, residual + LayerNorm (SAM's style)."""

    def __init__(self, dim: int, num_heads: int = 1, downsample_rate: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.internal_dim = dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}.")
        self.q_proj = nn.Linear(dim, self.internal_dim)
        self.k_proj = nn.Linear(dim, self.internal_dim)
        self.v_proj = nn.Linear(dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        query = tokens + pos
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(query)), self._heads(self.v_proj(tokens))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[1], self.internal_dim)
        return self.norm(tokens + self.out_proj(out))


class ConvBlock(nn.Module):
    """Two 3x3 convs, the second halving the channels, with a 1x1 shortcut; optionally then a
    2x2 transposed conv that doubles the resolution (that makes it an UpConvBlock)."""

    def __init__(self, channels: int, upsample: bool) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = nn.Conv2d(channels, half, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(half, affine=True)
        self.shortcut = nn.Conv2d(channels, half, 1)
        self.up = nn.ConvTranspose2d(half, half, 2, stride=2) if upsample else None
        self.norm_up = nn.InstanceNorm2d(half, affine=True) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        y = F.gelu(self.norm2(self.conv2(y)) + self.shortcut(x))
        if self.up is not None:
            y = F.gelu(self.norm_up(self.up(y)))
        return y


class UpConvBlock(ConvBlock):
    """Kim et al.'s UpConvBlock: a ConvBlock followed by the 2x2 up-convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, upsample=True)


class ModifiedMaskDecoder(nn.Module):
    """Drop-in replacement for SAM's ``MaskDecoder`` (same forward signature and output shapes)."""

    kind = "modified"

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        iou_head: nn.Module,
        num_iou_outputs: int = 4,
        attention_heads: int = 1,
        attention_downsample: int = 4,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_token = nn.Embedding(1, transformer_dim)
        self.iou_prediction_head = iou_head
        self.num_iou_outputs = num_iou_outputs
        self.global_attention = GlobalSelfAttention(transformer_dim, attention_heads, attention_downsample)
        c = transformer_dim
        self.upsampling = nn.Sequential(UpConvBlock(c), UpConvBlock(c // 2), ConvBlock(c // 4, upsample=False))
        self.mask_head = nn.Conv2d(c // 8, 1, 1)

    @classmethod
    def from_sam_decoder(cls, sam_decoder: nn.Module) -> ModifiedMaskDecoder:
        """A new modified decoder whose transformer, tokens and IoU head copy ``sam_decoder``'s."""
        head = copy.deepcopy(sam_decoder.iou_prediction_head)
        decoder = cls(
            sam_decoder.transformer_dim,
            copy.deepcopy(sam_decoder.transformer),
            head,
            num_iou_outputs=head.layers[-1].out_features,
        )
        with torch.no_grad():
            decoder.iou_token.weight.copy_(sam_decoder.iou_token.weight)
            decoder.mask_token.weight.copy_(sam_decoder.mask_tokens.weight[:1])
        device = sam_decoder.iou_token.weight.device
        return decoder.to(device)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings), dim=1)
        src = image_embeddings
        if src.shape[0] != batch:
            src = torch.repeat_interleave(src, batch, dim=0)
        src = src + dense_prompt_embeddings
        pos = torch.repeat_interleave(image_pe, batch, dim=0) if image_pe.shape[0] != batch else image_pe
        b, c, h, w = src.shape

        hs, image_tokens = self.transformer(src, pos, tokens)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, :1]

        image_tokens = self.global_attention(image_tokens, pos.flatten(2).transpose(1, 2))
        feature_map = image_tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.mask_head(self.upsampling(feature_map)), iou_pred

"""One forward pass of prompts through SAM's prompt encoder and a decoder, batched over images.

SAM's own ``MaskDecoder.predict_masks`` repeats one image embedding for every prompt set (it was
written for many prompts on one image); training wants one prompt set per image, so the SAM
decoder's forward is restated here without the repeat (``sam_decoder_batched``, checked against
SAM's forward in the tests). Our modified decoder already accepts a batch of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.predictor import restore_logits
from ..evaluation.clicker import AutoClick


@dataclass
class ImageGeometry:
    """How an image maps into the model input: resized (h, w) and original (h, w)."""

    input_size: tuple[int, int]
    original_size: tuple[int, int]


def sam_decoder_batched(decoder, image_embeddings, image_pe, sparse, dense) -> torch.Tensor:
    """SAM's decoder with the embedding of image i paired with prompt set i; single-mask output
    (the first mask token, what SAM returns with ``multimask_output=False``), (B, 1, 4h, 4w)."""
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1).to(sparse.dtype), sparse), dim=1)
    src = image_embeddings + dense
    pos = image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    mask_token_out = hs[:, 1, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](mask_token_out)
    b, c, h, w = upscaled.shape
    return (hyper[:, None, :] @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)


def encode_clicks(clicks: list[list[AutoClick]], geometry: list[ImageGeometry], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Point coordinates in model-input pixels (B, N, 2) and labels (B, N); every image must have
    the same number of clicks (padding tokens would change what the decoder attends to)."""
    n = len(clicks[0])
    if any(len(c) != n for c in clicks):
        raise ValueError("encode_clicks needs the same number of clicks for every image")
    coords = np.zeros((len(clicks), n, 2), np.float32)
    labels = np.zeros((len(clicks), n), np.int64)
    for i, (sample_clicks, geo) in enumerate(zip(clicks, geometry)):
        scale_x = geo.input_size[1] / geo.original_size[1]
        scale_y = geo.input_size[0] / geo.original_size[0]
        for j, click in enumerate(sample_clicks):  # same scaling as Predictor.decode
            coords[i, j] = (click.col * scale_x, click.row * scale_y)
            labels[i, j] = int(click.positive)
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


class PromptedForward:
    """Prompt encoder + decoder (``kind`` "sam", "modified" or "residual") on a batch of image
    embeddings. ``sam`` (the md scenario) trains and, from its checkpoint, infers token 0 alone."""

    def __init__(self, sam, decoder: torch.nn.Module, kind: str) -> None:
        self.sam = sam
        self.decoder = decoder
        self.kind = kind

    def __call__(self, features: torch.Tensor, clicks: list[list[AutoClick]], geometry: list[ImageGeometry],
                 mask_prompts: torch.Tensor | None = None, use_mask: np.ndarray | None = None) -> torch.Tensor:
        """Low-resolution logits (B, 1, 256, 256); ``mask_prompts`` (B, 1, 256, 256) are fed to
        the images where ``use_mask`` is True, the others get SAM's 'no mask' embedding. Images
        with different numbers of clicks (an image whose prediction was already perfect got no
        new click) run in separate groups, so each sees exactly the tokens it would at inference."""
        counts = [len(c) for c in clicks]
        if len(set(counts)) > 1:
            out = None
            for count in sorted(set(counts)):
                index = [i for i, n in enumerate(counts) if n == count]
                part = self(features[index], [clicks[i] for i in index], [geometry[i] for i in index],
                            None if mask_prompts is None else mask_prompts[index],
                            None if use_mask is None else np.asarray(use_mask)[index])
                if out is None:
                    out = part.new_zeros((len(clicks),) + tuple(part.shape[1:]))
                out[index] = part
            return out
        encoder = self.sam.prompt_encoder
        coords, labels = encode_clicks(clicks, geometry, features.device)
        sparse, dense = encoder(points=(coords, labels), boxes=None, masks=None)
        if mask_prompts is not None and use_mask is not None and np.any(use_mask):
            chosen = torch.as_tensor(np.asarray(use_mask), device=features.device).reshape(-1, 1, 1, 1)
            dense = torch.where(chosen, encoder.mask_downscaling(mask_prompts.to(dense.dtype)), dense)
        image_pe = encoder.get_dense_pe()
        if self.kind == "sam":
            return sam_decoder_batched(self.decoder, features, image_pe, sparse, dense)
        if self.kind == "residual":  # the first click ranks SAM's three candidates, as at inference
            return self.decoder.forward_best(features, image_pe.expand(len(clicks), -1, -1, -1), sparse, dense,
                                             multimask_output=len(clicks[0]) == 1)
        low_res, _ = self.decoder(image_embeddings=features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                  dense_prompt_embeddings=dense, multimask_output=False)
        return low_res

    def restore(self, low_res: torch.Tensor, geometry: list[ImageGeometry]) -> list[torch.Tensor]:
        """Each image's logits at its own size (model input -> crop padding -> original size)."""
        size = int(self.sam.image_encoder.img_size)
        return [restore_logits(low_res[i], size, geo.input_size, geo.original_size) for i, geo in enumerate(geometry)]

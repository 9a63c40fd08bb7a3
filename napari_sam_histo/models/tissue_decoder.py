"""A project decoder: SAM's own decoder, unchanged, plus a small *tissue head* trained on a lab's
accepted objects that corrects SAM's mask logits.

SAM's decoder answers every click as zero-shot SAM does (frozen, the loaded model's own weights);
the tissue head reads the tile's image embedding (what the tissue looks like, 256 channels on the
64x64 grid) and SAM's low-resolution logits for the mask being corrected, and adds a logit offset:

    logits = sam_logits + head(embedding, sam_logits)

The head is a few convolutions on the 64x64 grid (a 1x1 reduction of the embedding, then 3x3
convolutions with growing dilation, so each cell sees about a quarter of the tile), and its offset
is upsampled bilinearly to SAM's 256x256 frame: SAM keeps the fine border, the head moves regions.
Its last layer starts at zero, so an untrained tissue decoder is exactly zero-shot SAM (tested bit
for bit). It never runs SAM's decoder backwards, so it trains on a CPU in a minute
(``training.tissue_training``).

Multimask: at the first click each of SAM's three candidates is corrected and SAM's predicted IoUs
are returned unchanged, so the candidate is chosen by SAM's ranking, as zero-shot SAM chooses.
The corrected logits are the next click's mask prompt (``engine.session`` feeds them back), as with
any decoder.

Checkpoint: our decoder format (``models.decoder_checkpoint``) with ``decoder_kind`` "sam" (the
mask decoder that runs is the base model's own), ``mask_outputs`` "multi", a ``tissue_head``
entry in the metadata (the head's widths and what it was trained on) and the head's weights under
``tissue_head.``; ``models.decoders.build_decoder_from_checkpoint`` builds a ``TissueDecoder``
from it (its ``DecoderChoice.kind`` is ``KIND``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .residual_decoder import sam_mask_parts

KIND = "tissue"
STATE_PREFIX = "tissue_head."
LOGIT_SCALE = 10.0  # SAM's logits span about +-20; the head reads them scaled to about +-2
WIDTH = 32
DILATIONS = (1, 2, 4)
PROJECTION = 64
# the head corrects the first click's masks; SAM answers the corrective clicks (see ``TissueDecoder``)
CORRECTED_CLICKS = 1


def _block(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
                         nn.GroupNorm(groups, out_channels), nn.GELU())


class TissueHead(nn.Module):
    """Logit offset (N, 1, 256, 256) from the image embedding (N, C, 64, 64) and SAM's logits
    (N, 1, 256, 256). Zero output until trained.

    The embedding is projected onto its ``projection`` main directions (fixed, fitted on the training
    tiles), then reduced to ``width`` channels per cell (1x1); SAM's logit joins it on the grid as
    its mean and its extremes per cell (a thin structure survives the pooling). Context runs on the
    grid pooled to 32x32 (3x3 convolutions with growing ``dilations``: a cell sees about half the
    tile), is brought back to 64x64 and mixed per cell with the reduced embedding and SAM's logit;
    the offset is upsampled bilinearly to 256x256."""

    def __init__(self, dim: int = 256, width: int = WIDTH, dilations: tuple[int, ...] = DILATIONS,
                 projection: int = PROJECTION) -> None:
        super().__init__()
        self.dim, self.width, self.dilations = int(dim), int(width), tuple(int(d) for d in dilations)
        self.projection = min(int(projection), self.dim)
        # a fixed projection of the embedding onto its main directions in the training tiles
        # (``fit_projection``): the trainable layers then read ``projection`` channels, not 256
        self.project = nn.Conv2d(self.dim, self.projection, 1)
        self.project.requires_grad_(False)
        self.reduce = nn.Conv2d(self.projection, self.width, 1)
        blocks, channels = [], self.width + 3
        for dilation in self.dilations:
            blocks.append(_block(channels, self.width, dilation))
            channels = self.width
        self.blocks = nn.ModuleList(blocks)
        self.mix = nn.Sequential(nn.Conv2d(2 * self.width + 3, self.width, 1), nn.GELU())
        self.out = nn.Conv2d(self.width, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict:
        return {"dim": self.dim, "width": self.width, "dilations": list(self.dilations),
                "projection": self.projection}

    @classmethod
    def from_config(cls, config: dict) -> TissueHead:
        return cls(int(config["dim"]), int(config["width"]), tuple(int(d) for d in config["dilations"]),
                   int(config["projection"]))

    @torch.no_grad()
    def fit_projection(self, features: list[torch.Tensor]) -> None:
        """Set the fixed projection to the principal directions of the (C, H, W) embeddings'
        cells (centred on their mean)."""
        cells = torch.cat([f.float().reshape(self.dim, -1).T for f in features])
        mean = cells.mean(0)
        _, _, v = torch.linalg.svd(cells[:: max(len(cells) // 20000, 1)] - mean, full_matrices=False)
        components = v[: self.projection]  # (P, C)
        scale = ((cells - mean) @ components.T).std(0).clamp_min(1e-6)
        weight = components / scale[:, None]
        self.project.weight.copy_(weight[:, :, None, None])
        self.project.bias.copy_(-(weight @ mean))

    def forward(self, features: torch.Tensor, logits: torch.Tensor, size=None) -> torch.Tensor:
        """The offset for SAM's ``logits`` (N, 1, 256, 256), at ``size`` (default: the logits')."""
        return self.from_projected(self.project(features), logits, size)

    def from_projected(self, projected: torch.Tensor, logits: torch.Tensor, size=None) -> torch.Tensor:
        """``forward`` on embeddings already projected (training projects each tile once)."""
        grid = projected.shape[-2:]
        m = logits.clamp(-2 * LOGIT_SCALE, 2 * LOGIT_SCALE) / LOGIT_SCALE
        m = torch.cat([F.adaptive_avg_pool2d(m, grid), F.adaptive_max_pool2d(m, grid),
                       -F.adaptive_max_pool2d(-m, grid)], 1)
        cells = self.reduce(projected)
        x = F.avg_pool2d(torch.cat([cells, m], 1), 2)
        for index, block in enumerate(self.blocks):
            x = block(x) if index == 0 else x + block(x)
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        offset = self.out(self.mix(torch.cat([x, cells, m], 1)))
        return F.interpolate(offset, size=tuple(size or logits.shape[-2:]), mode="bilinear", align_corners=False)


class SamMasks(nn.Module):
    """SAM's mask decoder as (all four masks, all four IoUs), with image i paired with prompt set
    i when the batches match (training, adaptation) and one image repeated for every prompt set
    otherwise (the annotator). A module of its own so that a forward hook can watch SAM's masks
    (``training.tissue_training`` records them while it clicks)."""

    def __init__(self, sam_decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = sam_decoder

    def forward(self, image_embeddings, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou, _, _, _ = sam_mask_parts(self.decoder, image_embeddings, image_pe, sparse, dense)
        return masks, iou


class TissueDecoder(nn.Module):
    """Drop-in for SAM's ``MaskDecoder``: SAM's masks plus the tissue head's correction while the
    object has at most ``corrected_clicks`` clicks (None: at every click); after that SAM's decoder
    alone answers, starting from the corrected mask as its mask prompt. The number of clicks is
    read from the prompt: SAM's prompt encoder adds one padding point to the clicks when no box is
    given (the annotator and the benchmark never give one)."""

    kind = KIND

    def __init__(self, sam_decoder: nn.Module, head: TissueHead | None = None,
                 corrected_clicks: int | None = CORRECTED_CLICKS) -> None:
        super().__init__()
        self.sam = SamMasks(sam_decoder)
        self.head = head if head is not None else TissueHead(int(sam_decoder.transformer_dim))
        self.corrected_clicks = None if corrected_clicks is None else int(corrected_clicks)

    def corrects(self, sparse_prompt_embeddings: torch.Tensor) -> bool:
        """Whether the head corrects a decode of these prompts (see the class)."""
        clicks = sparse_prompt_embeddings.shape[1] - 1
        return self.corrected_clicks is None or clicks <= self.corrected_clicks

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.sam_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                                    multimask_output)
        if not self.corrects(sparse_prompt_embeddings):
            return masks, iou
        return self.correct(image_embeddings, masks), iou

    def sam_masks(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        """SAM's masks and IoUs as SAM's ``MaskDecoder`` returns them: its three candidates with
        ``multimask_output``, else its single mask."""
        masks, iou = self.sam(image_embeddings, image_pe, sparse, dense)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]

    def correct(self, image_embeddings: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Each of the (B, K, 256, 256) ``masks`` plus the head's offset for it."""
        batch, k = masks.shape[:2]
        features = image_embeddings if image_embeddings.shape[0] == batch else image_embeddings.expand(batch, -1, -1, -1)
        features = features.repeat_interleave(k, dim=0) if k > 1 else features
        flat = masks.reshape(batch * k, 1, *masks.shape[2:])
        corrected = flat + self.head(features.to(flat.dtype), flat)
        return corrected.reshape(masks.shape)


def tissue_metadata(model, head: TissueHead, trained: bool, metrics: dict | None = None,
                    config: dict | None = None, provenance: dict | None = None,
                    corrected_clicks: int | None = CORRECTED_CLICKS) -> dict:
    """The checkpoint metadata of a tissue decoder for ``model`` (a ``LoadedModel``)."""
    from .decoder_checkpoint import decoder_metadata

    metadata = decoder_metadata("sam", model.name, model.weights_hash, "tissue-head", trained, metrics, config)
    metadata["mask_outputs"] = "multi"
    metadata["tissue_head"] = {**head.config(), "corrected_clicks": corrected_clicks, **dict(provenance or {})}
    return metadata


def save_tissue_decoder(path: str | Path, model, head: TissueHead, trained: bool = True, metrics: dict | None = None,
                        config: dict | None = None, provenance: dict | None = None,
                        corrected_clicks: int | None = CORRECTED_CLICKS) -> Path:
    """Write the head (float32) as a decoder checkpoint for ``model``; atomic."""
    from .decoder_checkpoint import save_decoder_checkpoint

    state = {STATE_PREFIX + key: value for key, value in head.state_dict().items()}
    return save_decoder_checkpoint(path, state, tissue_metadata(model, head, trained, metrics, config, provenance,
                                                                corrected_clicks))


def head_from_checkpoint(settings, state: dict, source: str) -> TissueHead:
    """The head described by a checkpoint's ``tissue_head`` metadata and its ``tissue_head.``
    weights; ``CheckpointError`` naming ``source`` when they do not fit."""
    from ..errors import CheckpointError

    head_state = {k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    other = sorted(k for k in state if not k.startswith(STATE_PREFIX))
    if other:
        raise CheckpointError(f"{source}: a tissue decoder holds only its head's weights, but it also has "
                              f"{', '.join(other[:3])}{' ...' if len(other) > 3 else ''}.")
    try:
        head = TissueHead.from_config(settings)
        head.load_state_dict({k: v.float() for k, v in head_state.items()}, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its tissue head does not load ({str(err)[:300]}).") from err
    return head

"""The fine-tuning scenarios of Kim et al. (§2.2, Fig. 2b): what trains, what stays frozen.

``md``: SAM's mask decoder alone (SAM^MD), trained on a copy (the base model's own decoder, which
``decoder="sam"`` runs, is never changed in place). ``ie_md``: image encoder + decoder, prompt encoder
frozen (SAM^IE_MD). ``whole``: everything (SAM^Whole). ``modified``: the modified decoder of §2.3
on frozen encoders. ``residual``: SAM's decoder frozen plus a trained correction of its logits
(``models/residual_decoder.py``; untrained, it is exactly zero-shot SAM). Frozen-encoder scenarios compute each
patch's embedding once and reuse it
every epoch, so they train on a CPU; the others run the ViT encoder forward and backward on every
step, which wants a GPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..models.modified_decoder import ModifiedMaskDecoder
from ..models.residual_decoder import ResidualMaskDecoder


@dataclass(frozen=True)
class Scenario:
    name: str
    decoder_kind: str  # "sam", "modified" or "residual"
    trains_image_encoder: bool
    trains_prompt_encoder: bool
    description: str

    @property
    def frozen_encoder(self) -> bool:
        return not self.trains_image_encoder


SCENARIOS = {
    s.name: s for s in (
        Scenario("md", "sam", False, False, "SAM's mask decoder; encoders frozen (SAM^MD)"),
        Scenario("ie_md", "sam", True, False, "image encoder + mask decoder; prompt encoder frozen (SAM^IE_MD)"),
        Scenario("whole", "sam", True, True, "the whole SAM (SAM^Whole)"),
        Scenario("modified", "modified", False, False, "the modified decoder (Kim et al.); encoders frozen"),
        Scenario("residual", "residual", False, False,
                 "SAM's decoder frozen + a trained correction of its logits; encoders frozen"),
    )
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise InputError(f"Unknown training scenario {name!r}; expected one of {', '.join(SCENARIOS)}.")
    return SCENARIOS[name]


def prepare_modules(sam: torch.nn.Module, scenario: Scenario) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """(the decoder to train, the trained modules by name); every other weight is frozen."""
    if scenario.decoder_kind == "modified":
        decoder = ModifiedMaskDecoder.from_sam_decoder(sam.mask_decoder)
    elif scenario.decoder_kind == "residual":
        decoder = ResidualMaskDecoder.from_sam_decoder(sam.mask_decoder)
    elif scenario.trains_image_encoder:
        decoder = sam.mask_decoder  # the whole SAM is trained and saved as one model
    else:
        decoder = copy.deepcopy(sam.mask_decoder)  # md: a later Predictor(model, "sam") stays SAM's
    # residual: only the correction trains; SAM's copy inside it stays frozen (and in eval mode)
    trained = {"decoder": decoder.correction if isinstance(decoder, ResidualMaskDecoder) else decoder}
    if scenario.trains_image_encoder:
        trained["image_encoder"] = sam.image_encoder
    if scenario.trains_prompt_encoder:
        trained["prompt_encoder"] = sam.prompt_encoder
    for parameter in sam.parameters():
        parameter.requires_grad_(False)
    for module in trained.values():
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return decoder, trained

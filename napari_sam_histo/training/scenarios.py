"""The fine-tuning scenarios of Kim et al. (§2.2, Fig. 2b): what trains, what stays frozen.

``md``: SAM's mask decoder alone (SAM^MD). ``ie_md``: image encoder + decoder, prompt encoder
frozen (SAM^IE_MD). ``whole``: everything (SAM^Whole). ``modified``: the modified decoder of §2.3
on frozen encoders. Frozen-encoder scenarios compute each patch's embedding once and reuse it
every epoch, so they train on a CPU; the others run the ViT encoder forward and backward on every
step, which wants a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..models.modified_decoder import ModifiedMaskDecoder


@dataclass(frozen=True)
class Scenario:
    name: str
    decoder_kind: str  # "sam" or "modified"
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
    )
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise InputError(f"Unknown training scenario {name!r}; expected one of {', '.join(SCENARIOS)}.")
    return SCENARIOS[name]


def prepare_modules(sam: torch.nn.Module, scenario: Scenario) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """(the decoder to train, the trained modules by name); every other weight is frozen."""
    decoder = (ModifiedMaskDecoder.from_sam_decoder(sam.mask_decoder) if scenario.decoder_kind == "modified"
               else sam.mask_decoder)
    trained = {"decoder": decoder}
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

"""Is a trained decoder better than zero-shot SAM on objects it never learnt from?

Both decoders re-click every held-out object with the benchmark's clicker (``reclick``: clicks
until IoU ``GATE_IOU`` or ``max_clicks``); the new decoder is better when its mean number of
clicks is lower. This is the check that decides whether a project decoder may be offered as the
default (``project_training``), and what the learning curve's *as offered* figures apply to the
objects a project would hold out (``learning_curve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reclick import GATE_IOU, GATE_MAX_CLICKS, reclick


@dataclass(frozen=True)
class HeldOutCheck:
    """Both decoders' figures on the held-out objects."""

    objects: int
    max_clicks: int
    sam_noc: float  # mean clicks to IoU GATE_IOU (max_clicks where never reached)
    decoder_noc: float
    sam_mean_iou: float  # the IoU after each click, averaged over clicks and objects
    decoder_mean_iou: float

    @property
    def better(self) -> bool:
        return self.decoder_noc < self.sam_noc

    def figures(self) -> dict:
        return {"objects": self.objects, "iou": GATE_IOU, "max_clicks": self.max_clicks,
                "sam_noc": self.sam_noc, "decoder_noc": self.decoder_noc,
                "sam_mean_iou": self.sam_mean_iou, "decoder_mean_iou": self.decoder_mean_iou}


def mean_clicks(predictor, examples, max_clicks: int = GATE_MAX_CLICKS) -> tuple[float, float]:
    """(mean clicks to GATE_IOU, mean IoU) of ``predictor`` re-clicking ``examples``."""
    results = [reclick(predictor, example, max_clicks) for example in examples]
    return float(np.mean([r.noc for r in results])), float(np.mean([r.mean_iou for r in results]))


def check_held_out(sam, decoder, examples, max_clicks: int = GATE_MAX_CLICKS) -> HeldOutCheck:
    """``sam`` (zero-shot SAM's predictor) and ``decoder`` (the trained one's) on ``examples``
    (``AdaptationExample``, at least one)."""
    if not examples:
        raise ValueError("a held-out check needs at least one object")
    sam_noc, sam_iou = mean_clicks(sam, examples, max_clicks)
    decoder_noc, decoder_iou = mean_clicks(decoder, examples, max_clicks)
    return HeldOutCheck(len(examples), max_clicks, sam_noc, decoder_noc, sam_iou, decoder_iou)

"""Re-clicking an example with the benchmark's clicker: how a decoder is judged on an object it did
not learn from (the never-worse gates of the online adaptation and of the slide refiner, a project
decoder's held-out figures) and how the slide refiner gets SAM's logits to learn from."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..evaluation.clicker import next_click
from ..evaluation.metrics import LOGIT_THRESHOLD, iou, noc
from .examples import AdaptationExample

GATE_IOU = 0.85
GATE_MAX_CLICKS = 10


class Reclick(NamedTuple):
    """An example re-clicked by a predictor (``reclick``)."""

    noc: int  # clicks to reach GATE_IOU (``evaluation.metrics.noc``: max_clicks when never reached)
    mean_iou: float  # the IoU after each click, averaged


def click_example(predictor, embedding, target: np.ndarray, max_clicks: int, goal: float, refine=None,
                  keep: tuple = (), stop: bool = True) -> tuple[list[float], list[torch.Tensor]]:
    """Click one object on one tile with the benchmark's clicker, through the annotator's
    ``ClickSession`` (``refine``: a ``TileRefiner``, shown by its click evidence): the IoU after each
    click (stopping at ``goal`` when ``stop``) and SAM's own logits (CPU) after the clicks in ``keep``."""
    from ..engine.session import ClickSession
    from ..engine.tiles import TileBox

    target = np.asarray(target, bool)
    height, width = target.shape
    session = ClickSession(predictor, TileBox(0, 0, 0, width, height), embedding, threshold=LOGIT_THRESHOLD,
                           refine=refine)
    prediction = np.zeros_like(target)
    clicked = np.zeros_like(target)
    ious, kept = [], []
    for n in range(1, max_clicks + 1):
        click = next_click(target, prediction, clicked)
        if click is None:
            break
        clicked[click.row, click.col] = True
        prediction = session.add_click(*click.xy, click.positive).mask
        if n in keep:
            kept.append(session.sam_logits.detach().float().cpu().clone())
        ious.append(iou(prediction, target))
        if stop and ious[-1] >= goal:
            break
    return ious or [iou(prediction, target)], kept


def reclick(predictor, example: AdaptationExample, max_clicks: int = GATE_MAX_CLICKS) -> Reclick:
    """``predictor`` re-clicking ``example`` with the benchmark's clicker (clicks until
    ``GATE_IOU`` is reached or ``max_clicks``)."""
    ious, _ = click_example(predictor, example.embedding, example.target, max_clicks, GATE_IOU)
    return Reclick(noc(ious, GATE_IOU, max_clicks), float(np.mean(ious)))

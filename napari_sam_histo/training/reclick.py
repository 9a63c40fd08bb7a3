"""Re-clicking an example with the benchmark's clicker: how a decoder is judged on an object it did
not learn from (the never-worse gates of the online adaptation and of the slide refiner, a project
decoder's held-out figures) and how the slide refiner gets SAM's logits to learn from."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..evaluation.click_loop import click_tile
from ..evaluation.metrics import iou, noc
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
    ``ClickSession`` (``evaluation.click_loop.click_tile``; ``refine``: a ``TileRefiner``, shown by
    its click evidence): the IoU after each click (stopping at ``goal`` when ``stop``) and SAM's own
    logits (CPU) after the clicks in ``keep``."""
    clicked = click_tile(predictor, embedding, target, max_clicks, goal if stop else None, refine, keep)
    return clicked.ious or [iou(clicked.mask, target)], clicked.sam_logits


def reclick(predictor, example: AdaptationExample, max_clicks: int = GATE_MAX_CLICKS) -> Reclick:
    """``predictor`` re-clicking ``example`` with the benchmark's clicker (clicks until
    ``GATE_IOU`` is reached or ``max_clicks``)."""
    ious, _ = click_example(predictor, example.embedding, example.target, max_clicks, GATE_IOU)
    return Reclick(noc(ious, GATE_IOU, max_clicks), float(np.mean(ious)))

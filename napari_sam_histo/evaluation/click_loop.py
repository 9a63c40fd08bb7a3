"""Clicking one object with the benchmark's clicker (RITM's rule, ``evaluation.clicker``) until its
mask reaches a stopping IoU or the clicks run out.

The one click loop of the benchmark (``evaluation.runner``), of the re-clicks that judge decoders
(``training.reclick``), of the decoder recipes collecting their training states
(``training.tissue_training``, ``training.decoder_finetune``) and of the headless demo.
``click_object`` clicks through any function that takes a click and returns the new mask;
``click_tile`` clicks one object that fills a tile's embedding through the annotator's own
``ClickSession``, its mask thresholded at RITM's probability.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .clicker import AutoClick, next_click
from .metrics import LOGIT_THRESHOLD, iou


@dataclass(frozen=True)
class ClickedObject:
    """An object clicked by ``click_object`` or ``click_tile``, click by click."""

    clicks: list[AutoClick]  # where the clicker clicked, in order
    ious: list[float]  # the IoU with the target after each click (pixels of the ignore mask left out)
    seconds: list[float]  # what each click (the ``click`` call) took
    mask: np.ndarray  # the last mask (the empty mask when no click was made)
    masks: list[np.ndarray] | None = None  # the mask after each click, when kept
    sam_logits: list = field(default_factory=list)  # ``click_tile``: SAM's own logits (CPU) after the clicks kept


def click_object(click: Callable[[AutoClick], np.ndarray], target: np.ndarray, max_clicks: int,
                 stop_iou: float | None, ignore: np.ndarray | None = None, keep_masks: bool = False,
                 after_click: Callable[[int], None] | None = None) -> ClickedObject:
    """Click ``target`` from an empty mask: each click where the clicker puts it (never twice on one
    pixel; ``ignore``d pixels count neither for the click nor for the IoU), ``click(auto_click)``
    returning the new mask, until the IoU reaches ``stop_iou`` (None: never), ``max_clicks`` were
    made, or mask and target agree wherever it counts. ``after_click(n)`` runs after click ``n``
    (counting from 1), before the stopping rule; ``keep_masks`` keeps every click's mask."""
    target = np.asarray(target, bool)
    prediction = np.zeros(target.shape, bool)
    clicked = np.zeros(target.shape, bool)
    clicks, ious, seconds = [], [], []
    masks = [] if keep_masks else None
    for n in range(1, int(max_clicks) + 1):
        chosen = next_click(target, prediction, clicked, ignore)
        if chosen is None:  # the mask equals the target wherever it counts
            break
        clicked[chosen.row, chosen.col] = True
        started = time.perf_counter()
        prediction = click(chosen)
        seconds.append(time.perf_counter() - started)
        clicks.append(chosen)
        ious.append(iou(prediction, target, ignore))
        if masks is not None:
            masks.append(prediction)
        if after_click is not None:
            after_click(n)
        if stop_iou is not None and ious[-1] >= stop_iou:
            break
    return ClickedObject(clicks, ious, seconds, prediction, masks)


def click_tile(predictor, embedding, target: np.ndarray, max_clicks: int, stop_iou: float | None, refine=None,
               keep_logits: tuple[int, ...] = ()) -> ClickedObject:
    """``click_object`` on one object of a tile whose embedding is ``embedding`` (``target``: the
    tile's size), through a ``ClickSession`` of ``predictor`` thresholded at RITM's probability
    (``refine``: the session's tile refiner); SAM's own logits kept after the clicks in
    ``keep_logits``."""
    from ..engine.session import ClickSession
    from ..slides.boxes import TileBox

    target = np.asarray(target, bool)
    height, width = target.shape
    session = ClickSession(predictor, TileBox(0, 0, 0, width, height), embedding, threshold=LOGIT_THRESHOLD,
                           refine=refine)
    kept = []

    def keep(n: int) -> None:
        if n in keep_logits:
            kept.append(session.sam_logits.detach().float().cpu().clone())

    clicked = click_object(lambda click: session.add_click(*click.xy, click.positive).mask, target, max_clicks,
                           stop_iou, after_click=keep)
    return replace(clicked, sam_logits=kept)

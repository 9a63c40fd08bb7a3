"""Click-evaluation metrics, as RITM computes them (Sofiiuk et al.; Kim et al. §3.2).

* IoU of a binary prediction with the target, pixels in the ignore mask left out.
* NoC@t: the 1-based index of the first click whose IoU reaches t; a sample that never reaches
  it counts as ``max_clicks``.
* NoF@t: samples that never reach t within ``max_clicks``. RITM's code counts ``NoC == max_clicks``,
  which also counts a sample that succeeds exactly on the last click as a failure; pass
  ``ritm_nof=True`` for that variant, so numbers can be compared with published tables.
* mIoU per click: the mean IoU after click 1, 2, ..., max_clicks. A sample stopped early (it reached
  the stopping IoU) keeps its last IoU for the later clicks; run with a full curve for the exact one.
* Collapses: clicks after which the IoU is below ``COLLAPSE`` (half) of the best IoU the object
  had before that click (a click that threw away what earlier clicks had built), and the number of
  samples with at least one.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_THRESHOLDS = (0.80, 0.85, 0.90)
PROBABILITY_THRESHOLD = 0.49  # RITM's prediction threshold on probabilities
LOGIT_THRESHOLD = math.log(PROBABILITY_THRESHOLD / (1 - PROBABILITY_THRESHOLD))  # the same on SAM's logits
COLLAPSE = 0.5  # a click collapses the object when its IoU falls below this fraction of the best before it


def iou(prediction: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union; 1.0 when both are empty where it counts."""
    prediction = np.asarray(prediction, bool)
    target = np.asarray(target, bool)
    if ignore is not None:
        valid = ~np.asarray(ignore, bool)
        prediction, target = prediction & valid, target & valid
    union = np.logical_or(prediction, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, target).sum() / union)


def noc(ious: list[float], threshold: float, max_clicks: int) -> int:
    """Clicks needed to reach ``threshold`` (``max_clicks`` when never reached)."""
    for index, value in enumerate(ious[:max_clicks]):
        if value >= threshold:
            return index + 1
    return max_clicks


def failed(ious: list[float], threshold: float, max_clicks: int, ritm_nof: bool = False) -> bool:
    """Did the sample fail to reach ``threshold``? (RITM's variant: NoC == max_clicks.)"""
    clicks = noc(ious, threshold, max_clicks)
    if ritm_nof:
        return clicks >= max_clicks
    return not any(value >= threshold for value in ious[:max_clicks])


def collapses(ious: list[float], fraction: float = COLLAPSE) -> int:
    """The clicks after which the IoU is below ``fraction`` of the best IoU before that click."""
    count, best = 0, 0.0
    for value in ious:
        if value < fraction * best:
            count += 1
        best = max(best, value)
    return count


def miou_per_click(all_ious: list[list[float]], max_clicks: int) -> list[float]:
    """Mean IoU after each click 1..max_clicks, carrying each sample's last IoU forward."""
    if not all_ious:
        return []
    table = np.zeros((len(all_ious), max_clicks))
    for row, ious in enumerate(all_ious):
        values = list(ious[:max_clicks]) or [0.0]
        values += [values[-1]] * (max_clicks - len(values))
        table[row] = values
    return [float(v) for v in table.mean(axis=0)]


def summarize(all_ious: list[list[float]], thresholds=DEFAULT_THRESHOLDS, max_clicks: int = 20,
              ritm_nof: bool = False) -> dict:
    """NoC@t, NoF@t and NoF/n for every threshold, the mIoU curve, and the collapses (clicks, and
    samples with at least one) within ``max_clicks``."""
    n = len(all_ious)
    out: dict = {"n_samples": n}
    for t in thresholds:
        name = f"{round(t * 100):d}"
        out[f"noc@{name}"] = float(np.mean([noc(x, t, max_clicks) for x in all_ious])) if n else None
        fails = sum(failed(x, t, max_clicks, ritm_nof) for x in all_ious)
        out[f"nof@{name}"] = int(fails)
        out[f"nof_per_n@{name}"] = fails / n if n else None
    out["miou_per_click"] = miou_per_click(all_ious, max_clicks)
    counts = [collapses(x[:max_clicks]) for x in all_ious]
    out["collapses"] = int(sum(counts))
    out["collapsed_samples"] = sum(c > 0 for c in counts)
    return out

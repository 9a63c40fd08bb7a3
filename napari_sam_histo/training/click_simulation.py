"""Clicks simulated during training, as RITM trains (Sofiiuk et al. 2022) and Kim et al. follow.

The first click lands at random inside the object. Each further click is sampled from the error
region of the previous prediction: the error type (missed object = positive click, false
positive = negative click) whose distance-transform maximum is larger, then a pixel at random
among those deeper than half that maximum, so clicks land well inside errors but not always on
the same pixel (the evaluation clicker, ``evaluation.clicker``, always takes the deepest one).
"""

from __future__ import annotations

import numpy as np

from ..evaluation.clicker import AutoClick, _padded_edt


def first_click(target: np.ndarray, rng: np.random.Generator) -> AutoClick:
    """A positive click at a random pixel of the object (``target`` must not be empty)."""
    rows, cols = np.nonzero(np.asarray(target, dtype=bool))
    if rows.size == 0:
        raise ValueError("the target mask is empty: there is no object to click on")
    pick = int(rng.integers(rows.size))
    return AutoClick(int(rows[pick]), int(cols[pick]), True)


def error_click(target: np.ndarray, prediction: np.ndarray, rng: np.random.Generator) -> AutoClick | None:
    """A click sampled from the larger error region of ``prediction``; None when there is no error."""
    target = np.asarray(target, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    fn_dist = _padded_edt(target & ~prediction)
    fp_dist = _padded_edt(~target & prediction)
    fn_max, fp_max = float(fn_dist.max()), float(fp_dist.max())
    if fn_max == 0 and fp_max == 0:
        return None
    positive = fn_max > fp_max
    dist = fn_dist if positive else fp_dist
    rows, cols = np.nonzero(dist > max(fn_max, fp_max) / 2.0)
    pick = int(rng.integers(rows.size))
    return AutoClick(int(rows[pick]), int(cols[pick]), positive)

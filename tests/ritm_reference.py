"""RITM's published click rule, written step for step as their ``Clicker._get_next_click`` does it
(OpenCV's exact Euclidean distance transform, a not-clicked map multiplied in, ``np.where``'s first
hit) — for validation only (the tests and ``scripts/check-clicker``), so it lives with the tests
and is not shipped: ``clicker.next_click`` must choose the same clicks wherever RITM's choice is
determined. Needs OpenCV (a test dependency, ``opencv-python-headless``).
Written independently of ``clicker`` (no shared helper), re-derived from the paper and the
algorithm's description, not copied (RITM's code uses numpy aliases that numpy removed).

``reference_candidates`` also returns every pixel that OpenCV's float32 distances put within
rounding of the maximum: OpenCV's output is not bit-reproducible, so among those RITM's pick is
arbitrary, and any of them is "RITM's click"."""

from __future__ import annotations

import numpy as np


def reference_candidates(target, prediction, not_clicked, not_ignore, rtol: float = 1e-6):
    """(positive or None when FN and FP tie within rounding, set of (row, col) RITM may pick)."""
    import cv2

    fn, fp = _errors(target, prediction, not_ignore)
    fn_dt = cv2.distanceTransform(fn, cv2.DIST_L2, 0)[1:-1, 1:-1].astype(np.float64) * not_clicked
    fp_dt = cv2.distanceTransform(fp, cv2.DIST_L2, 0)[1:-1, 1:-1].astype(np.float64) * not_clicked
    fn_max, fp_max = fn_dt.max(), fp_dt.max()
    if np.isclose(fn_max, fp_max, rtol=rtol, atol=0):
        return None, {tuple(p) for dt in (fn_dt, fp_dt)
                      for p in np.argwhere(np.isclose(dt, dt.max(), rtol=rtol, atol=0) & (dt > 0))}
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    return bool(positive), {tuple(int(v) for v in p) for p in np.argwhere(np.isclose(dt, dt.max(), rtol=rtol, atol=0))}


def _errors(target, prediction, not_ignore):
    fn = np.logical_and(np.logical_and(target, np.logical_not(prediction)), not_ignore)
    fp = np.logical_and(np.logical_and(np.logical_not(target), prediction), not_ignore)
    pad = ((1, 1), (1, 1))
    return np.pad(fn, pad, "constant").astype(np.uint8), np.pad(fp, pad, "constant").astype(np.uint8)


def reference_next_click(target, prediction, not_clicked, not_ignore):
    """(row, col, positive) as RITM picks it; ``not_clicked`` and ``not_ignore`` are bool maps."""
    import cv2

    fn = np.logical_and(np.logical_and(target, np.logical_not(prediction)), not_ignore)
    fp = np.logical_and(np.logical_and(np.logical_not(target), prediction), not_ignore)
    fn = np.pad(fn, ((1, 1), (1, 1)), "constant")
    fp = np.pad(fp, ((1, 1), (1, 1)), "constant")
    fn_dt = cv2.distanceTransform(fn.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
    fp_dt = cv2.distanceTransform(fp.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
    fn_dt = fn_dt * not_clicked
    fp_dt = fp_dt * not_clicked
    fn_max, fp_max = np.max(fn_dt), np.max(fp_dt)
    positive = fn_max > fp_max
    rows, cols = np.where(fn_dt == fn_max) if positive else np.where(fp_dt == fp_max)
    return int(rows[0]), int(cols[0]), bool(positive)

import numpy as np
import pytest

from napari_sam_histo.evaluation.metrics import LOGIT_THRESHOLD, collapses, failed, iou, miou_per_click, noc, summarize


def test_iou_leaves_out_ignored_pixels():
    target = np.array([[1, 1, 0, 0]], bool)
    prediction = np.array([[1, 0, 1, 0]], bool)
    assert iou(prediction, target) == pytest.approx(1 / 3)
    assert iou(prediction, target, ignore=np.array([[0, 0, 1, 0]], bool)) == pytest.approx(1 / 2)
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_noc_and_the_two_nof_variants():
    assert noc([0.5, 0.86, 0.91], 0.85, 20) == 2
    assert noc([0.5] * 20, 0.85, 20) == 20
    last = [0.5] * 19 + [0.9]  # success exactly on the 20th click
    assert noc(last, 0.85, 20) == 20
    assert not failed(last, 0.85, 20)  # ours: it did reach the IoU
    assert failed(last, 0.85, 20, ritm_nof=True)  # RITM's code: NoC == max clicks counts as a failure


def test_miou_carries_the_last_value_of_stopped_samples_forward():
    assert miou_per_click([[0.2, 0.9], [0.4, 0.5, 0.6]], 4) == pytest.approx([0.3, 0.7, 0.75, 0.75])


def test_summary_keys_and_values():
    s = summarize([[0.81, 0.86, 0.95], [0.1] * 20], (0.8, 0.85, 0.9), 20)
    assert s["n_samples"] == 2
    assert s["noc@80"] == pytest.approx((1 + 20) / 2) and s["noc@90"] == pytest.approx((3 + 20) / 2)
    assert s["nof@85"] == 1 and s["nof_per_n@90"] == 0.5
    assert len(s["miou_per_click"]) == 20
    assert s["collapses"] == 0 and s["collapsed_samples"] == 0


def test_a_collapse_is_a_click_below_half_the_best_iou_before_it():
    # a lymph-node region's curve at auto: 0.17..0.49 for 19 clicks, 0.00 at click 20, 0.03 after 30
    curve = [0.17, 0.30, 0.49, 0.40] + [0.45] * 15 + [0.0] + [0.03] * 10
    assert collapses(curve) == 11  # click 20 and the ten after it stay below 0.245
    assert collapses([0.8, 0.41, 0.39, 0.9, 0.44, 0.46]) == 2  # 0.39 < 0.4 and 0.44 < 0.45; 0.41, 0.46 are not
    assert collapses([0.0, 0.0, 0.5]) == 0 and collapses([]) == 0  # nothing to lose yet
    assert collapses([0.6, 0.3]) == 0 and collapses([0.6, 0.29], fraction=0.5) == 1  # strictly below half
    s = summarize([curve, [0.9], [0.8, 0.2, 0.85]], (0.85,), max_clicks=20)
    assert s["collapses"] == 1 + 1 and s["collapsed_samples"] == 2  # within max_clicks: click 20 only


def test_prediction_threshold_is_ritms_probability_049():
    assert 1 / (1 + np.exp(-LOGIT_THRESHOLD)) == pytest.approx(0.49)

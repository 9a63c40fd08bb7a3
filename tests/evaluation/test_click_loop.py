"""The shared click loop: where it stops, what it keeps per click."""

import numpy as np

from napari_sam_histo.evaluation.click_loop import click_object
from napari_sam_histo.evaluation.clicker import next_click
from napari_sam_histo.evaluation.metrics import iou


def _target():
    target = np.zeros((40, 40), bool)
    target[10:30, 12:28] = True
    return target


def test_an_oracle_stops_after_its_first_click():
    target = _target()
    clicked = click_object(lambda click: target.copy(), target, max_clicks=5, stop_iou=0.9, keep_masks=True)
    assert clicked.ious == [1.0] and len(clicked.clicks) == len(clicked.seconds) == 1
    assert clicked.clicks[0].positive and np.array_equal(clicked.mask, target)
    assert len(clicked.masks) == 1


def test_a_model_that_never_changes_its_mask_clicks_to_the_limit_on_new_pixels():
    target = _target()
    seen = []
    clicked = click_object(lambda click: np.zeros_like(target), target, max_clicks=6, stop_iou=None,
                           after_click=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6] and clicked.ious == [0.0] * 6 and clicked.masks is None
    assert len({(c.row, c.col) for c in clicked.clicks}) == 6


def test_the_ignore_mask_counts_neither_for_the_clicks_nor_for_the_iou():
    target = _target()
    ignore = np.zeros_like(target)
    ignore[10:30, 12:20] = True
    half = target & ~ignore
    clicked = click_object(lambda click: half, target, max_clicks=3, stop_iou=0.99, ignore=ignore)
    assert clicked.ious == [1.0] and not ignore[clicked.clicks[0].row, clicked.clicks[0].col]
    assert iou(half, target) < 1.0


def test_the_clicks_are_the_clickers():
    target = _target()
    top = target.copy()
    top[20:] = False
    masks = [top, target]
    clicked = click_object(lambda click: masks.pop(0), target, max_clicks=5, stop_iou=0.95)
    first = next_click(target, np.zeros_like(target))
    assert clicked.clicks[0] == first and clicked.ious == [0.5, 1.0]
    done = np.zeros_like(target)
    done[first.row, first.col] = True
    assert clicked.clicks[1] == next_click(target, top, done)

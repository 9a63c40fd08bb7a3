"""The simulated-click training step shared by the training loop and the online adaptation:
its forward passes, the clicks it samples and its loss."""

import numpy as np
import pytest
import torch

from napari_sam_histo.training.click_simulation import simulated_click_loss
from napari_sam_histo.training.nfl_loss import normalized_focal_loss
from napari_sam_histo.training.prompted_forward import ImageGeometry


class EmptyForward:
    """Predicts nothing anywhere (every logit -5) and records what each pass was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, features, clicks, geometry, mask_prompts=None, use_mask=None):
        self.calls.append(([list(c) for c in clicks], mask_prompts, None if use_mask is None else list(use_mask)))
        return features[:, :1] * 0 - 5.0

    def restore(self, low_res, geometry):
        return [low_res[i, 0, :g.original_size[0], :g.original_size[1]] for i, g in enumerate(geometry)]


def _targets():
    a = np.zeros((8, 8), bool)
    a[1:5, 2:6] = True
    b = np.zeros((8, 8), bool)
    b[4:8, 0:3] = True
    return [a, b]


def _run(seed, forward=None):
    forward = forward or EmptyForward()
    features = torch.zeros(2, 3, 8, 8, requires_grad=True)
    geometry = [ImageGeometry((8, 8), (8, 8))] * 2
    loss = simulated_click_loss(forward, features, geometry, _targets(), np.random.default_rng(seed),
                                max_extra_clicks=3, mask_prompt_prob=0.5)
    return forward, loss


def test_extra_clicks_land_in_the_missed_object_and_the_last_pass_is_scored():
    rounds = set()
    for seed in range(12):
        forward, loss = _run(seed)
        rounds.add(len(forward.calls) - 1)
        final_clicks = forward.calls[-1][0]
        for clicks, target in zip(final_clicks, _targets()):
            assert len(clicks) == len(forward.calls)  # the first click, then one per round
            assert all(c.positive and target[c.row, c.col] for c in clicks)  # nothing predicted: all missed
        for i, (_, prompts, use_mask) in enumerate(forward.calls):
            assert (prompts is None) == (i == 0) and (use_mask is None) == (i == 0)  # fed back after a round
        expected = torch.cat([normalized_focal_loss(torch.full((1, 8, 8), -5.0), torch.as_tensor(t)[None])
                              for t in _targets()]).mean()
        assert loss.item() == pytest.approx(expected.item())
        assert loss.requires_grad  # the last pass keeps its gradient, the simulated rounds do not
    assert rounds == {0, 1, 2, 3}  # 0..max_extra_clicks rounds


def test_the_same_seed_draws_the_same_clicks():
    first, second, other = (_run(seed)[0] for seed in (7, 7, 8))
    clicks = [[(c.row, c.col) for c in image] for image in first.calls[-1][0]]
    assert clicks == [[(c.row, c.col) for c in image] for image in second.calls[-1][0]]
    assert clicks != [[(c.row, c.col) for c in image] for image in other.calls[-1][0]]

"""Blending an object's tile logits: no seams within a level, finer levels over coarser ones."""

import numpy as np
import torch

from napari_sam_histo.engine.blending import MAX_OBJECT_PIXELS, TileLogits, blend, output_grid, sample_field
from napari_sam_histo.slides.boxes import TileBox


def test_overlapping_tiles_that_disagree_meet_smoothly_not_at_a_straight_cut():
    # left tile says "object" (+4) everywhere, right tile says "background" (-4): the old union cut
    # the object along the right tile's left border; blending moves the change into the overlap
    left, right = TileBox(0, 0, 0, 200, 100), TileBox(0, 100, 0, 200, 100)
    tiles = [TileLogits(left, torch.full((100, 200), 4.0), (300, 100)),
             TileLogits(right, torch.full((100, 200), -4.0), (300, 100))]
    result = blend(tiles)
    assert (result.downsample, result.x, result.y, result.logits.shape) == (1.0, 0, 0, (100, 300))
    row = result.logits[50]
    assert np.all(row[:100] == 4.0) and np.all(row[200:] == -4.0)  # only one tile there
    assert np.all(np.diff(row[100:200]) <= 1e-6)  # a monotone transition inside the overlap
    edge = int(np.argmax(row < 0))
    assert 120 < edge < 190  # not at either tile border (100 or 200)


def test_a_finer_tile_replaces_the_coarser_object_inside_it_blended_at_its_border():
    coarse = TileBox(0, 0, 0, 100, 100, downsample=4.0)  # level-0 0..400
    fine = TileBox(0, 100, 100, 100, 100, downsample=1.0)  # level-0 100..200
    tiles = [TileLogits(coarse, torch.full((100, 100), 5.0), (100, 100)),
             TileLogits(fine, torch.full((100, 100), -5.0), (400, 400))]
    result = blend(tiles)
    assert result.downsample == 1.0 and result.logits.shape == (400, 400)
    assert result.logits[150, 150] == -5.0  # the fine tile's inside
    assert result.logits[50, 50] == 5.0 and result.logits[300, 300] == 5.0  # the coarse object elsewhere
    assert -5.0 < result.logits[150, 101] < 5.0  # blended at its inner border
    mask = result.mask()
    assert mask[50, 50] and not mask[150, 150]


def test_the_output_grid_is_capped_for_a_huge_object():
    coarse = TileBox(0, 0, 0, 1024, 1024, downsample=32.0)  # 32k level-0 px
    fine = TileBox(0, 0, 0, 1024, 1024, downsample=1.0)
    d, x, y, width, height = output_grid([TileLogits(coarse, torch.zeros(1024, 1024), (1024, 1024)),
                                          TileLogits(fine, torch.zeros(1024, 1024), (32768, 32768))])
    assert d > 1.0 and width * height <= MAX_OBJECT_PIXELS * 1.01


def test_sample_field_gives_a_new_tile_the_object_under_it():
    coarse = TileBox(0, 0, 0, 100, 100, downsample=4.0)
    logits = torch.full((100, 100), -8.0)
    logits[:, :50] = 8.0  # the object is the left half (level-0 x < 200)
    result = blend([TileLogits(coarse, logits, (100, 100))])
    fine = TileBox(0, 100, 0, 200, 200, downsample=1.0)  # level-0 x 100..300: the object's right edge
    prompt = sample_field(result, fine, (50, 50), (4.0, 4.0))
    assert prompt.shape == (50, 50)
    assert prompt[25, 5] > 0 and prompt[25, 45] < 0  # left of x = 200 in, right of it out

import numpy as np
import pytest

from napari_sam_histo.evaluation.clicker import next_click


def test_first_click_is_the_objects_most_interior_pixel():
    target = np.zeros((20, 30), bool)
    target[5:12, 10:25] = True  # 7 rows x 15 cols: the centre row is 8
    click = next_click(target, np.zeros_like(target))
    assert click.positive and (click.row, click.col) == (8, 13)  # the first pixel at the maximum distance


def test_square_with_a_hole_gets_a_negative_click_in_the_hole():
    target = np.zeros((41, 41), bool)
    target[5:36, 5:36] = True
    target[15:26, 15:26] = False  # an 11x11 hole
    prediction = np.zeros_like(target)
    prediction[5:36, 5:36] = True  # the square, hole filled: the only error is the hole
    click = next_click(target, prediction)
    assert not click.positive and (click.row, click.col) == (20, 20)


def test_a_tie_between_fn_and_fp_goes_negative():
    target = np.zeros((9, 20), bool)
    prediction = np.zeros_like(target)
    target[3:6, 2:5] = True  # missed 3x3 square: FN distance 2
    prediction[3:6, 12:15] = True  # extra 3x3 square: FP distance 2
    click = next_click(target, prediction)
    assert not click.positive and (click.row, click.col) == (4, 13)


def test_image_border_counts_as_background():
    target = np.zeros((10, 10), bool)
    target[:, :4] = True  # touches the left border: its deepest pixel is one in from the border,
    click = next_click(target, np.zeros_like(target))  # not at column 0
    assert click.col == 1 or click.col == 2


def test_clicked_pixels_are_not_chosen_again():
    target = np.zeros((11, 11), bool)
    target[2:9, 2:9] = True
    clicked = np.zeros_like(target)
    clicked[5, 5] = True
    click = next_click(target, np.zeros_like(target), clicked)
    assert (click.row, click.col) != (5, 5)


def test_ignored_pixels_never_attract_a_click():
    target = np.zeros((12, 12), bool)
    target[1:11, 1:11] = True
    ignore = np.zeros_like(target)
    ignore[:, :8] = True
    click = next_click(target, np.zeros_like(target), ignore=ignore)
    assert click.col >= 8


def test_perfect_prediction_needs_no_click():
    target = np.eye(8, dtype=bool)
    assert next_click(target, target.copy()) is None


def _random_blobs(rng, shape=(64, 80)):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), 3) > 0.05


@pytest.mark.parametrize("seed", range(25))
def test_same_clicks_as_ritms_reference_rule(seed):
    """Whole click sequences against RITM's rule (OpenCV EDT, np.where): the same click, or, where
    OpenCV's float32 distances tie, one of the pixels RITM may pick."""
    from ..ritm_reference import reference_candidates

    rng = np.random.default_rng(seed)
    target = _random_blobs(rng)
    ignore = np.zeros_like(target)
    if seed % 3 == 0:
        ignore[rng.integers(0, 50):, : rng.integers(5, 30)] = True
    prediction = _random_blobs(rng) if seed % 2 else np.zeros_like(target)
    clicked = np.zeros_like(target)
    for _ in range(10):
        ours = next_click(target, prediction, clicked, ignore)
        if ours is None:
            break
        positive, candidates = reference_candidates(target, prediction, ~clicked, ~ignore)
        assert (ours.row, ours.col) in candidates
        assert positive is None or ours.positive == positive
        clicked[ours.row, ours.col] = True
        # the next "prediction": the old one, corrected in a disk around the click
        rr, cc = np.ogrid[: target.shape[0], : target.shape[1]]
        disk = (rr - ours.row) ** 2 + (cc - ours.col) ** 2 <= 16
        prediction = np.where(disk, ours.positive, prediction)


def test_opencv_is_not_bit_reproducible_which_is_why_ties_need_care():
    """Documents the reason for the tolerance above: the same mask through OpenCV twice may differ."""
    import cv2

    from napari_sam_histo.evaluation.clicker import padded_edt

    target = _random_blobs(np.random.default_rng(14))
    ours = [padded_edt(target) for _ in range(3)]
    assert all(np.array_equal(ours[0], o) for o in ours)  # ours: deterministic
    theirs = [cv2.distanceTransform(np.pad(target, 1).astype(np.uint8), cv2.DIST_L2, 0) for _ in range(20)]
    assert all(np.allclose(theirs[0], t, rtol=1e-6) for t in theirs)  # OpenCV: equal up to rounding

import numpy as np
import pytest

from napari_sam_histo.annotations.geometry import mask_to_polygons, polygon_area, rasterize


def _round_trip(mask, **kw):
    polygons = mask_to_polygons(mask, **kw)
    return polygons, rasterize(polygons, (0, 0), 1.0, mask.shape)


def test_square_with_a_hole_round_trips_exactly():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[10:15, 12:18] = False
    polygons, back = _round_trip(mask)
    assert len(polygons) == 1 and len(polygons[0].holes) == 1
    assert np.array_equal(back, mask)
    assert polygon_area(polygons[0]) == pytest.approx(mask.sum(), abs=4)  # corners cut by 1/8 px each


def test_separate_regions_become_separate_polygons_and_holes_find_their_owner():
    mask = np.zeros((40, 60), bool)
    mask[2:20, 2:20] = True
    mask[8:12, 8:12] = False
    mask[25:38, 30:58] = True
    mask[28:30, 40:50] = False
    polygons, back = _round_trip(mask)
    assert len(polygons) == 2 and sorted(len(p.holes) for p in polygons) == [1, 1]
    assert np.array_equal(back, mask)


def test_random_shapes_round_trip_within_one_pixel():
    from scipy.ndimage import binary_dilation, gaussian_filter

    rng = np.random.default_rng(0)
    mask = gaussian_filter(rng.standard_normal((80, 90)), 3) > 0.1
    _, back = _round_trip(mask)
    differ = back ^ mask
    assert differ.mean() < 0.02
    boundary = binary_dilation(mask) ^ mask | binary_dilation(~mask) ^ ~mask
    assert not (differ & ~boundary).any()  # differences only on the boundary: within one pixel


def test_placement_in_level0():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 3:6] = True
    [polygon] = mask_to_polygons(mask, origin=(1000, 2000), downsample=4.0)
    min_x, min_y, max_x, max_y = polygon.bounds()
    assert (min_x, min_y, max_x, max_y) == pytest.approx((1000 + 3 * 4, 2000 + 2 * 4, 1000 + 6 * 4, 2000 + 4 * 4), abs=2)
    back = rasterize([polygon], (1000, 2000), 4.0, (10, 10))
    assert np.array_equal(back, mask)


def test_empty_mask_gives_no_polygon():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_rasterising_fills_the_pixels_scikit_image_fills():
    """The scanline fill gives the pixels of skimage.draw.polygon (centre inside, its crossing rule)
    for the outlines the annotator makes and for arbitrary rings."""
    from skimage.draw import polygon as draw_polygon

    from napari_sam_histo.annotations.geometry import _inside, mask_to_polygons

    def reference(shape, ring):
        mask = np.zeros(shape, bool)
        rows, cols = draw_polygon(ring[:, 1], ring[:, 0], shape=shape)
        mask[rows, cols] = True
        return mask

    rng = np.random.default_rng(0)
    rings = []
    for trial in range(40):
        mask = np.zeros((60, 70), bool)
        yy, xx = np.ogrid[:60, :70]
        for _ in range(3):
            cy, cx, r = rng.integers(5, 55), rng.integers(5, 65), rng.integers(2, 15)
            mask |= (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.5, 1.5)) ** 2 < r * r
        for polygon in mask_to_polygons(mask, tolerance=0.1 * (trial % 2)):
            rings += [ring - 0.5 for ring in [polygon.exterior, *polygon.holes]]
    rings += [rng.uniform(-5, 65, (rng.integers(3, 30), 2)) for _ in range(60)]  # self-crossing, off the box
    for ring in rings:
        assert np.array_equal(_inside((60, 70), ring), reference((60, 70), ring))

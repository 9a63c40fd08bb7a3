import numpy as np

from napari_sam_histo.annotations.bridged import from_bridged_ring, to_bridged_ring
from napari_sam_histo.annotations.geometry import Polygon, mask_to_polygons, polygon_area, rasterize


def test_a_polygon_with_holes_survives_the_bridged_ring():
    mask = np.zeros((60, 80), bool)
    mask[5:55, 5:75] = True
    mask[15:25, 15:30] = False
    mask[30:45, 50:65] = False
    [polygon] = mask_to_polygons(mask)
    assert len(polygon.holes) == 2
    ring = to_bridged_ring(polygon)
    assert len(ring) == len(polygon.exterior) + sum(len(h) + 2 for h in polygon.holes)
    [back] = from_bridged_ring(ring)
    assert len(back.holes) == 2 and np.isclose(polygon_area(back), polygon_area(polygon))
    assert np.array_equal(rasterize([back], (0, 0), 1.0, mask.shape), mask)


def test_a_ring_without_repeats_is_left_alone_and_touching_lobes_stay_parts():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    [same] = from_bridged_ring(square)
    assert np.array_equal(same.exterior, square) and same.holes == []
    assert np.array_equal(to_bridged_ring(Polygon(square)), square)
    eight = np.array([[0, 0], [10, 0], [10, 10], [20, 10], [20, 20], [10, 20], [10, 10], [0, 10]], float)
    parts = from_bridged_ring(eight)
    assert len(parts) == 2 and all(p.holes == [] for p in parts)


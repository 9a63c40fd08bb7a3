"""Cleaning an accepted mask: specks and pinholes below the minimum area go, the object stays."""

import numpy as np

from napari_sam_histo.annotations.cleaning import clean_mask, clean_polygons, min_area_px
from napari_sam_histo.annotations.geometry import polygon_area


def _noisy_region():
    mask = np.zeros((200, 200), bool)
    mask[40:160, 40:160] = True  # the region
    mask[90:92, 90:92] = False  # a pinhole (4 px)
    mask[100:130, 60:90] = False  # a real hole (900 px)
    mask[5, 5] = mask[10, 190] = mask[195, 100] = True  # specks
    mask[170:176, 170:176] = True  # a 36 px part
    return mask


def test_specks_and_pinholes_are_dropped_real_holes_and_parts_kept():
    cleaned = clean_mask(_noisy_region(), 20)
    assert not cleaned[5, 5] and not cleaned[10, 190] and not cleaned[195, 100]
    assert cleaned[90, 90] and cleaned[91, 91]  # pinhole filled
    assert not cleaned[110, 70]  # the large hole stays
    assert cleaned[172, 172]  # a part above the minimum stays
    assert not clean_mask(_noisy_region(), 50)[172, 172]


def test_the_largest_part_survives_any_threshold():
    mask = np.zeros((50, 50), bool)
    mask[10:14, 10:14] = True  # 16 px: a small object on purpose
    mask[30, 30] = True
    cleaned = clean_mask(mask, 1000)
    assert cleaned[10:14, 10:14].all() and not cleaned[30, 30]


def test_polygons_from_a_noisy_mask_have_one_part_and_one_hole():
    polygons = clean_polygons(_noisy_region(), origin=(1000.0, 2000.0), downsample=2.0, min_area=200.0)
    [polygon] = polygons  # min 200 level-0 px² = 50 level px at downsample 2: the 36 px part goes
    assert len(polygon.holes) == 1
    x0, y0, x1, y1 = polygon.bounds()
    assert (x0, y0, x1, y1) == (1080.0, 2080.0, 1320.0, 2320.0)
    raw = clean_polygons(_noisy_region(), (0.0, 0.0), 1.0, min_area=0.0)
    assert len(raw) == 5 and sum(len(p.holes) for p in raw) == 2  # nothing cleaned at 0


def test_simplification_reduces_vertices_within_tolerance():
    yy, xx = np.mgrid[:200, :200]
    disc = (xx - 100) ** 2 + (yy - 100) ** 2 < 80 ** 2
    [fine] = clean_polygons(disc, (0.0, 0.0), 1.0)
    [coarse] = clean_polygons(disc, (0.0, 0.0), 1.0, tolerance=2.0)
    assert len(coarse.exterior) < len(fine.exterior) / 2
    assert abs(polygon_area(coarse) - polygon_area(fine)) / polygon_area(fine) < 0.02


def test_minimum_area_in_um2_when_the_pixel_size_is_known():
    assert min_area_px(10.0, (0.5, 0.5)) == 40.0
    assert min_area_px(10.0, None) == 10.0

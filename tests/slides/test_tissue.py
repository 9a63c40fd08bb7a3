"""Tissue detection (slides.tissue) and the embed plan built on it (cohort.embed_plan)."""

import numpy as np
import pytest

from napari_sam_histo.cohort.embed_plan import lattice_tiles, plan_levels, plan_slide
from napari_sam_histo.engine.tiles import TileGrid
from napari_sam_histo.engine.working_levels import working_levels
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import ArraySource, from_array
from napari_sam_histo.slides.tissue import otsu_threshold, overview, tissue_mask

from ..engine.test_working_levels import _pyramid_source


def half_glass(width=2048, height=1024, seed=0):
    """Left half: white glass with a little grey noise; right half: H&E-like pink and purple."""
    rng = np.random.default_rng(seed)
    rgb = np.clip(235 + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
    stain = np.where(rng.random((height, width // 2, 1)) < 0.4, [120, 60, 150], [225, 130, 170])
    rgb[:, width // 2:] = np.clip(stain + rng.normal(0, 10, stain.shape), 0, 255).astype(np.uint8)
    return rgb


def test_otsu_splits_two_clusters_between_them():
    values = np.concatenate([np.full(1000, 0.02), np.full(500, 0.4)])
    assert 0.02 < otsu_threshold(values) < 0.4


def test_glass_tiles_are_skipped_and_stained_ones_kept():
    source = from_array(half_glass(), "half.png")
    mask = tissue_mask(source)
    assert 0.45 < mask.tissue_fraction < 0.55
    glass, stain, border = (TileBox(0, 0, 0, 512, 512), TileBox(0, 1536, 512, 512, 512),
                            TileBox(0, 640, 0, 512, 512))  # border: a quarter of it is stained
    assert mask.fraction(glass) < 0.01 and not mask.keeps(glass)
    assert mask.fraction(stain) > 0.99 and mask.keeps(stain)
    assert 0.2 < mask.fraction(border) < 0.3 and mask.keeps(border)


def test_a_slide_of_bare_glass_has_no_tissue():
    glass = np.clip(235 + np.random.default_rng(1).normal(0, 4, (600, 800, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(from_array(glass, "glass.png")).tissue_fraction < 1e-3  # (a speck: no tile keeps it)


def test_the_overview_reads_a_coarse_level_in_blocks():
    source = _pyramid_source(width=16384, height=8192, downsamples=(1.0, 4.0, 16.0))  # 1024x512 at level 2
    reads = []
    read = source._read
    source._read = lambda box: (reads.append(box.level), read(box))[1]
    rgb, downsample = overview(source, side=512)
    assert set(reads) == {2} and downsample == 32.0 and rgb.shape == (256, 512, 3)


def test_the_lattice_is_every_tile_lattice_around_can_give():
    grid = TileGrid(0, 1000, 600, 256)
    tiles = lattice_tiles(grid)
    assert len(tiles) == 7 * 4 and len({t.key() for t in tiles}) == len(tiles)  # x: 0..640 by 128, 744; y: 0..256, 344
    assert all(t.width == t.height == 256 and t.x + 256 <= 1000 and t.y + 256 <= 600 for t in tiles)
    keys = {t.key() for t in tiles}
    rng = np.random.default_rng(0)
    for x, y in rng.uniform((0, 0), (1000, 600), (50, 2)):
        near = grid.lattice_around(x, y, 1)
        assert {b.key() for b in near} <= keys
        assert grid.holds_well(near[0], x, y, 0.25)  # so a precomputed lattice always has a tile for a click


def test_plan_levels_auto_a_pyramid_level_or_a_magnification():
    source = _pyramid_source()
    assert plan_levels(source, "auto", tile_size=1024) == working_levels(source, 1024)
    fixed = plan_levels(source, 1)
    assert [(w.downsample, w.read_level, w.virtual) for w in fixed] == [(4.0, 1, False)]
    with pytest.raises(InputError, match="pixel size"):
        plan_levels(source, magnification=10)
    source.mpp = (0.25, 0.25)  # 40x: 10x is downsample 4
    assert [w.downsample for w in plan_levels(source, magnification=10, tile_size=1024)] == [4.0]
    with pytest.raises(InputError, match="levels 0..2"):
        plan_levels(source, 5)


def test_plan_counts_lattice_tiles_and_skips_the_glass():
    source = from_array(half_glass(), "half.png")
    everything = plan_slide(source, level=0, tile_size=512)
    assert everything.lattice == len(everything.tiles) == 7 * 3 and everything.background == 0
    tissue = plan_slide(source, level=0, tile_size=512, tissue_only=True)
    assert tissue.lattice == 21 and tissue.background == 3 * 3  # origins x 0, 256, 512 hold no stain
    assert all(box.x + box.width > 1024 for box in tissue.tiles)
    auto = plan_slide(source, level="auto", tile_size=512)
    assert {box.downsample for box in auto.tiles} == {w.downsample for w in working_levels(source, 512)}
    assert isinstance(source, ArraySource)

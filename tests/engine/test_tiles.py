import math

import pytest

from napari_sam_histo.engine.tiles import TileGrid
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox


def test_edge_tiles_are_full_size_and_shifted_inward():
    grid = TileGrid(level=1, width=2500, height=1100, tile_size=1024, downsample=4.0)
    assert (grid.columns, grid.rows) == (3, 2)
    edge = grid.tile(2, 1)
    assert (edge.x, edge.y, edge.width, edge.height) == (1476, 76, 1024, 1024)
    assert grid.tile_at(2499, 1099) == edge and edge.contains(2499, 1099)
    small = TileGrid(0, 300, 200, 1024).tile(0, 0)
    assert (small.x, small.y, small.width, small.height) == (0, 0, 300, 200)


def test_tile_at_and_level0_mapping():
    grid = TileGrid(level=2, width=3000, height=3000, tile_size=1024, downsample=16.0)
    box = grid.tile_at(1500.2, 10.0)
    assert (box.x, box.y) == (1024, 0)
    assert box.to_tile(1500, 10) == (476, 10)
    assert box.tile_to_level0(476, 10) == (1500 * 16.0, 10 * 16.0)
    assert box.level0_box == (1024 * 16.0, 0.0, 1024 * 16.0, 1024 * 16.0)


def test_neighbours_stay_inside_the_grid():
    grid = TileGrid(0, 3000, 3000, 1024)
    assert len(grid.neighbours(grid.tile(0, 0))) == 3
    assert len(grid.neighbours(grid.tile(1, 1))) == 8
    corner = grid.tile(2, 2)  # shifted inward to (1976, 1976)
    assert {(t.x, t.y) for t in grid.neighbours(corner)} == {(1024, 1024), (1976, 1024), (1024, 1976)}


@pytest.mark.parametrize("x, y", [(-1, 5), (5, 3000), (math.nan, 1), (1, math.inf)])
def test_points_outside_or_not_finite_are_refused(x, y):
    with pytest.raises(InputError):
        TileGrid(0, 3000, 3000, 1024).tile_at(x, y)


def test_tile_keys_differ_by_level_and_box():
    assert TileBox(0, 0, 0, 10, 10).key() != TileBox(1, 0, 0, 10, 10).key()
    assert TileBox(0, 0, 0, 10, 10).key() != TileBox(0, 10, 0, 10, 10).key()


def test_centred_tiles_are_full_size_and_shifted_inward():
    grid = TileGrid(0, 2500, 1500, 1024)
    box = grid.centred_at(1030.4, 700.6)
    assert (box.x, box.y, box.width, box.height) == (518, 189, 1024, 1024)
    assert grid.centred_at(2450, 30) == TileBox(0, 1476, 0, 1024, 1024)
    assert TileGrid(0, 300, 200, 1024).centred_at(10, 10) == TileBox(0, 0, 0, 300, 200)
    with pytest.raises(InputError):
        grid.centred_at(2500, 10)


def test_every_point_is_in_the_central_half_of_its_lattice_tile():
    grid = TileGrid(0, 2500, 1500, 1024)
    rng = __import__("numpy").random.default_rng(0)
    for x, y in rng.uniform(0, [2500, 1500], (200, 2)):
        tiles = grid.lattice_around(x, y, radius=1)
        assert grid.holds_well(tiles[0], x, y, 0.25)
        assert all(t.x % 512 == 0 or t.x == 1476 for t in tiles) and all(t.y % 512 == 0 or t.y == 476 for t in tiles)
        assert len({t.key() for t in tiles}) == len(tiles) <= 9


def test_holds_well_ignores_the_level_borders():
    grid = TileGrid(0, 2500, 1500, 1024)
    box = TileBox(0, 0, 0, 1024, 1024)
    assert grid.holds_well(box, 5, 5, 0.25)  # near the level's corner: fine
    assert not grid.holds_well(box, 1000, 5, 0.25)  # near the inner right border
    assert not grid.holds_well(box, 1100, 5, 0.25)  # outside

"""Working levels (real and virtual), auto level choice and reading a virtual level."""

import numpy as np
import pytest

from napari_sam_histo.engine.working_levels import auto_level, level_with_downsample, working_levels
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import ArraySource, from_array


def _pyramid_source(width=8192, height=6144, downsamples=(1.0, 4.0, 16.0)):
    """An ImageSource with several levels whose pixels are a level-0 gradient (x in red, y in green)."""

    class Pyramid(ArraySource):
        def _read(self, box):
            d = self.level_downsamples[box.level]
            xs = (np.arange(box.x, box.x + box.width) + 0.5) * d
            ys = (np.arange(box.y, box.y + box.height) + 0.5) * d
            rgb = np.zeros((box.height, box.width, 3), np.uint8)
            rgb[..., 0] = (xs[None, :] / width * 255).astype(np.uint8)
            rgb[..., 1] = (ys[:, None] / height * 255).astype(np.uint8)
            return rgb

    dims = [(int(width / d), int(height / d)) for d in downsamples]
    return Pyramid("pyramid", "pyramid-id", dims, list(downsamples))


def test_every_pyramid_level_and_virtual_powers_of_two_are_working_levels():
    levels = working_levels(_pyramid_source(), tile_size=1024)
    assert [(lv.downsample, lv.read_level, lv.virtual) for lv in levels] == [
        (1.0, 0, False), (2.0, 0, True), (4.0, 1, False), (8.0, 1, True)]  # 8: the whole slide fits a tile


def test_a_one_level_slide_gets_virtual_levels_read_from_level_0():
    source = from_array(np.zeros((2967, 2220, 3), np.uint8), "one-level")
    levels = working_levels(source, tile_size=1024)
    assert [(lv.downsample, lv.read_level, lv.virtual) for lv in levels] == [(1.0, 0, False), (2.0, 0, True),
                                                                            (4.0, 0, True)]


def test_virtual_levels_stop_at_four_times_the_level_they_are_read_from():
    source = from_array(np.zeros((9000, 9000, 3), np.uint8), "big")
    assert max(lv.downsample for lv in working_levels(source, tile_size=512)) == 4.0


def test_auto_picks_the_level_whose_tile_spans_the_view():
    levels = working_levels(_pyramid_source(), tile_size=1024)
    assert auto_level(levels, 4300, 3200).downsample == 4.0  # a 4k region on screen: one tile at 1/4
    assert auto_level(levels, 1200, 900).downsample == 1.0  # zoomed in to full resolution
    assert auto_level(levels, 2000, 1500).downsample == 2.0
    assert auto_level(levels, 200_000, 150_000).downsample == 8.0  # coarser than any level: the coarsest
    assert level_with_downsample(levels, 3.9).downsample == 4.0


def test_a_virtual_tile_is_read_from_the_finer_level_and_resized():
    source = _pyramid_source()
    box = TileBox(0, 100, 200, 256, 128, downsample=2.0, virtual=True)
    pixels = source.read_region(box)
    assert pixels.shape == (128, 256, 3)
    # the same place read at level 0 and averaged 2x2 (a gradient: the value at the pixel centre)
    expected_red = ((np.arange(100, 356) + 0.5) * 2 / 8192 * 255)
    assert np.abs(pixels[0, :, 0].astype(float) - expected_red).max() <= 1.5
    assert box.key() == "D2:100,200,256x128"  # not confused with level 0's or level 1's tiles
    with pytest.raises(Exception, match="reaches outside"):
        source.read_region(TileBox(0, 4000, 0, 256, 128, downsample=2.0, virtual=True))


def test_a_wide_gap_between_levels_does_not_end_the_list():
    levels = working_levels(_pyramid_source(100_000, 80_000, (1.0, 16.0, 64.0)), tile_size=1024)
    assert [lv.downsample for lv in levels] == [1.0, 2.0, 4.0, 16.0, 32.0, 64.0, 128.0]

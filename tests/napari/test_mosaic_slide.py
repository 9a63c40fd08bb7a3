"""The stall benchmark's larger slide: the CC0 sample repeated, written tile by tile."""

import numpy as np
import pytest

from napari_sam_histo._napari.stall_benchmark import SAMPLE, mosaic_slide
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import open_image


@pytest.mark.slow
def test_a_mosaic_is_the_sample_repeated_at_every_level(tmp_path):
    sample = open_image(SAMPLE)
    width, height = sample.level_dimensions[0]
    pixels = sample.read_region(TileBox(0, 0, 0, width, height))
    mpp = sample.mpp
    sample.close()
    slide = open_image(mosaic_slide(tmp_path, 2))
    try:
        whole = np.tile(pixels, (2, 2, 1))
        assert slide.level_dimensions[0] == (2 * width, 2 * height)
        assert slide.mpp == pytest.approx(mpp)
        for level in range(len(slide.level_dimensions)):
            step = 2 ** level
            assert slide.level_dimensions[level] == whole[::step, ::step].shape[1::-1]
        assert np.array_equal(slide.read_region(TileBox(0, 0, 0, 2 * width, 2 * height)), whole)
        level1 = slide.read_region(TileBox(1, 0, 0, *slide.level_dimensions[1]))
        assert np.array_equal(level1, whole[::2, ::2])
    finally:
        slide.close()

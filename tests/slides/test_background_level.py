import threading

import numpy as np

from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.background_level import BackgroundLevel
from napari_sam_histo.slides.lazy import level_plan, multiscale
from napari_sam_histo.slides.reader import ArraySource, from_array


def test_the_overview_read_in_the_background_equals_the_lazy_level():
    image = np.random.default_rng(5).integers(0, 255, (2967, 2220, 3), dtype=np.uint8)
    source = from_array(image)
    level, downsample = level_plan(source)[-1]
    overview = BackgroundLevel(source, level, downsample)
    assert overview.wait(60) and overview.error is None
    expected = np.asarray(multiscale(source)[-1])
    assert overview.shape == expected.shape == (741, 555, 3)
    assert np.array_equal(np.asarray(overview), expected)
    assert np.array_equal(overview[100:200, 50:60], expected[100:200, 50:60])


class HeldSource(ArraySource):
    """Reads only once ``release`` is set; fails every read when ``fail`` is."""

    release: threading.Event = None
    fail: bool = False

    def _read(self, box):
        self.release.wait(30)
        if self.fail:
            raise InputError("damaged tile")
        return super()._read(box)


def held(image, fail=False) -> HeldSource:
    plain = from_array(image)
    source = HeldSource(plain.name, plain.identity, plain.level_dimensions, plain.level_downsamples, array=plain.array)
    source.release, source.fail = threading.Event(), fail
    return source


def test_the_overview_is_white_until_read():
    source = held(np.zeros((600, 700, 3), np.uint8))
    overview = BackgroundLevel(source, 0)
    assert not overview.done.is_set() and np.all(overview[:] == 255)
    source.release.set()
    assert overview.wait(30) and np.all(np.asarray(overview) == 0)


def test_an_unreadable_overview_stays_white_and_says_why():
    source = held(np.zeros((600, 700, 3), np.uint8), fail=True)
    source.release.set()
    overview = BackgroundLevel(source, 0)
    assert overview.wait(30)
    assert isinstance(overview.error, InputError) and np.all(np.asarray(overview) == 255)

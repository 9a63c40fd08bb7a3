import threading

import numpy as np

from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.lazy import level_plan, multiscale
from napari_sam_histo.slides.progressive_level import ChunkReader, ProgressiveLevel
from napari_sam_histo.slides.reader import ArraySource, from_array


def levels_of(source, **reader_options):
    reader = ChunkReader(source, **reader_options)
    plan = level_plan(source)
    return reader, [ProgressiveLevel(reader, i, level, downsample, read_all=i == len(plan) - 1)
                    for i, (level, downsample) in enumerate(plan)]


def read(level, key):
    """What napari sees once the chunks it asked for are read: asked, waited for, asked again."""
    level[key]
    assert level.reader.wait_idle(60)
    return level[key]


def test_every_level_reads_the_same_pixels_as_the_lazy_dask_levels():
    image = np.random.default_rng(5).integers(0, 255, (2967, 2221, 3), dtype=np.uint8)
    source = from_array(image)
    reader, levels = levels_of(source)
    expected = multiscale(source)
    assert [level.shape for level in levels] == [level.shape for level in expected]
    assert reader.wait_idle(60)
    assert np.array_equal(np.asarray(levels[-1]), np.asarray(expected[-1]))  # the overview, read whole at once
    for key in [(slice(1000, 1700), slice(2000, 2221)), (slice(5, 6), slice(2217, None)), (7, slice(None, None, 3)),
                (slice(-40, None), -1), slice(600, 620)]:
        assert np.array_equal(read(levels[0], key), image[key])
    assert np.array_equal(read(levels[1], (slice(None, None, 3), 7)), np.asarray(expected[1])[::3, 7])
    assert reader.errors == []


def test_chunks_thinner_than_eight_pixels_are_read():
    image = np.random.default_rng(6).integers(0, 255, (1029, 2052, 3), dtype=np.uint8)  # edge chunks 5 and 4 px
    _, levels = levels_of(from_array(image))
    assert np.array_equal(read(levels[0], (slice(1000, None), slice(2040, None))), image[1000:, 2040:])


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


def test_chunks_not_read_yet_are_white_and_arrive_later():
    source = held(np.zeros((1500, 1300, 3), np.uint8))
    reader = ChunkReader(source)
    level = ProgressiveLevel(reader, 0, 0)
    assert np.all(level[100:900, 200:1200] == 255) and not reader.idle()  # answered at once, asked for
    generation = reader.generation
    source.release.set()
    assert reader.wait_idle(30) and reader.generation > generation
    assert np.all(level[100:900, 200:1200] == 0)


def test_an_unreadable_chunk_stays_white_says_why_and_is_not_read_again():
    source = held(np.zeros((600, 700, 3), np.uint8), fail=True)
    source.release.set()
    reader = ChunkReader(source)
    level = ProgressiveLevel(reader, 0, 0, read_all=True)
    assert reader.wait_idle(30)
    assert np.all(np.asarray(level) == 255) and "damaged tile" in reader.errors[0]
    failures = len(reader.errors)  # one per chunk of the level
    level[0:600, 0:700]  # napari drawing it again after the failures were reported
    assert reader.wait_idle(30) and len(reader.errors) == failures


def test_a_closed_reader_stops_its_threads_and_drops_its_chunks():
    image = np.random.default_rng(8).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    reader = ChunkReader(from_array(image))
    level = ProgressiveLevel(reader, 0, 0)
    read(level, (slice(0, 600), slice(0, 600)))
    reader.close()
    assert reader.closed and reader.get((0, 0, 0)) is None
    assert np.all(level[0:600, 0:600] == 255) and reader.idle()  # asked again: ignored
    for thread in reader._threads:
        thread.join(5)
        assert not thread.is_alive()


def test_the_cache_keeps_its_budget_and_the_newest_chunks():
    image = np.random.default_rng(7).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    reader = ChunkReader(from_array(image), cache_bytes=4 * 512 * 512 * 3)  # four chunks
    level = ProgressiveLevel(reader, 0, 0)
    for top in range(0, 2048, 512):
        read(level, (slice(top, top + 512), slice(None)))  # a row of four chunks at a time
    assert reader.get((0, 1536, 0)) is not None and reader.get((0, 0, 0)) is None
    assert np.array_equal(read(level, (slice(0, 10), slice(0, 10))), image[:10, :10])  # read again when asked

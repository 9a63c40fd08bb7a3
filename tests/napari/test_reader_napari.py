import numpy as np
import pytest

from napari_sam_histo._napari.reader import get_reader
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox

from ..conftest import SAMPLE_SLIDE


def test_slide_opens_lazily_with_physical_scale_and_identity(sample_source):
    reader = get_reader(str(SAMPLE_SLIDE))
    [(data, meta, kind)] = reader(str(SAMPLE_SLIDE))
    assert kind == "image" and meta["rgb"] and meta["scale"] == (0.499, 0.499) and meta["units"] == "µm"
    assert meta["multiscale"] and [level.shape for level in data][1:] == [(1483, 1110, 3), (741, 555, 3)]
    data = data[0]  # one level, and virtual overview levels for napari
    assert data.shape == (2967, 2220, 3) and data.chunk == 512
    assert meta["metadata"]["identity"] == sample_source.identity
    assert data.reader.get((0, 1024, 1536)) is None  # lazy: level 0 not read until napari asks
    data[1000:1100, 2000:2150]  # crosses a chunk border
    assert data.reader.wait_idle(30)
    crop = np.asarray(data[1000:1100, 2000:2150])
    assert np.array_equal(crop, sample_source.read_region(TileBox(0, 2000, 1000, 150, 100)))


def test_pyramidal_tiff_is_multiscale(tmp_path):
    import tifffile

    level0 = np.random.default_rng(0).integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tif:
        for f in (1, 2):
            tif.write(level0[::f, ::f], tile=(256, 256), photometric="rgb", subfiletype=0 if f == 1 else 1)
    [(data, meta, _)] = get_reader(str(path))(str(path))
    assert meta["multiscale"] and [d.shape for d in data] == [(1024, 768, 3), (512, 384, 3)]
    data[0][:10, :10]
    assert data[0].reader.wait_idle(30)
    assert np.array_equal(np.asarray(data[0][:10, :10]), level0[:10, :10])


def test_other_files_are_left_to_other_readers(tmp_path):
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]) is None
    assert get_reader(str(tmp_path)) is None


def test_corrupt_slide_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="bad.svs"):
        get_reader(str(bad))(str(bad))


def test_ome_subifd_pyramid_opens_as_lazy_multiscale_in_microns(tmp_path):
    import tifffile

    from napari_sam_histo.slides.progressive_level import ProgressiveLevel

    level0 = np.random.default_rng(1).integers(0, 255, (1200, 1100, 3), dtype=np.uint8)
    path = tmp_path / "scan.ome.tiff"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(level0, tile=(256, 256), compression="zlib", photometric="rgb", subifds=2,
                  metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        for f in (2, 4):
            tif.write(level0[::f, ::f], tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    [(data, meta, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and meta["name"] == "scan" and meta["multiscale"]
    assert meta["scale"] == (0.25, 0.25) and meta["units"] == "µm"
    assert [d.shape for d in data] == [(1200, 1100, 3), (600, 550, 3), (300, 275, 3)]
    assert all(isinstance(d, ProgressiveLevel) for d in data)  # read on threads as napari asks
    assert meta["metadata"]["level_downsamples"] == [1.0, 2.0, 4.0]
    data[1][500:600, 400:550]
    assert data[1].reader.wait_idle(30)  # the overview, read whole from the start, and the chunks asked for
    assert np.array_equal(data[1][500:600, 400:550], level0[::2, ::2][500:600, 400:550])
    assert np.array_equal(np.asarray(data[-1]), level0[::4, ::4])


def test_edge_chunks_thinner_than_eight_pixels_are_read(tmp_path):
    from napari_sam_histo.slides.lazy import multiscale
    from napari_sam_histo.slides.reader import from_array

    image = np.random.default_rng(2).integers(0, 255, (515, 1027, 3), dtype=np.uint8)  # 3-px edge chunks
    level = multiscale(from_array(image))[0]
    assert level.chunks[1][-1] == 3 and np.array_equal(np.asarray(level), image)


def test_a_large_one_level_image_gets_virtual_overview_levels(tmp_path):
    """napari draws the whole slide from the coarsest level on its GUI thread: a one-level slide gets
    coarser levels, read from level 0 and resized, down to about 1024 px."""
    from napari_sam_histo.slides.lazy import multiscale
    from napari_sam_histo.slides.reader import from_array

    image = np.random.default_rng(3).integers(0, 255, (2967, 2220, 3), dtype=np.uint8)
    levels = multiscale(from_array(image))
    assert [level.shape for level in levels] == [(2967, 2220, 3), (1483, 1110, 3), (741, 555, 3)]
    coarse = np.asarray(levels[2][:100, :100]).astype(float)
    expected = image[:400, :400].reshape(100, 4, 100, 4, 3).mean(axis=(1, 3))
    assert np.abs(coarse - expected).mean() < 40  # a resized overview of the same pixels

"""Generic and OME pyramidal TIFFs through tifffile (slides.tiff_source), and the dispatch rule."""

import shutil
import tracemalloc

import numpy as np
import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import ArraySource, OpenSlideSource, open_image
from napari_sam_histo.slides.tiff_source import TiffSource

from ..conftest import SAMPLE_SLIDE

TILE = (256, 256)


def smooth_rgb(height, width, seed=0):
    """Random but compressible pixels, so zlib and the equality checks are both meaningful."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(8, 0).repeat(8, 1)[:height, :width]) ^ rng.integers(
        0, 4, (height, width, 3), dtype=np.uint8)


def write_ome_subifds(path, level0, factors=(1, 2, 4), metadata=None, **options):
    import tifffile

    options = {"tile": TILE, "compression": "zlib", "photometric": "rgb", **options}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(level0, subifds=len(factors) - 1, metadata=metadata or {}, **options)
        for f in factors[1:]:
            tif.write(level0[::f, ::f], subfiletype=1, **options)
    return path


@pytest.fixture
def level0():
    return smooth_rgb(1000, 1300)


@pytest.fixture
def ome_path(tmp_path, level0):
    return write_ome_subifds(tmp_path / "slide.ome.tif", level0,
                             metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
                                       "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})


def test_ome_subifd_pyramid_has_levels_downsamples_and_mpp(ome_path):
    source = open_image(ome_path)
    assert isinstance(source, TiffSource)
    assert source.level_dimensions == [(1300, 1000), (650, 500), (325, 250)]
    assert source.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
    assert source.mpp == pytest.approx((0.5, 0.5))
    assert source.identity.startswith("file:")
    assert source.properties["tiff.subifds"] == "True" and source.properties["tiff.compression"] == "ADOBE_DEFLATE"
    source.close()


def test_region_reads_equal_the_crop_of_what_was_written(ome_path, level0):
    source = open_image(ome_path)
    # crosses tile borders at level 0; a mid-level box; a box ending on the coarsest level's border
    for level, (x, y, w, h) in ((0, (200, 230, 300, 100)), (1, (100, 240, 290, 170)), (2, (300, 200, 25, 50))):
        expected = level0[:: 2**level, :: 2**level][y: y + h, x: x + w]
        assert np.array_equal(source.read_region(TileBox(level, x, y, w, h)), expected), level


def test_multi_page_pyramid_with_resolution_tags(tmp_path, level0):
    import tifffile

    path = tmp_path / "pages.tiff"
    with tifffile.TiffWriter(path) as tif:
        for f in (1, 2, 4):
            tif.write(level0[::f, ::f], tile=TILE, compression="zlib", photometric="rgb",
                      subfiletype=0 if f == 1 else 1, resolution=(40000 / f, 40000 / f), resolutionunit="CENTIMETER")
    source = open_image(path)
    assert isinstance(source, TiffSource) and source.properties["tiff.subifds"] == "False"
    assert source.level_dimensions == [(1300, 1000), (650, 500), (325, 250)]
    assert source.mpp == pytest.approx((0.25, 0.25))  # 40000 px/cm
    assert np.array_equal(source.read_region(TileBox(1, 500, 400, 150, 100)), level0[::2, ::2][400:500, 500:650])


@pytest.mark.parametrize("metadata, mpp", [
    ({"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 260, "PhysicalSizeYUnit": "nm"}, (0.25, 0.26)),
    ({"PhysicalSizeX": 0.3}, (0.3, 0.3)),  # µm is OME's default unit; Y defaults to X
    ({}, None),
])
def test_ome_pixel_size_units(tmp_path, level0, metadata, mpp):
    source = open_image(write_ome_subifds(tmp_path / "m.ome.tif", level0, metadata=metadata))
    assert source.mpp == (pytest.approx(mpp) if mpp else None)


def test_default_dpi_tag_is_not_taken_for_a_pixel_size(tmp_path, level0):
    import tifffile

    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, level0, tile=TILE, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert open_image(path).mpp is None  # 72 dpi would be 353 µm/px: an editor's default, not a scan


def test_greyscale_16bit_is_stretched_once_for_the_whole_image(tmp_path):
    import tifffile

    grey = np.full((600, 800), 1000, np.uint16)
    grey[:, 400:] = 3000
    grey[200:400, 300:500] = 2000
    path = tmp_path / "grey.tif"
    with tifffile.TiffWriter(path) as tif:
        for f in (1, 2):
            tif.write(grey[::f, ::f], tile=TILE, subfiletype=0 if f == 1 else 1)
    source = open_image(path)
    region = source.read_region(TileBox(0, 320, 220, 160, 160))  # uniform 2000, not stretched to 0
    assert region.shape == (160, 160, 3) and np.all(region == 128)
    assert np.all(source.read_region(TileBox(0, 0, 0, 64, 64)) == 0)
    assert np.all(source.read_region(TileBox(1, 300, 0, 64, 64)) == 255)


def test_planar_and_rgba_tiffs(tmp_path, level0):
    import tifffile

    planar = tmp_path / "planar.ome.tif"
    tifffile.imwrite(planar, np.moveaxis(level0, -1, 0), ome=True, tile=TILE, photometric="rgb",
                     planarconfig="separate")
    assert np.array_equal(open_image(planar).read_region(TileBox(0, 10, 20, 300, 40)), level0[20:60, 10:310])
    rgba = np.dstack([level0, np.full(level0.shape[:2], 255, np.uint8)])
    rgba[:100, :100, 3] = 0  # transparent: outside the scan
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, tile=TILE, photometric="rgb", extrasamples=["unassalpha"])
    region = open_image(path).read_region(TileBox(0, 50, 50, 100, 100))
    assert np.all(region[:50, :50] == 255) and np.array_equal(region[50:, 50:], level0[100:150, 100:150])


def test_dispatch_vendor_tiff_to_openslide_small_flat_tiff_whole(tmp_path, level0):
    import tifffile

    svs_as_tif = tmp_path / "aperio.tif"
    shutil.copy(SAMPLE_SLIDE, svs_as_tif)  # an Aperio file keeps OpenSlide (vendor metadata, quickhash)
    assert isinstance(open_image(svs_as_tif), OpenSlideSource)
    tifffile.imwrite(tmp_path / "flat.tif", level0[:100, :100])  # untiled, one level: read whole
    assert isinstance(open_image(tmp_path / "flat.tif"), ArraySource)


@pytest.mark.parametrize("make, words", [
    (lambda p, ome: p.write_bytes(b"II*\x00" + b"\xff" * 200),
     r"broken.tif is truncated or damaged \(204 bytes\): its first image directory would start at byte 4294967295"),
    (lambda p, ome: p.write_bytes(b"\x00garbage" * 100), "broken.tif: not a readable TIFF"),
    (lambda p, ome: p.write_bytes(ome.read_bytes()[: ome.stat().st_size // 2]),
     r"broken.tif is truncated or damaged \(\d+ bytes, [\d.]+ MiB\): image 0 needs \d+ bytes"),
    (lambda p, ome: p.write_bytes(b""), r"broken.tif is empty \(0 bytes\)"),
    (lambda p, ome: p.write_bytes(b"II*\x00\x08\x00"), r"broken.tif is truncated or damaged \(6 bytes\): the file ends"),
])
def test_corrupt_and_truncated_tiffs_are_clear_errors(tmp_path, ome_path, make, words):
    path = tmp_path / "broken.tif"
    make(path, ome_path)
    with pytest.raises(InputError, match=words):
        open_image(path)


def test_damaged_tile_data_is_a_clear_error(tmp_path, ome_path):
    import tifffile

    with tifffile.TiffFile(ome_path) as tif:
        offset = tif.pages[0].dataoffsets[6]  # row 1, column 0 of the 6-tile-wide level 0
    data = bytearray(ome_path.read_bytes())
    data[offset: offset + 64] = b"\x00" * 64  # that tile's zlib stream destroyed
    path = tmp_path / "damaged.ome.tif"
    path.write_bytes(bytes(data))
    source = open_image(path)  # the coarsest level is intact
    with pytest.raises(InputError, match="damaged.ome.tif: cannot read L0"):
        source.read_region(TileBox(0, 100, 200, 300, 200))


def test_fluorescence_and_stacks_are_refused_by_name(tmp_path):
    import tifffile

    channels = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(channels, np.zeros((5, 300, 400), np.uint16), ome=True, tile=TILE, metadata={"axes": "CYX"})
    with pytest.raises(InputError, match=r"fluo.ome.tif: unsupported TIFF layout .*C=5.*fluorescence"):
        open_image(channels)
    stack = tmp_path / "stack.ome.tiff"
    tifffile.imwrite(stack, np.zeros((3, 300, 400, 3), np.uint8), ome=True, tile=TILE, photometric="rgb",
                     metadata={"axes": "ZYXS"})
    with pytest.raises(InputError, match="stack.ome.tiff: unsupported TIFF layout .*Z=3"):
        open_image(stack)
    with pytest.raises(InputError, match="not found"):
        open_image(tmp_path / "missing.ome.tif")


def test_a_region_of_a_huge_file_is_read_without_the_full_array(tmp_path):
    """tracemalloc sees every numpy buffer (decoded tiles included): the whole of level 0 would be
    805 MB, opening and reading one 1024x1024 region must stay far below that."""
    from napari_sam_histo.slides.lazy import multiscale
    from napari_sam_histo.slides.synthetic_slide import write_synthetic_slide

    path = tmp_path / "huge.ome.tif"
    write_synthetic_slide(path, size=16384, tile=512)
    tracemalloc.start()
    try:
        source = open_image(path)
        region = source.read_region(TileBox(0, 7700, 7900, 1024, 1024))
        view = np.asarray(multiscale(source)[0][8000:9024, 8000:9024])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.level_dimensions[0] == (16384, 16384) and source.level_count == 6
    assert region.std() > 5 and view.shape == (1024, 1024, 3)  # tissue texture, not blank
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced"


@pytest.mark.slow
def test_slide_memory_command_prints_figures(tmp_path, capsys):
    from napari_sam_histo.cli import main

    assert main(["slide-memory", "--size", "2048", "--tile", "256", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2048x2048" in out and "peak RSS" in out and "opened as TiffSource" in out
    assert not list(tmp_path.glob("*.tif"))  # deleted without --keep
    assert main(["slide-memory", "--size", "2048", "--tile", "100"]) == 2


def test_tiff_header_with_an_unparsable_directory_is_damaged_not_unrecognised(tmp_path):
    path = tmp_path / "bad.ome.tif"
    path.write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\xff\xff" + b"\x00" * 64)  # 65535 entries in 74 bytes
    with pytest.raises(InputError, match=r"bad.ome.tif is truncated or damaged \(74 bytes\)"):
        open_image(path)


def test_truncated_subifd_level_names_the_level(tmp_path, ome_path):
    """Top-level image complete, a reduced level (SubIFD) cut off: tiff_source's own check names it."""
    import tifffile

    with tifffile.TiffFile(ome_path) as tif:
        level2 = tif.series[0].levels[2].keyframe
        start = min(level2.dataoffsets)
        top_end = max(o + c for o, c in zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts))
    assert start > top_end  # tifffile writes level 0, then the SubIFD levels
    path = tmp_path / "cut.ome.tif"
    path.write_bytes(ome_path.read_bytes()[: start + 10])
    with pytest.raises(InputError, match=r"cut.ome.tif is truncated or damaged \(\d+ bytes.*\): level 2 needs"):
        open_image(path)

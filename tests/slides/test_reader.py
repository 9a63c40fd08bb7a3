import numpy as np
import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import open_image

from ..conftest import SAMPLE_SLIDE


def test_svs_opens_lazily_with_levels_mpp_and_identity(sample_source):
    assert sample_source.level_dimensions[0] == (2220, 2967)
    assert sample_source.mpp == pytest.approx((0.499, 0.499))
    assert sample_source.identity.startswith("slide:")
    region = sample_source.read_region(TileBox(0, 1000, 1000, 64, 32))
    assert region.shape == (32, 64, 3) and region.dtype == np.uint8
    assert region.std() > 5  # real tissue, not blank


def test_identity_is_stable_and_cheap_across_opens(sample_source):
    again = open_image(SAMPLE_SLIDE)
    assert again.identity == sample_source.identity
    again.close()


def test_box_outside_the_level_is_refused(sample_source):
    with pytest.raises(InputError, match="reaches outside level 0"):
        sample_source.read_region(TileBox(0, 2200, 0, 64, 64))
    with pytest.raises(InputError, match="levels 0..0"):
        sample_source.read_region(TileBox(3, 0, 0, 8, 8))


def test_plain_png_and_tiff_open(tmp_path):
    import imageio.v3 as iio
    import tifffile

    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", image)
    tifffile.imwrite(tmp_path / "b.tif", image)
    for name in ("a.png", "b.tif"):
        source = open_image(tmp_path / name)
        assert source.level_dimensions == [(50, 40)]
        assert np.array_equal(source.read_region(TileBox(0, 0, 0, 50, 40)), image)
        assert source.identity.startswith("file:")


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("missing.svs", None, "not found"),
        ("corrupt.svs", b"\x00garbage" * 100, "corrupt.svs"),
        ("notes.txt", b"hello", "unsupported file type .txt"),
        ("broken.png", b"not a png", "broken.png: cannot read"),
    ],
)
def test_bad_files_get_a_clear_error(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        open_image(path)


@pytest.mark.parametrize("name", ["empty.svs", "empty.tif", "empty.ndpi", "empty.png"])
def test_an_empty_file_says_it_is_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputError, match=rf"{name} is empty \(0 bytes\)") as caught:
        open_image(tmp_path / name)
    assert "not recognise" not in str(caught.value)


@pytest.mark.parametrize("name", ["half.svs", "half.tif"])
def test_a_slide_cut_in_half_says_truncated_with_its_size(tmp_path, name):
    data = SAMPLE_SLIDE.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"{name} is truncated or damaged \({len(data) // 2} bytes") as caught:
        open_image(path)
    assert "not recognise" not in str(caught.value)


def test_a_slide_whose_tile_data_is_cut_off_is_truncated(tmp_path):
    """The directories survive (tifffile writes them before the data) but the tiles end early."""
    import tifffile

    whole = tmp_path / "whole.svs"
    image = np.random.default_rng(0).integers(0, 255, (512, 768, 3), dtype=np.uint8)
    tifffile.imwrite(whole, image, tile=(256, 256), photometric="rgb")
    data = whole.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) // 2])
    words = rf"cut.svs is truncated or damaged \({len(data) // 2} bytes.*\): image 0 needs"
    with pytest.raises(InputError, match=words):
        open_image(path)
    assert open_image(whole).level_dimensions == [(768, 512)]  # the complete file opens


def test_not_a_tiff_slide_is_still_not_recognised(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_bytes(b"hello, this is not a slide" * 10)
    words = r"notes.svs: OpenSlide does not recognise this file as a slide \(260 bytes, not a TIFF"
    with pytest.raises(InputError, match=words):
        open_image(path)


def test_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        open_image(tmp_path)

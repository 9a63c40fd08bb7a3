import numpy as np
import pytest

from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.rgb import to_rgb_uint8


def test_rgb_uint8_is_unchanged():
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    assert np.array_equal(to_rgb_uint8(image), image)


def test_grey_is_copied_to_three_channels():
    grey = np.full((10, 12), 77, np.uint8)
    out = to_rgb_uint8(grey)
    assert out.shape == (10, 12, 3) and np.all(out == 77)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    out = to_rgb_uint8(rgba)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_rgba_compositing_rounds_every_value_and_alpha_to_nearest():
    # every (channel value, alpha) pair against the real-valued blend, rounded: cached embeddings
    # depend on these exact pixels
    value, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([value, 255 - value, value // 2, alpha], axis=-1).astype(np.uint8)
    exact = np.rint(rgba[..., :3] * (alpha[..., None] / 255.0) + 255.0 * (1 - alpha[..., None] / 255.0))
    assert np.array_equal(to_rgb_uint8(rgba), exact.astype(np.uint8))


def test_sixteen_bit_is_stretched_to_full_range():
    image = np.linspace(1000, 3000, 8 * 8 * 3).reshape(8, 8, 3).astype(np.uint16)
    out = to_rgb_uint8(image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_float_in_unit_range_is_scaled():
    assert to_rgb_uint8(np.full((8, 8, 3), 0.5))[0, 0, 0] == 128


def test_channel_first_is_moved_last():
    image = np.zeros((3, 20, 30), np.uint8)
    image[1] = 9
    out = to_rgb_uint8(image)
    assert out.shape == (20, 30, 3) and out[0, 0, 1] == 9


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((16, 16, 2), np.uint8), "2 channels"),
        (np.zeros((16, 16, 5), np.uint8), "5 channels"),
        (np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
        (np.zeros((0, 0, 3), np.uint8), "0x0 pixels"),
        (np.full((16, 16, 3), np.nan), "NaN"),
        (np.zeros((2, 16, 16, 3), np.uint8), "shape"),
        (np.array([["a"] * 16] * 16), "pixel type"),
    ],
)
def test_unusable_images_get_a_clear_error(image, words):
    with pytest.raises(InputError, match=words):
        to_rgb_uint8(image, name="my.png")

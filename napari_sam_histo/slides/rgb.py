"""Turn whatever pixels a user opens into the 8-bit RGB that SAM's encoder was trained on.

Documented conversions (anything else is an ``InputError`` naming the value):
* 2-D grey, or one channel -> the grey value copied to R, G and B;
* RGBA -> composited onto white (slide readers mark the area outside the scan as transparent,
  and a white background is what a pathologist sees there);
* channel-first (3, H, W) or (4, H, W) -> moved to channel-last;
* uint8 -> as is; bool -> 0/255; other integer types (e.g. 16-bit) and floats outside [0, 1] ->
  stretched linearly from the array's min..max to 0..255; floats within [0, 1] -> times 255;
* 2 channels or more than 4 -> refused; NaN/inf -> refused; smaller than 8x8 pixels -> refused.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

MIN_SIDE = 8
PREPROCESSING_ID = "rgb8-v1"  # bump when the conversion changes: it is part of every cache key


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 copy of ``image``; ``name`` is used in error messages."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(f"{name} has shape {array.shape}; expected (H, W), (H, W, C) or (C, H, W).")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise InputError(
            f"{name} has {array.shape[-1]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)."
        )
    height, width = array.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InputError(f"{name} is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed.")
    array = _to_uint8(array, name)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4:
        return _onto_white(array)
    return np.ascontiguousarray(array)


def _onto_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 composited onto white, rounded to the nearest integer: ``(c * a + 255 * (255 - a)) / 255``
    in integers (no ties: the fraction is k / 255), so slide tiles, which are mostly opaque, cost a
    copy and never a float pass over the whole region."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    alpha = alpha.astype(np.uint16)
    mixed = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127  # at most 65,152
    return (mixed // 255).astype(np.uint8)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name} has pixel type {array.dtype}; expected integers or floats.")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{name} contains NaN or infinite pixel values.")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if high == low:
        return np.zeros(array.shape, np.uint8)
    return np.rint((values - low) / (high - low) * 255.0).astype(np.uint8)

"""A purple disc on pink noise, H&E-like: the one-object image many tests embed and click."""

import numpy as np


def disc_image(size: int, centre: tuple[int, int], radius: int, seed: int = 0):
    """(RGB uint8 image of ``size`` x ``size``, boolean mask of the disc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    target = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
    image = np.where(target[..., None], [120, 50, 150], [235, 200, 220]) + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), target

"""Tumour nests, H&E-like: ellipses packed with purple nuclei on pink stroma that has scattered
nuclei of its own. Zero-shot SAM's first click on a nest takes a few nuclei or the stroma around
them; a decoder trained on a few such nests learns to take the whole nest."""

import numpy as np


def nest_image(size: int, seed: int, nests: int = 5, radii=(40, 70)):
    """(RGB uint8 image of ``size`` x ``size``, int32 label image: 0 stroma, 1..n the nests);
    the nests' half-axes are drawn within ``radii`` (px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    label = np.zeros((size, size), np.int32)
    placed, tries = [], 0
    while len(placed) < nests and tries < 1000:
        tries += 1
        a, b = rng.uniform(*radii, 2)
        reach = max(a, b)
        cy, cx = rng.uniform(reach + 4, size - reach - 4, 2)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (reach + r + 12) ** 2 for y, x, r in placed):
            continue
        placed.append((cy, cx, reach))
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        label[(u / a) ** 2 + (v / b) ** 2 < 1] = len(placed)
    inside = label > 0
    nuclei = np.zeros((size, size), bool)
    for density, where in ((0.012, inside), (0.0012, ~inside)):
        for y, x in zip(*np.nonzero(where & (rng.random((size, size)) < density))):
            r = rng.uniform(2.5, 4.5)
            y0, y1, x0, x1 = max(0, int(y - r)), min(size, int(y + r) + 1), max(0, int(x - r)), min(size, int(x + r) + 1)
            nuclei[y0:y1, x0:x1] |= (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 < r * r
    image = np.empty((size, size, 3))
    image[:] = (232, 175, 200)
    image[inside] = (215, 165, 200)
    image[nuclei] = (95, 45, 135)
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label

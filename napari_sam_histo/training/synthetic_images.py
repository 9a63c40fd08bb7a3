"""The pixels of a synthetic pair (``synthetic``): a random smooth blob, one tissue texture seen
through it in another (``texture_composite``), H&E stain jitter, a random non-square crop holding an
object, and how much of an image is tissue. numpy, scipy and PIL only."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import InputError

MIN_FRACTION, MAX_FRACTION = 0.01, 0.9
# Ruifrok & Johnston haematoxylin, eosin, DAB optical densities (the rows skimage's rgb2hed uses).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def smooth_blob(shape: tuple[int, int], rng: np.random.Generator, fraction: float,
                roughness: float = 0.6) -> np.ndarray:
    """A random smooth connected region without holes covering about ``fraction`` (clipped to
    1-90 %) of an image of ``shape``: low-pass noise plus a Gaussian bump at a random place,
    thresholded so the region has the asked area, then its largest component, holes filled.
    ``roughness`` (0..1) weighs the noise against the bump: 0 gives an ellipse-like region,
    1 a ragged one. The region may touch the image border (an object cut by the crop)."""
    height, width = int(shape[0]), int(shape[1])
    if height < 4 or width < 4:
        raise InputError(f"A blob needs an image of at least 4x4 pixels, not {width}x{height}.")
    fraction = float(np.clip(fraction, MIN_FRACTION, MAX_FRACTION))
    scale = min(1.0, 128.0 / max(height, width))  # the field is made small, then enlarged: smooth and cheap
    small = (max(4, round(height * scale)), max(4, round(width * scale)))
    yy, xx = np.mgrid[0:small[0], 0:small[1]].astype(float)
    radius = np.sqrt(fraction * small[0] * small[1] / np.pi)  # the bump's radius for the asked area
    centre = [rng.uniform(min(radius, n / 2) * 0.6, n - min(radius, n / 2) * 0.6) for n in small]
    stretch = rng.uniform(0.6, 1.6)  # an elongated, rotated bump
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / stretch
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * stretch
    bump = np.exp(-(u ** 2 + v ** 2) / (2 * max(radius, 1.0) ** 2))
    noise = ndimage.gaussian_filter(rng.standard_normal(small), sigma=max(1.0, radius / 2.5), mode="wrap")
    noise += 0.5 * ndimage.gaussian_filter(rng.standard_normal(small), sigma=max(1.0, radius / 6), mode="wrap")
    noise /= noise.std() + 1e-9
    field = (1 - roughness) * bump / (bump.std() + 1e-9) + roughness * noise
    field = ndimage.zoom(field, (height / small[0], width / small[1]), order=1, mode="nearest")[:height, :width]
    if field.shape != (height, width):  # zoom rounds its output size
        field = np.pad(field, ((0, height - field.shape[0]), (0, width - field.shape[1])), mode="edge")
    # The threshold that gives the asked area to the largest hole-free component (bisection on a
    # sub-sample of the field: the area is monotone in the threshold up to component splits).
    # The threshold tried whose area is closest wins.
    step = max(1, int(np.ceil(max(height, width) / 256)))
    coarse = field[::step, ::step]
    low, high = float(coarse.min()), float(coarse.max())
    best, best_error = (low + high) / 2, np.inf
    for _ in range(16):
        middle = (low + high) / 2
        area = ndimage.binary_fill_holes(_largest_component(coarse > middle)).mean()
        if abs(area - fraction) < best_error:
            best, best_error = middle, abs(area - fraction)
        low, high = (middle, high) if area > fraction else (low, middle)
    blob = ndimage.binary_fill_holes(_largest_component(field > best))
    if not blob.any():  # a degenerate field: fall back to the bump's peak
        blob[int(np.clip(centre[0] / scale, 0, height - 1)), int(np.clip(centre[1] / scale, 0, width - 1))] = True
    return blob


def _features(image: np.ndarray) -> np.ndarray:
    """Colour and texture statistics of an RGB image (to pick textures that differ)."""
    grey = image.astype(float).mean(axis=2)
    fine = np.abs(ndimage.laplace(grey))
    coarse = np.abs(ndimage.laplace(ndimage.gaussian_filter(grey, 3)))
    stats = [image.reshape(-1, 3).mean(0) / 255, image.reshape(-1, 3).std(0) / 64,
             [fine.mean() / 20, coarse.mean() / 3, ndimage.gaussian_filter(grey, 4).std() / 30]]
    return np.concatenate(stats)


def texture_distance(first: np.ndarray, second: np.ndarray) -> float:
    """How unlike two textures are (0: the same statistics), colour and texture alike."""
    return float(np.linalg.norm(_features(first) - _features(second)))


def _match_colours(foreground: np.ndarray, background: np.ndarray, amount: float) -> np.ndarray:
    """``foreground`` with its per-channel mean and spread moved ``amount`` (0..1) towards
    ``background``'s, so the region does not stand out by colour alone."""
    fg, bg = foreground.reshape(-1, 3).astype(float), background.reshape(-1, 3).astype(float)
    fg_mean, bg_mean = fg.mean(0), bg.mean(0)
    fg_std, bg_std = fg.std(0) + 1e-6, bg.std(0) + 1e-6
    gain = (1 - amount) + amount * bg_std / fg_std
    out = (foreground.astype(float) - fg_mean) * gain + fg_mean + amount * (bg_mean - fg_mean)
    return np.clip(out, 0, 255)


def texture_composite(background: np.ndarray, foreground: np.ndarray, rng: np.random.Generator,
                      fraction: float | None = None, feather: float | None = None,
                      match: float | None = None, roughness: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``foreground`` tissue seen through a smooth blob in ``background`` tissue (two RGB uint8
    crops of one size). The blob (``smooth_blob``, ``fraction`` of the image; random 1-90 %
    log-uniform when ``None``) is blended with an alpha that fades over about ``feather`` pixels
    each side of its border (random 2-8 when ``None``) so no hard edge gives the region away, and
    the foreground's colours are pulled ``match`` (0..1; random 0.3-0.9) towards the background's.
    Returns (image uint8 HxWx3, mask bool): the mask is the blob, exactly where the foreground
    weighs more than half."""
    background, foreground = np.asarray(background), np.asarray(foreground)
    if background.shape != foreground.shape or background.ndim != 3 or background.shape[2] != 3:
        raise InputError(f"A composite needs two RGB images of one size, not {background.shape} and "
                         f"{foreground.shape}.")
    if fraction is None:
        fraction = float(np.exp(rng.uniform(np.log(MIN_FRACTION * 2), np.log(MAX_FRACTION))))
    feather = float(rng.uniform(2.0, 8.0) if feather is None else feather)
    match = float(rng.uniform(0.3, 0.9) if match is None else match)
    roughness = float(rng.uniform(0.3, 0.8) if roughness is None else roughness)
    blob = smooth_blob(background.shape[:2], rng, fraction, roughness=roughness)
    # alpha from the signed distance to the blob's border: above one half exactly on the blob,
    # so the mask is the blob (one piece, no holes) and the foreground fades out over ~feather px
    signed = ndimage.distance_transform_edt(blob) - ndimage.distance_transform_edt(~blob)
    alpha = (0.5 * (1 + np.tanh(signed / max(feather, 1e-3)))).astype(np.float32)
    mask = blob
    pasted = _match_colours(foreground, background, match)
    image = background.astype(np.float32) * (1 - alpha[..., None]) + pasted * alpha[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def stain_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """H&E-style colour augmentation of an RGB uint8 image: each stain's concentration (Ruifrok's
    HED optical densities, as ``skimage.color.rgb2hed``, but inverted exactly) scaled by
    1 +- 0.2·strength and shifted by +-0.02·strength (DAB a third of that), then brightness
    (+-0.06), contrast (x 1 +- 0.15) and saturation (x 1 +- 0.2), each times ``strength``. ``strength`` 0 returns
    the image unchanged; the result depends only on the image, ``rng``'s state and ``strength``."""
    image = np.asarray(image)
    strength = float(strength)
    if strength <= 0:
        return image.copy()
    rgb = image.astype(np.float64)
    density = -np.log((rgb + 1.0) / 256.0)
    stains = density @ _HED_FROM_RGB
    alpha = 1 + rng.uniform(-0.2, 0.2, 3) * strength
    beta = rng.uniform(-0.02, 0.02, 3) * strength
    alpha[2], beta[2] = 1 + (alpha[2] - 1) * 0.3, beta[2] * 0.3  # DAB is all but absent in H&E
    rgb = 256.0 * np.exp(-((stains * alpha + beta) @ _RGB_FROM_HED)) - 1.0
    brightness = rng.uniform(-0.06, 0.06) * strength * 255
    contrast = 1 + rng.uniform(-0.15, 0.15) * strength
    saturation = 1 + rng.uniform(-0.2, 0.2) * strength
    mean = rgb.mean()
    rgb = (rgb - mean) * contrast + mean + brightness
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + (rgb - grey) * saturation
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def tissue_fraction(image: np.ndarray) -> float:
    """The share of pixels that look like stained tissue: coloured (saturation above 0.07) and
    neither near-white glass (brightness above 0.92 with little colour) nor black (below 0.08)."""
    rgb = np.asarray(image).astype(np.float32) / 255
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1e-6)
    tissue = (saturation > 0.07) & (high > 0.08) & ~((high > 0.92) & (saturation < 0.12))
    return float(tissue.mean())


def aspect_shape(long_side: int, rng: np.random.Generator, max_aspect: float) -> tuple[int, int]:
    """(height, width) with the long side ``long_side`` and a random aspect 1.15..max_aspect."""
    aspect = rng.uniform(1.15, max(max_aspect, 1.2))
    short = max(8, int(round(long_side / aspect)))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def random_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, min_side: int, max_side: int,
                min_fraction: float = MIN_FRACTION, max_fraction: float = MAX_FRACTION, max_aspect: float = 2.0,
                component: bool = False, point: tuple[int, int] | None = None, tries: int = 20,
                min_visible: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """A non-square crop of the pair (``image`` HxWx3, ``mask`` HxW) whose long side is
    ``min_side``..``max_side`` (at most the image's), aspect 1.15..``max_aspect``, and whose object
    covers ``min_fraction``..``max_fraction`` of the crop; ``tries`` random crops are tried, then
    ``None`` (no such crop was found: e.g. an object too large for the smallest crop).

    The crop's mask is the pair's mask as it is, all objects in the crop included. With
    ``component=True`` only one connected object is kept, the others become background: the one
    under ``point`` (row, col in crop coordinates; a crop whose point is background is retried),
    or, without ``point``, the one under a random object pixel of the crop; the fraction is that
    of the kept object. ``min_visible`` (with ``component``) refuses a crop that shows less than
    that share of the kept object's whole area, unless the object covers 30 % of the crop or more
    (a sliver of an object at the crop's corner is a poor target)."""
    image, mask = np.asarray(image), np.asarray(mask).astype(bool)
    height, width = mask.shape
    if image.shape[:2] != mask.shape:
        raise InputError(f"The image is {width}x{height} but the mask is {mask.shape[1]}x{mask.shape[0]}.")
    if min(height, width) < 8:
        return None
    if component:
        full_labels, _ = ndimage.label(mask)
        areas = np.bincount(full_labels.ravel())
    for _ in range(int(tries)):
        long_cap = min(int(max_side), max(height, width))
        long_side = int(rng.integers(min(int(min_side), long_cap), long_cap + 1))
        crop_h, crop_w = aspect_shape(long_side, rng, max_aspect)
        if crop_h > height or crop_w > width:  # the image's shape decides which way the crop lies
            crop_h, crop_w = crop_w, crop_h
        crop_h, crop_w = min(crop_h, height), min(crop_w, width)
        if crop_h == crop_w:  # a square image smaller than the long side: shorten one side
            if rng.random() < 0.5:
                crop_h = max(8, int(round(crop_h / rng.uniform(1.15, max(max_aspect, 1.2)))))
            else:
                crop_w = max(8, int(round(crop_w / rng.uniform(1.15, max(max_aspect, 1.2)))))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        sub = mask[top:top + crop_h, left:left + crop_w]
        if not sub.any():
            continue
        if component:
            labels = full_labels[top:top + crop_h, left:left + crop_w]
            if point is not None:
                row, col = int(point[0]), int(point[1])
                if not (0 <= row < crop_h and 0 <= col < crop_w) or labels[row, col] == 0:
                    continue
                chosen = labels[row, col]
            else:
                rows, cols = np.nonzero(sub)
                pick = int(rng.integers(rows.size))
                chosen = labels[rows[pick], cols[pick]]
            sub = labels == chosen
            if sub.sum() < min_visible * areas[chosen] and sub.mean() < 0.3:
                continue
        fraction = float(sub.mean())
        if min_fraction <= fraction <= max_fraction:
            return image[top:top + crop_h, left:left + crop_w].copy(), sub.copy()
    return None


def resize_pixels(image: np.ndarray, shape: tuple[int, int], mask: bool = False) -> np.ndarray:
    if image.shape[:2] == tuple(shape):
        return image
    resample = Image.BILINEAR if mask else Image.BICUBIC  # a mask: smooth, then thresholded
    pil = Image.fromarray(image.astype(np.uint8) * (255 if mask else 1))
    out = np.asarray(pil.resize((int(shape[1]), int(shape[0])), resample))
    return out > 127 if mask else out

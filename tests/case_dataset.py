"""A tiny dataset of cases as the benchmarks read it (images/, masks/, manifest.csv with a
``case_id`` column): one dark rectangle on a light, noisy background per image."""

import csv

import imageio.v3 as iio
import numpy as np


def write_case_dataset(root, cases: dict, size: int, rectangle):
    """``cases``: case id -> number of images; ``rectangle(i)``: (top, bottom, left, right) of
    image i's object. Returns ``root``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for case, n in cases.items():
        for i in range(n):
            stem = f"{case}-{i:02d}"
            top, bottom, left, right = rectangle(i)
            mask = np.zeros((size, size), np.uint8)
            mask[top:bottom, left:right] = 255
            image = np.where(mask[..., None] > 0, 90, 220) + rng.integers(0, 20, (size, size, 3))
            iio.imwrite(root / "images" / f"{stem}.png", image.astype(np.uint8))
            iio.imwrite(root / "masks" / f"{stem}.png", mask)
            rows.append({"stem": stem, "image": f"images/{stem}.png", "mask": f"masks/{stem}.png", "case_id": case})
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root

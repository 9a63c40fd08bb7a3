"""The pure parts of scripts/prepare-eval-sources (no shared data needed)."""


import numpy as np
import pytest

from ..scripts import load_script


@pytest.fixture(scope="module")
def pes():
    return load_script("prepare-eval-sources")


def test_downscale_area_is_the_rounded_block_mean(pes):
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    small = pes.downscale_area(image[:7, :10], 2)  # the odd row/columns beyond a multiple are dropped
    assert small.shape == (3, 5, 3) and small.dtype == np.uint8
    expected = np.floor(image[:6, :10].astype(float).reshape(3, 2, 5, 2, 3).mean(axis=(1, 3)) + 0.5)
    assert np.array_equal(small, expected.astype(np.uint8))


def test_downscale_mask_thresholds_the_block_fraction_at_half(pes):
    mask = np.zeros((4, 8), np.uint8)
    mask[:1, :4] = 255  # block (0, 0): 4 of 16 -> background
    mask[:, 4:6] = 255  # block (0, 1): 8 of 16 -> foreground (ties count as object)
    out = pes.downscale_mask(mask, 4)
    assert out.tolist() == [[0, 255]]


def test_tile_origins_are_non_overlapping_and_drop_the_remainder(pes):
    assert pes.tile_origins(640, 1100, 512) == [(0, 0), (0, 512)]
    assert pes.tile_origins(500, 500, 512) == []
    assert pes.keep_fraction(0.1) and pes.keep_fraction(0.9) and not pes.keep_fraction(0.95)


def test_group_split_matches_split_by_group_and_keeps_cases_whole(pes):
    rows = [{"stem": f"s{i}", "case_id": f"c{i % 7}"} for i in range(40)]
    train, val = pes.group_split(rows, "ebhi-seg-tumor-half")
    assert len(train) + len(val) == 40 and val
    assert not {r["case_id"] for r in train} & {r["case_id"] for r in val}
    assert pes.group_split(rows, "ebhi-seg-tumor-half") == (train, val)  # deterministic


def test_crop_instances_drops_nuclei_mostly_outside(pes):
    labels = np.zeros((10, 10), np.uint16)
    labels[0:2, 0:2] = 1  # fully inside the crop
    labels[2:4, 2:6] = 2  # half inside (columns 2-3 of 2-5): kept
    labels[1:2, 3:8] = 3  # 1 of 5 pixels inside: dropped
    crop = pes.crop_instances(labels, 0, 0, 4)
    assert sorted(np.unique(crop).tolist()) == [0, 1, 2]


def test_csv_and_png_bytes_are_deterministic(pes):
    rows = [{"stem": "a", "image": "/x/a.png"}]
    assert pes.csv_bytes(["stem", "image"], rows) == b"stem,image\na,/x/a.png\n"
    array = (np.arange(64).reshape(8, 8) * 3).astype(np.uint8)
    assert pes.png_bytes(array) == pes.png_bytes(array.copy())


def test_writer_keeps_unchanged_files(pes, tmp_path):
    writer = pes.Writer(tmp_path)
    writer.put("d/f.txt", b"one", quiet=True)
    mtime = (tmp_path / "d/f.txt").stat().st_mtime_ns
    writer.put("d/f.txt", b"one", quiet=True)
    assert (writer.wrote, writer.kept) == (1, 1)
    assert (tmp_path / "d/f.txt").stat().st_mtime_ns == mtime
    writer.put("d/f.txt", b"two", quiet=True)
    assert (tmp_path / "d/f.txt").read_bytes() == b"two"

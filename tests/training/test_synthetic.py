"""Synthetic training pairs (``training.synthetic``, ``training.synthetic_images``): blobs,
composites, stain jitter, crops, the written dataset and its refusals. Tiny self-made images only."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_sam_histo.errors import InputError
from napari_sam_histo.evaluation.dataset import Sample, find_pairs, load_samples
from napari_sam_histo.training import synthetic as sy
from napari_sam_histo.training import synthetic_images as si


def _tissue(shape, seed, colour=(200, 110, 170), grain=2.0):
    """A pink, tissue-like RGB texture (saturated, not white)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), grain)
    noise = noise / (noise.std() + 1e-9)
    rgb = np.asarray(colour, float)[None, None, :] * (1 + 0.15 * noise[..., None])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _dataset(root, count=3, shape=(96, 128)):
    """A dataset folder (images/ + masks/ + manifest.csv with case_id), one disc per mask."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    root.mkdir(parents=True)
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["stem", "case_id"])
        for i in range(count):
            _save(root / "images" / f"p{i}.png", _tissue(shape, i, colour=(150, 80, 160)))
            disc = (yy - 40 - 5 * i) ** 2 + (xx - 60) ** 2 < (18 + 3 * i) ** 2
            _save(root / "masks" / f"p{i}.png", disc.astype(np.uint8) * 255)
            writer.writerow([f"p{i}", f"case{i % 2}"])
    return root


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.9])
def test_blob_covers_the_asked_fraction_in_one_piece_without_holes(fraction):
    for seed in range(3):
        blob = si.smooth_blob((90, 150), np.random.default_rng(seed), fraction)
        assert blob.shape == (90, 150) and blob.dtype == bool
        assert abs(blob.mean() - fraction) <= 0.25 * fraction + 0.005
        assert ndimage.label(blob)[1] == 1
        assert np.array_equal(ndimage.binary_fill_holes(blob), blob)


def test_blob_fraction_is_clipped_to_1_to_90_percent():
    assert si.smooth_blob((80, 80), np.random.default_rng(0), 1.0).mean() <= 0.93
    assert si.smooth_blob((80, 80), np.random.default_rng(0), 0.0).mean() >= 0.007


def test_same_seed_same_output_other_seed_other_output():
    image = _tissue((60, 90), 0)
    blob = [si.smooth_blob((60, 90), np.random.default_rng(s), 0.3) for s in (4, 4, 5)]
    assert np.array_equal(blob[0], blob[1]) and not np.array_equal(blob[0], blob[2])
    jitter = [si.stain_jitter(image, np.random.default_rng(s), 1.0) for s in (4, 4, 5)]
    assert np.array_equal(jitter[0], jitter[1]) and not np.array_equal(jitter[0], jitter[2])
    back, fore = _tissue((60, 90), 1), _tissue((60, 90), 2, colour=(120, 60, 150))
    composite = [si.texture_composite(back, fore, np.random.default_rng(s)) for s in (4, 4)]
    assert np.array_equal(composite[0][0], composite[1][0]) and np.array_equal(composite[0][1], composite[1][1])


def test_stain_jitter_changes_colours_within_bounds_and_zero_strength_is_identity():
    image = _tissue((40, 50), 3)
    assert np.array_equal(si.stain_jitter(image, np.random.default_rng(0), 0.0), image)
    out = si.stain_jitter(image, np.random.default_rng(0), 1.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    change = np.abs(out.astype(int) - image).mean()
    assert 1 < change < 60
    white = np.full((10, 10, 3), 255, np.uint8)  # glass stays near-white
    assert si.stain_jitter(white, np.random.default_rng(1), 1.0).min() > 180


def test_composite_mask_is_where_the_foreground_shows_with_a_soft_border():
    back = np.full((80, 120, 3), 40, np.uint8)
    fore = np.full((80, 120, 3), 220, np.uint8)
    image, mask = si.texture_composite(back, fore, np.random.default_rng(0), fraction=0.3, feather=3, match=0)
    assert 0.2 < mask.mean() < 0.4 and ndimage.label(mask)[1] == 1
    grey = image.mean(axis=2)
    assert np.all(grey[mask] >= 130) and np.all(grey[~mask] <= 130)
    inner, outer = ndimage.binary_erosion(mask, iterations=12), ~ndimage.binary_dilation(mask, iterations=12)
    assert np.all(image[inner] == 220) and np.all(image[outer] == 40)
    border = ~inner & ~outer
    assert np.any((grey[border] > 60) & (grey[border] < 200))  # feathered, not a hard edge


def test_composite_match_pulls_the_foreground_colour_towards_the_background():
    back = _tissue((60, 90), 1, colour=(200, 120, 170))
    fore = _tissue((60, 90), 2, colour=(120, 60, 150))
    plain, mask = si.texture_composite(back, fore, np.random.default_rng(0), fraction=0.4, match=0)
    matched, mask2 = si.texture_composite(back, fore, np.random.default_rng(0), fraction=0.4, match=1)
    assert np.array_equal(mask, mask2)
    gap = lambda im: np.abs(im[mask].mean(0) - im[~mask].mean(0)).sum()  # noqa: E731
    assert gap(matched) < 0.3 * gap(plain)


def test_composite_refuses_images_of_two_sizes():
    with pytest.raises(InputError, match="one size"):
        si.texture_composite(_tissue((20, 30), 0), _tissue((20, 31), 1), np.random.default_rng(0))


def test_crops_are_non_square_with_object_fraction_in_bounds():
    image = _tissue((200, 300), 0)
    yy, xx = np.mgrid[0:200, 0:300]
    mask = ((yy - 100) ** 2 + (xx - 150) ** 2 < 40 ** 2) | ((yy - 30) ** 2 + (xx - 40) ** 2 < 15 ** 2)
    rng = np.random.default_rng(0)
    for _ in range(15):
        crop = si.random_crop(image, mask, rng, 64, 180, min_fraction=0.05, max_fraction=0.6)
        assert crop is not None
        pixels, sub = crop
        assert pixels.shape[:2] == sub.shape and pixels.shape[0] != pixels.shape[1]
        assert 64 <= max(sub.shape) <= 180 and max(sub.shape) / min(sub.shape) <= 2.05
        assert 0.05 <= sub.mean() <= 0.6


def test_crop_component_keeps_only_the_object_under_the_point():
    image = _tissue((100, 160), 0)
    mask = np.zeros((100, 160), bool)
    mask[20:50, 20:60] = True
    mask[60:90, 100:140] = True
    crop = si.random_crop(image, mask, np.random.default_rng(0), 160, 160, max_fraction=0.9,
                          component=True, point=(35, 40), max_aspect=1.6)
    assert crop is not None
    _, sub = crop
    assert sub[35, 40] and ndimage.label(sub)[1] == 1
    assert sub.sum() == 30 * 40  # the other square is background now
    whole = si.random_crop(image, mask, np.random.default_rng(0), 160, 160, max_aspect=1.6)
    assert ndimage.label(whole[1])[1] == 2


def test_crop_returns_none_when_no_crop_fits():
    image = _tissue((60, 80), 0)
    assert si.random_crop(image, np.zeros((60, 80), bool), np.random.default_rng(0), 30, 60) is None
    assert si.random_crop(image, np.ones((60, 80), bool), np.random.default_rng(0), 30, 60,
                          max_fraction=0.5) is None


def test_tissue_fraction_tells_tissue_from_glass():
    assert si.tissue_fraction(_tissue((30, 30), 0)) > 0.9
    assert si.tissue_fraction(np.full((30, 30, 3), 245, np.uint8)) < 0.05


def test_dataset_is_written_deterministically_and_read_by_find_pairs(tmp_path):
    data = _dataset(tmp_path / "data")
    slide = tmp_path / "slide.png"
    _save(slide, _tissue((300, 400), 9, colour=(210, 140, 180), grain=5))
    runs = []
    for name in ("a", "b"):
        manifest = sy.make_synthetic_dataset(tmp_path / name, [slide, data], n=4, seed=3, sizes=(64, 120))
        runs.append(manifest)
    with open(runs[0], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == list(sy.MANIFEST_COLUMNS) and len(rows) == 4
    assert [row["kind"] for row in rows] == ["composite", "crop", "composite", "crop"]
    assert all(row["case_id"] for row in rows)
    crop_cases = {row["case_id"] for row in rows if row["kind"] == "crop"}
    assert crop_cases <= {"data:case0", "data:case1"}  # the dataset's own case_id, not the stem
    pairs = find_pairs(runs[0])
    assert [pair.stem for pair in pairs] == [row["stem"] for row in rows]
    assert [pair.stem for pair in find_pairs(tmp_path / "a")] == sorted(row["stem"] for row in rows)
    for pair, row in zip(pairs, rows):
        image = np.asarray(Image.open(pair.image_path))
        mask = np.asarray(Image.open(pair.mask_path))
        assert image.shape == (int(row["height"]), int(row["width"]), 3) and image.shape[0] != image.shape[1]
        assert set(np.unique(mask)) <= {0, 255} and abs((mask > 0).mean() - float(row["fg_frac"])) < 1e-3
        assert 0.01 <= (mask > 0).mean() <= 0.9
        samples = list(load_samples(pair))
        assert len(samples) == 1 and isinstance(samples[0], Sample)
        twin = tmp_path / "b" / pair.image_path.relative_to(tmp_path / "a")
        assert twin.read_bytes() == pair.image_path.read_bytes()
    assert not any(p.name.startswith(".") for p in (tmp_path / "a").rglob("*"))  # no temporary files left
    other = sy.make_synthetic_dataset(tmp_path / "c", [slide, data], n=2, seed=4, sizes=(64, 120))
    assert (other.parent / "images" / "synth_00000_composite.png").read_bytes() != \
        (tmp_path / "a" / "images" / "synth_00000_composite.png").read_bytes()


def test_crops_come_from_composites_when_no_source_has_masks(tmp_path):
    first, second = tmp_path / "one.png", tmp_path / "two.png"
    _save(first, _tissue((260, 300), 1, grain=1.5))
    _save(second, _tissue((260, 300), 2, colour=(140, 70, 170), grain=6))
    manifest = sy.make_synthetic_dataset(tmp_path / "out", [first, second], n=2, seed=0, sizes=(64, 100),
                                         kinds=["crop"])
    with open(manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["kind"] for row in rows] == ["crop", "crop"]
    assert all(0.01 <= float(row["fg_frac"]) <= 0.9 for row in rows)


def test_bad_sources_are_refused_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere.svs"
    with pytest.raises(InputError, match="nowhere.svs"):
        sy.make_synthetic_dataset(tmp_path / "out", [missing], n=1)
    glass = tmp_path / "glass.png"
    _save(glass, np.full((200, 200, 3), 246, np.uint8))
    with pytest.raises(InputError, match=r"glass\.png.*no tissue"):
        sy.make_synthetic_dataset(tmp_path / "out", [glass], n=1, sizes=(64, 96))
    assert not (tmp_path / "out" / "manifest.csv").exists()
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(InputError, match="empty_folder"):
        sy.make_synthetic_dataset(tmp_path / "out", [empty], n=1)


def test_existing_dataset_is_refused_unless_overwrite(tmp_path):
    slide = tmp_path / "slide.png"
    _save(slide, _tissue((200, 200), 0))
    sy.make_synthetic_dataset(tmp_path / "out", [slide], n=1, sizes=(64, 96), kinds=["composite"])
    with pytest.raises(InputError, match="exists already"):
        sy.make_synthetic_dataset(tmp_path / "out", [slide], n=1, sizes=(64, 96), kinds=["composite"])
    sy.make_synthetic_dataset(tmp_path / "out", [slide], n=2, sizes=(64, 96), kinds=["composite"], overwrite=True)
    assert len(find_pairs(tmp_path / "out" / "manifest.csv")) == 2


def test_main_writes_a_dataset_and_reports_a_bad_source(tmp_path, capsys):
    slide = tmp_path / "slide.png"
    _save(slide, _tissue((200, 240), 0))
    assert sy.main(["--out", str(tmp_path / "out"), "--n", "2", "--seed", "1", "--sources", str(slide),
                    "--min-side", "64", "--max-side", "96", "--kinds", "composite"]) == 0
    assert len(find_pairs(tmp_path / "out" / "manifest.csv")) == 2
    assert sy.main(["--out", str(tmp_path / "x"), "--sources", str(tmp_path / "gone.svs")]) == 2
    assert "gone.svs" in capsys.readouterr().err
    assert sy.main(["--out", str(tmp_path / "x"), "--sources", str(slide), "--min-side", "500",
                    "--max-side", "100"]) == 2


def test_cli_synth_writes_the_same_dataset_as_the_module(tmp_path):
    from napari_sam_histo.cli import main as cli_main

    slide = tmp_path / "slide.png"
    _save(slide, _tissue((200, 240), 0))
    common = ["--n", "2", "--seed", "4", "--sources", str(slide), "--min-side", "64", "--max-side", "96"]
    assert cli_main(["synth", "--out", str(tmp_path / "a"), *common]) == 0
    assert sy.main(["--out", str(tmp_path / "b"), *common]) == 0
    for name in ("images", "masks"):
        a = sorted((tmp_path / "a" / name).iterdir())
        b = sorted((tmp_path / "b" / name).iterdir())
        assert [p.name for p in a] == [p.name for p in b] and len(a) == 2
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))

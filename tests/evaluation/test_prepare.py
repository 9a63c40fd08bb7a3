import csv

import imageio.v3 as iio
import numpy as np
import pytest

from napari_sam_histo.annotations.geometry import Polygon, rasterize
from napari_sam_histo.annotations.readers import read_polygons
from napari_sam_histo.errors import InputError
from napari_sam_histo.evaluation.prepare import base_magnification, prepare_patches
from napari_sam_histo.slides.reader import open_image

from ..conftest import SAMPLE_SLIDE


def _square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def test_rasterize_uses_pixel_centres_holes_and_exclusions():
    outer = Polygon(_square(2, 2, 10, 10), [_square(4, 4, 6, 6)])
    mask = rasterize([outer], (0, 0), 1.0, (12, 12))
    assert mask[2, 2] and mask[9, 9] and not mask[10, 10] and not mask[1, 5]
    assert not mask[4, 4] and not mask[5, 5] and mask[6, 6]  # the hole covers pixels 4..5
    assert mask.sum() == 64 - 4
    excluded = rasterize([outer, Polygon(_square(8, 8, 12, 12), exclude=True)], (0, 0), 1.0, (12, 12))
    assert not excluded[9, 9] and excluded[2, 2]
    half = rasterize([Polygon(_square(0, 0, 8, 8))], (4, 0), 2.0, (4, 4))  # a box at downsample 2
    assert half[:, :2].all() and not half[:, 2:].any()


def test_geojson_featurecollection_and_multipolygons(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text("""{"type": "FeatureCollection", "features": [
      {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
       "geometry": {"type": "MultiPolygon", "coordinates": [[[[0,0],[4,0],[4,4],[0,0]]], [[[10,10],[14,10],[14,14],[10,10]]]]}},
      {"type": "Feature", "properties": {"classification": {"name": "Stroma"}},
       "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,0]]]}},
      {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [3, 3]}}]}""")
    assert len(read_polygons(path)) == 3
    tumor = read_polygons(path, ["Tumor"])
    assert len(tumor) == 2 and all(p.name == "Tumor" for p in tumor)
    with pytest.raises(InputError, match="no polygon of class Necrosis"):
        read_polygons(path, ["Necrosis"])


def test_asap_xml_with_a_camelyon_exclusion(tmp_path):
    path = tmp_path / "c.xml"
    path.write_text("""<ASAP_Annotations><Annotations>
      <Annotation Name="A" Type="Polygon" PartOfGroup="_0"><Coordinates>
        <Coordinate Order="1" X="10" Y="0"/><Coordinate Order="0" X="0" Y="0"/>
        <Coordinate Order="2" X="10" Y="10"/><Coordinate Order="3" X="0" Y="10"/></Coordinates></Annotation>
      <Annotation Name="B" Type="Polygon" PartOfGroup="_2"><Coordinates>
        <Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="5" Y="0"/><Coordinate Order="2" X="5" Y="5"/>
      </Coordinates></Annotation></Annotations></ASAP_Annotations>""")
    tumor, exclusion = read_polygons(path)
    assert tumor.name == "_0" and not tumor.exclude and exclusion.exclude
    assert tumor.exterior[1].tolist() == [10, 0]  # sorted by Order


@pytest.mark.parametrize("name, text, words", [
    ("a.geojson", "{not json", "not valid JSON"),
    ("a.xml", "<a", "not valid XML"),
    ("a.txt", "x", "unsupported annotation format"),
])
def test_bad_annotation_files(tmp_path, name, text, words):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=words):
        read_polygons(tmp_path / name)


def test_patches_from_the_real_slide_match_the_hand_computed_fractions(tmp_path):
    source = open_image(SAMPLE_SLIDE)  # 2220 x 2967 at 20x (its objective power)
    tumor = Polygon(_square(500, 300, 1900, 2600), [_square(900, 900, 1300, 1300)], "Tumor")
    result = prepare_patches(source, [tumor], tmp_path, magnification=10)
    with open(tmp_path / "manifest.csv") as stream:
        rows = {r["stem"]: r for r in csv.DictReader(stream)}
    # 10x = downsample 2: 400 px patches cover 800 level-0 px; 2 columns x 3 rows of whole patches.
    assert float(rows["cmu-1-small-region_x0_y0"]["tumor_fraction"]) == pytest.approx(300 * 500 / 800**2, abs=1e-4)
    assert float(rows["cmu-1-small-region_x800_y800"]["tumor_fraction"]) == pytest.approx(
        (800 * 800 - 400 * 400) / 800**2, abs=1e-4)
    assert result.kept == len(rows) == 5  # the 6th (x800_y1600) is over 0.8
    image = iio.imread(tmp_path / rows["cmu-1-small-region_x0_y0"]["image"])
    mask = iio.imread(tmp_path / rows["cmu-1-small-region_x0_y0"]["mask"])
    assert image.shape == (400, 400, 3) and mask.shape == (400, 400)
    assert set(np.unique(mask)) == {0, 255} and (mask > 0).mean() == pytest.approx(0.234375)
    expected = source.read_region(__import__("napari_sam_histo.engine.tiles", fromlist=["TileBox"]).TileBox(0, 0, 0, 800, 800))
    assert np.abs(image.astype(int) - expected[::2, ::2].astype(int)).mean() < 12  # the same tissue, halved


def test_pyramid_level_is_chosen_and_magnification_read_from_mpp(tmp_path):
    import tifffile

    level0 = np.zeros((2048, 1536, 3), np.uint8)
    level0[:, :768] = (200, 50, 50)
    level0[:, 768:] = (50, 50, 200)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tif:
        for f in (1, 2, 4):
            tif.write(level0[::f, ::f], tile=(256, 256), photometric="rgb", compression="zlib",
                      resolution=(1e4 / (0.25 * f), 1e4 / (0.25 * f)), resolutionunit="CENTIMETER",
                      subfiletype=0 if f == 1 else 1)
    source = open_image(path)
    assert base_magnification(source) == pytest.approx(40.0)  # 0.25 um/px
    polygon = Polygon(_square(0, 0, 768, 2048), name="Tumor")
    prepare_patches(source, [polygon], tmp_path / "out", magnification=10, patch_size=256, min_fraction=0.2)
    with open(tmp_path / "out" / "manifest.csv") as stream:
        rows = list(csv.DictReader(stream))
    # 40x -> 10x is downsample 4: a 256 px patch covers 1024 level-0 px, 1 column x 2 rows.
    assert [(r["x0"], r["y0"], r["level"]) for r in rows] == [("0", "0", "2"), ("0", "1024", "2")]
    assert all(float(r["tumor_fraction"]) == pytest.approx(0.75) for r in rows)
    row = rows[0]
    image = iio.imread(tmp_path / "out" / row["image"])
    assert tuple(image[10, 10]) == (200, 50, 50) and tuple(image[10, 250]) == (50, 50, 200)


def test_upsampling_and_missing_magnification_are_refused(tmp_path):
    source = open_image(SAMPLE_SLIDE)
    with pytest.raises(InputError, match="would need upsampling"):
        prepare_patches(source, [Polygon(_square(0, 0, 9, 9))], tmp_path, magnification=40)
    from napari_sam_histo.slides.reader import from_array

    with pytest.raises(InputError, match="base-magnification"):
        base_magnification(from_array(np.zeros((16, 16, 3), np.uint8)))


def test_only_kept_patches_are_read_one_at_a_time(tmp_path, monkeypatch):
    source = open_image(SAMPLE_SLIDE)
    boxes = []
    real = source._read
    monkeypatch.setattr(source, "_read", lambda box: boxes.append(box) or real(box))
    tumor = Polygon(_square(500, 300, 1900, 2600), [_square(900, 900, 1300, 1300)], "Tumor")
    result = prepare_patches(source, [tumor], tmp_path, magnification=10)
    assert len(boxes) == result.kept == 5
    assert all(b.width <= 800 and b.height <= 800 for b in boxes)


def test_prepare_cli(tmp_path, capsys):
    from napari_sam_histo.cli import main

    ann = tmp_path / "t.geojson"
    ann.write_text('{"type": "Feature", "properties": {"classification": {"name": "Tumor"}}, "geometry": '
                   '{"type": "Polygon", "coordinates": [[[500,300],[1900,300],[1900,2600],[500,2600],[500,300]]]}}')
    assert main(["prepare", str(SAMPLE_SLIDE), "--annotations", str(ann), "--magnification", "5",
                 "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert "patches kept" in capsys.readouterr().out
    assert (tmp_path / "d" / "manifest.csv").is_file()
    assert main(["prepare", str(SAMPLE_SLIDE), "--annotations", str(tmp_path / "none.geojson"),
                 "--magnification", "5", "--out", str(tmp_path / "e")]) == 2


def test_a_mask_image_is_read_as_polygons_of_its_regions(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 255
    mask[20:35, 30:55] = 255
    mask[24:28, 40:44] = 0  # a hole
    iio.imwrite(tmp_path / "m.png", mask)
    polygons = read_polygons(tmp_path / "m.png")
    assert len(polygons) == 2 and all(p.name == "Tumor" for p in polygons)
    assert np.array_equal(rasterize(polygons, (0, 0), 1.0, mask.shape), mask > 0)
    noisy = mask.copy()
    noisy[noisy == 0] = 3  # a JPEG mask's noise around 0
    iio.imwrite(tmp_path / "m.jpg", np.stack([noisy] * 3, -1), quality=95)
    assert np.mean(rasterize(read_polygons(tmp_path / "m.jpg"), (0, 0), 1.0, mask.shape) == (mask > 0)) > 0.98
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: not a readable mask image"):
        read_polygons(tmp_path / "bad.png")
    iio.imwrite(tmp_path / "empty.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="empty.png: no polygon"):
        read_polygons(tmp_path / "empty.png")


def test_a_folder_gathers_the_patches_of_several_slides(tmp_path):
    from napari_sam_histo.slides.reader import from_array

    def slide(name, colour):
        return from_array(np.full((512, 512, 3), colour, np.uint8), name=name)

    half = [Polygon(_square(0, 0, 128, 512), name="Tumor")]  # half of a 256-px patch, a quarter of a 512-px one
    prepare_patches(slide("a.png", 200), half, tmp_path, magnification=1, patch_size=256, base=1)
    prepare_patches(slide("b.png", 100), half, tmp_path, magnification=1, patch_size=256, base=1)
    prepare_patches(slide("a.png", 200), half, tmp_path, magnification=1, patch_size=512, base=1)  # again
    with open(tmp_path / "manifest.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((r["source_slide"], r["width0"]) for r in rows) == [("a.png", "512"), ("b.png", "256"),
                                                                      ("b.png", "256")]
    (tmp_path / "manifest.csv").write_text("image,mask\nx.png,y.png\n")
    with pytest.raises(InputError, match="other columns"):
        prepare_patches(slide("c.png", 50), half, tmp_path, magnification=1, patch_size=256, base=1)

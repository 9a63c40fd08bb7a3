import errno
import json
import pathlib

import numpy as np
import pytest
import tifffile

from napari_sam_histo.annotations.geometry import mask_to_polygons
from napari_sam_histo.annotations.label_tiff import read_label_tiff_metadata, write_label_tiff
from napari_sam_histo.annotations.objects import AnnotatedObject
from napari_sam_histo.errors import InputError

IDS = {"Tumor": 1, "Stroma": 2}


def _objects():
    tumor = np.zeros((300, 400), bool)
    tumor[20:200, 30:250] = True
    tumor[60:90, 60:120] = False
    stroma = np.zeros((300, 400), bool)
    stroma[220:290, 300:390] = True
    return tumor, stroma, [AnnotatedObject(mask_to_polygons(tumor), "Tumor"),
                           AnnotatedObject(mask_to_polygons(stroma), "Stroma")]


def test_tiled_pyramidal_ome_tiff_with_class_ids(tmp_path):
    tumor, stroma, objects = _objects()
    path = write_label_tiff(tmp_path / "labels.ome.tif", objects, (400, 300), {"Tumor": 1, "Stroma": 2},
                            tile=128, mpp=(0.5, 0.5))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 128 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        level0 = page.asarray()
        assert tif.is_ome and "Tumor" in tif.ome_metadata
        assert len(page.subifds or []) == 2  # 400 px -> 3 levels of 128 px tiles
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels] == [(300, 400), (150, 200), (75, 100)]
    assert np.array_equal(level0 == 1, tumor) and np.array_equal(level0 == 2, stroma)
    classes = json.loads((tmp_path / "labels.ome.tif.classes.json").read_text())
    assert classes == {"0": "background", "1": "Tumor", "2": "Stroma"}


def test_export_at_a_lower_resolution(tmp_path):
    tumor, _, objects = _objects()
    path = write_label_tiff(tmp_path / "l.tif", objects[:1], (400, 300), {"Tumor": 1}, downsample=2.0, levels=1)
    level = tifffile.imread(path)
    assert level.shape == (150, 200)
    assert abs(int((level == 1).sum()) - int(tumor.sum()) // 4) < 200


def test_refusals_leave_nothing_half_written(tmp_path):
    _, _, objects = _objects()
    with pytest.raises(InputError, match=r"a\.tif: objects of class Stroma have no id in the class table"):
        write_label_tiff(tmp_path / "a.tif", objects, (400, 300), {"Tumor": 1})
    with pytest.raises(InputError, match="distinct integers 1..65535"):
        write_label_tiff(tmp_path / "a.tif", objects, (400, 300), {"Tumor": 1, "Stroma": 1})
    assert not list(tmp_path.iterdir())
    (tmp_path / "b.tif").write_bytes(b"old")
    with pytest.raises(InputError, match="exists already"):
        write_label_tiff(tmp_path / "b.tif", objects, (400, 300), IDS)
    assert (tmp_path / "b.tif").read_bytes() == b"old"


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail", ["image", "sidecar"])
def test_a_full_disk_keeps_the_previous_export_and_says_so(tmp_path, monkeypatch, fail):
    _, _, objects = _objects()
    path = write_label_tiff(tmp_path / "labels.ome.tif", objects, (400, 300), IDS, tile=128)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if fail == "image":
        monkeypatch.setattr(tifffile.TiffWriter, "write", _no_space)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", _no_space)
    with pytest.raises(InputError, match=r"Cannot write .*labels\.ome\.tif(\.classes\.json)?: the disk is full"):
        write_label_tiff(path, objects[:1], (400, 300), IDS, tile=128, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old pair, no temp files


def test_pixel_values_are_the_given_ids_and_the_metadata_lists_classes_and_provenance(tmp_path):
    tumor, stroma, objects = _objects()
    objects[0].model = "vit_t"
    objects[0].properties.update({"decoder": "md", "decoder_kind": "sam", "decoder_hash": "sha256:1a2b3c4d5e6f",
                                  "model_hash": "sha256:6dbb90523a35", "refined": True})
    ids = {"Stroma": 7, "Mucin": 3, "Tumor": 300}  # sparse ids and one above 255: uint16
    path = write_label_tiff(tmp_path / "p.ome.tif", objects, (400, 300), ids, levels=1,
                            class_colours={"Tumor": (200, 0, 0), "Stroma": (1, 2, 3), "Mucin": (4, 5, 6)},
                            class_table=tmp_path / "sam-histo-classes.json")
    labels = tifffile.imread(path)
    description = read_label_tiff_metadata(path)
    assert labels.dtype == np.uint16
    assert np.array_equal(labels == 300, tumor) and np.array_equal(labels == 7, stroma)
    assert description["classes"] == {"0": "background", "3": "Mucin", "7": "Stroma", "300": "Tumor"}
    assert description["class_colours"]["7"] == [1, 2, 3]
    assert description["class_table"] == str(tmp_path / "sam-histo-classes.json")
    assert description["objects"][objects[0].id] == {
        "class": "Tumor", "class_id": 300, "model": "vit_t", "decoder": "md", "decoder_kind": "sam",
        "decoder_hash": "sha256:1a2b3c4d5e6f", "model_hash": "sha256:6dbb90523a35"}
    assert description["objects"][objects[1].id] == {"class": "Stroma", "class_id": 7}
    assert json.loads((tmp_path / "p.ome.tif.classes.json").read_text())["300"] == "Tumor"


def test_a_tiff_without_our_metadata_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match=r"plain\.tif: holds no napari-sam-histo label metadata"):
        read_label_tiff_metadata(tmp_path / "plain.tif")

import json

import numpy as np
import pytest

from napari_sam_histo.annotations.geojson import read_geojson, write_geojson
from napari_sam_histo.annotations.geometry import mask_to_polygons, rasterize
from napari_sam_histo.annotations.objects import AnnotatedObject
from napari_sam_histo.errors import InputError


def _mask():
    mask = np.zeros((60, 80), bool)
    mask[5:40, 5:40] = True
    mask[15:20, 15:25] = False  # a hole
    mask[45:55, 50:75] = True  # a second part
    return mask


def test_export_is_quPath_shaped_and_round_trips(tmp_path):
    mask = _mask()
    obj = AnnotatedObject(mask_to_polygons(mask, origin=(1000, 500), downsample=2.0), "Tumor", (200, 0, 0),
                          "vit_t", 4)
    path = write_geojson(tmp_path / "a.geojson", [obj], mpp=(0.5, 0.5))
    data = json.loads(path.read_text())
    [feature] = data["features"]
    assert data["type"] == "FeatureCollection" and feature["geometry"]["type"] == "MultiPolygon"
    props = feature["properties"]
    assert props["objectType"] == "annotation" and props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["measurements"]["Area µm^2"] == pytest.approx(props["measurements"]["Area px^2"] * 0.25, rel=1e-3)
    first_ring = feature["geometry"]["coordinates"][0][0]
    assert first_ring[0] == first_ring[-1]  # closed rings
    [back] = read_geojson(path)
    assert back.class_name == "Tumor" and back.clicks == 4 and back.model == "vit_t"
    again = rasterize(back.polygons, (1000, 500), 2.0, mask.shape)
    assert np.array_equal(again, mask)


def test_offset_is_subtracted_and_added_back(tmp_path):
    obj = AnnotatedObject(mask_to_polygons(_mask()), "Tumor")
    path = write_geojson(tmp_path / "a.geojson", [obj], offset=(100, 200))
    ring = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0][0]
    assert min(p[0] for p in ring) < 0  # shifted left by the bounds offset
    [back] = read_geojson(path, offset=(100, 200))
    assert np.allclose(back.polygons[0].exterior, obj.polygons[0].exterior, atol=1e-3)


def test_overwrite_is_refused_and_the_old_file_kept(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text("old")
    with pytest.raises(InputError, match="exists already"):
        write_geojson(path, [AnnotatedObject(mask_to_polygons(_mask()))])
    assert path.read_text() == "old"


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_geojson(tmp_path / "none.geojson")
    (tmp_path / "b.geojson").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_geojson(tmp_path / "b.geojson")


PROVENANCE = {"decoder": "md", "decoder_kind": "sam", "decoder_hash": "sha256:1a2b3c4d5e6f",
              "model_hash": "sha256:6dbb90523a35"}


def test_provenance_and_class_id_are_written_and_the_provenance_read_back(tmp_path):
    obj = AnnotatedObject(mask_to_polygons(_mask()), "Stroma", (150, 200, 150), "vit_t", 2,
                          dict(PROVENANCE, refined=True))
    path = write_geojson(tmp_path / "p.geojson", [obj], class_ids={"Tumor": 1, "Stroma": 4})
    props = json.loads(path.read_text())["features"][0]["properties"]
    assert props["classification"] == {"name": "Stroma", "color": [150, 200, 150]}  # QuPath's, as it was
    assert props["napari-sam-histo"] == {"model": "vit_t", "clicks": 2, **PROVENANCE, "refined": True, "class_id": 4}
    [back] = read_geojson(path)
    assert back.properties == {**PROVENANCE, "refined": True}  # the class id is the table's, not the object's
    assert back.model == "vit_t" and back.id == obj.id
    again = write_geojson(tmp_path / "again.geojson", [back], class_ids={"Stroma": 4})
    assert json.loads(again.read_text())["features"][0]["properties"] == props
    with pytest.raises(InputError, match=r"Cannot write .*x\.geojson: class 'Stroma' has no id in the class table"):
        write_geojson(tmp_path / "x.geojson", [obj], class_ids={"Tumor": 1})
    assert not (tmp_path / "x.geojson").exists()


def test_files_without_provenance_still_read(tmp_path):
    old = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "napari-sam-histo": {"model": "vit_t", "clicks": 3, "decoder": "sam"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},  # QuPath's own
    ]}
    (tmp_path / "old.geojson").write_text(json.dumps(old))
    first, second = read_geojson(tmp_path / "old.geojson")
    assert (first.model, first.clicks, first.properties) == ("vit_t", 3, {"decoder": "sam"})
    assert (second.class_name, second.model, second.properties) == ("Stroma", "", {})

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_sam_histo._napari.writers import write_shapes_geojson, write_shapes_tiff
from napari_sam_histo.annotations.geojson import read_geojson
from napari_sam_histo.errors import InputError


def _square(r0, c0, r1, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def test_shapes_layer_to_geojson_with_classes(tmp_path):
    data = [_square(10, 20, 50, 80), _square(100, 100, 120, 150)]
    meta = {"features": pd.DataFrame({"class": ["Tumor", "Stroma"]}), "metadata": {"mpp": (0.5, 0.5)}}
    [path] = write_shapes_geojson(str(tmp_path / "s.geojson"), data, meta)
    objects = read_geojson(path)
    assert [o.class_name for o in objects] == ["Tumor", "Stroma"]
    assert objects[0].polygons[0].exterior.min(axis=0).tolist() == [20, 10]  # (x, y) from (row, col)
    with open(path) as stream:
        props = json.loads(stream.read())["features"][0]["properties"]
    assert props["measurements"]["Area µm^2"] == 40 * 60 * 0.25


def test_shapes_layer_to_label_tiff(tmp_path):
    data = [_square(0, 0, 32, 64)]
    [path] = write_shapes_tiff(str(tmp_path / "s.ome.tif"), data, {"metadata": {"level0_size": (128, 64)}})
    labels = tifffile.imread(path)
    assert labels.shape == (64, 128) and labels[:32, :64].all() and not labels[32:, :].any()


def test_a_shape_with_a_bridged_hole_is_written_with_the_hole(tmp_path):
    from napari_sam_histo.annotations.bridged import to_bridged_ring
    from napari_sam_histo.annotations.geometry import Polygon

    square = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], float)  # (x, y)
    hole = np.array([[30, 30], [30, 60], [60, 60], [60, 30]], float)
    shape = to_bridged_ring(Polygon(square, [hole]))[:, ::-1]  # napari's (row, col)
    [path] = write_shapes_geojson(str(tmp_path / "h.geojson"), [shape], {"metadata": {}})
    [obj] = read_geojson(path)
    assert len(obj.polygons) == 1 and len(obj.polygons[0].holes) == 1
    assert obj.area_px == 100 * 100 - 30 * 30


# --- shapes as napari passes them: layer.as_layer_data_tuple() of a real Shapes layer (no Qt needed) ---

def _napari_args(layer):
    data, meta, kind = layer.as_layer_data_tuple()
    assert kind == "shapes"
    return data, meta


def _features(path):
    return json.loads(open(path).read())["features"]


def test_an_ellipse_is_written_as_a_sampled_ellipse_not_its_bounding_box(tmp_path):
    from napari.layers import Shapes

    layer = Shapes()
    layer.add_ellipses([np.array([[100, 200], [30, 50]])])  # centre (row, col), radii (rows, cols)
    data, meta = _napari_args(layer)
    assert meta["shape_type"] == ["ellipse"] and len(data[0]) == 4  # napari keeps the 4 corners
    [path] = write_shapes_geojson(str(tmp_path / "e.geojson"), data, meta)
    [obj] = read_geojson(path)
    ring = obj.polygons[0].exterior  # (x, y)
    assert len(ring) >= 64
    on_ellipse = ((ring[:, 0] - 200) / 50) ** 2 + ((ring[:, 1] - 100) / 30) ** 2
    assert np.allclose(on_ellipse, 1.0, atol=1e-3)
    assert obj.area_px == pytest.approx(np.pi * 30 * 50, rel=0.01)  # a box would be 6000
    assert _features(path)[0]["geometry"]["type"] == "Polygon"


def test_a_rotated_ellipse_and_its_label_image(tmp_path):
    from napari.layers import Shapes

    angle = np.deg2rad(30)
    axes = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # (row, col) unit vectors
    centre, a, b = np.array([120.0, 150.0]), 40.0, 80.0
    corners = np.array([centre + sa * a * axes[0] + sb * b * axes[1]
                        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    layer = Shapes([corners], shape_type="ellipse")
    data, meta = _napari_args(layer)
    [path] = write_shapes_geojson(str(tmp_path / "r.geojson"), data, meta)
    ring_rc = read_geojson(path)[0].polygons[0].exterior[:, ::-1] - centre
    along = ring_rc @ axes.T  # coordinates along the two axes
    assert np.allclose((along[:, 0] / a) ** 2 + (along[:, 1] / b) ** 2, 1.0, atol=1e-3)
    [tif] = write_shapes_tiff(str(tmp_path / "r.ome.tif"), data, {**meta, "metadata": {"level0_size": (300, 260)}})
    labels = tifffile.imread(tif)
    assert labels.shape == (260, 300)
    assert (labels > 0).sum() == pytest.approx(np.pi * a * b, rel=0.02)  # the box would be 4ab
    corner = np.floor(centre + 0.9 * a * axes[0] + 0.9 * b * axes[1]).astype(int)  # inside the box, not the ellipse
    assert labels[120, 150] == 1 and labels[tuple(corner)] == 0


def test_rectangles_stay_rectangles(tmp_path):
    from napari.layers import Shapes

    layer = Shapes()
    layer.add_rectangles([np.array([[10, 20], [40, 80]])])
    data, meta = _napari_args(layer)
    [path] = write_shapes_geojson(str(tmp_path / "b.geojson"), data, meta)
    [obj] = read_geojson(path)
    assert sorted(map(tuple, obj.polygons[0].exterior.tolist())) == [(20, 10), (20, 40), (80, 10), (80, 40)]
    assert obj.area_px == 30 * 60


def test_paths_and_lines_are_linestrings_in_geojson_and_skipped_in_the_label_image(tmp_path):
    from napari.layers import Shapes

    layer = Shapes()
    layer.add_rectangles([np.array([[0, 0], [10, 10]])])
    layer.add_paths([np.array([[0, 0], [30, 40], [30, 100]])])
    layer.add_lines([np.array([[5, 5], [5, 25]])])
    data, meta = _napari_args(layer)
    assert meta["shape_type"] == ["rectangle", "path", "line"]
    [path] = write_shapes_geojson(str(tmp_path / "l.geojson"), data, {**meta, "metadata": {"mpp": (0.5, 0.5)}})
    features = _features(path)
    assert [f["geometry"]["type"] for f in features] == ["Polygon", "LineString", "LineString"]
    assert features[1]["geometry"]["coordinates"] == [[0, 0], [40, 30], [100, 30]]  # (x, y), open
    assert features[1]["properties"]["measurements"] == {"Length px": 110.0, "Length µm": 55.0}
    assert features[2]["properties"]["objectType"] == "annotation"
    with pytest.warns(UserWarning, match="2 line/path shapes skipped"):
        [tif] = write_shapes_tiff(str(tmp_path / "l.ome.tif"), data, meta)
    assert tifffile.imread(tif).shape == (10, 10)  # sized from the rectangle only
    only_lines = Shapes([np.array([[0, 0], [5, 5]])], shape_type="line")
    with pytest.raises(InputError, match="only 1 line/path shape"):
        write_shapes_tiff(str(tmp_path / "n.ome.tif"), *_napari_args(only_lines))
    assert not (tmp_path / "n.ome.tif").exists()


def test_the_layers_colours_become_the_classification_colours(tmp_path):
    from napari.layers import Shapes

    layer = Shapes(features={"class": np.array([], dtype=object)})
    layer.feature_defaults = {"class": "Tumor"}
    layer.add_polygons([_square(0, 0, 10, 10)], edge_color=[0.0, 0.5, 1.0, 1.0], face_color="white")
    layer.feature_defaults = {"class": "Stroma"}
    layer.add_ellipses([np.array([[50, 50], [10, 10]])], edge_color="#ff00ff")
    data, meta = _napari_args(layer)
    [path] = write_shapes_geojson(str(tmp_path / "c.geojson"), data, meta)
    classifications = [f["properties"]["classification"] for f in _features(path)]
    assert classifications == [{"name": "Tumor", "color": [0, 128, 255]}, {"name": "Stroma", "color": [255, 0, 255]}]
    # a colour feature, when present, wins over the edge colour
    meta["features"] = meta["features"].assign(color=["#102030", None])
    [path] = write_shapes_geojson(str(tmp_path / "c2.geojson"), data, meta)
    assert [f["properties"]["classification"]["color"] for f in _features(path)] == [[16, 32, 48], [255, 0, 255]]


@pytest.mark.parametrize("value, rgb", [
    ("#ff8000", (255, 128, 0)), ("red", (255, 0, 0)), (0x00FF10, (0, 255, 16)), ((10, 20, 30), (10, 20, 30)),
    ([0.0, 1.0, 0.5, 1.0], (0, 255, 128)), ("not a colour", None), (None, None), (float("nan"), None),
])
def test_colour_feature_values(value, rgb):
    from napari_sam_histo._napari.writers import parse_color

    assert parse_color(value) == rgb


def test_label_image_is_sized_from_every_polygon_of_every_shape(tmp_path):
    # One napari polygon of two parts joined by a bridge (A, bridge, B, back): the second part lies
    # beyond the first; a second shape is small. Without level0_size the image must hold all parts.
    a = [[0, 0], [0, 50], [50, 50], [50, 0]]  # (row, col), one winding
    b = [[150, 250], [150, 300], [200, 300], [200, 250]]  # the same winding: a separate part
    ring = np.array(a + b + [b[0]] + [a[-1]], float)
    data = [_square(5, 5, 20, 20), ring]
    meta = {"shape_type": ["polygon", "polygon"], "metadata": {}}
    [tif] = write_shapes_tiff(str(tmp_path / "s.ome.tif"), data, meta)
    labels = tifffile.imread(tif)
    assert labels.shape == (200, 300)
    assert labels[175, 275] == 1 and labels[25, 25] == 1 and labels[100, 100] == 0


def test_each_objects_provenance_from_the_layer_reaches_both_exports(tmp_path):
    from napari_sam_histo.annotations.label_tiff import read_label_tiff_metadata

    provenance = {"decoder": ["md", "md", ""], "decoder_kind": ["sam", "sam", ""],
                  "decoder_hash": ["sha256:1a2b3c4d5e6f", "sha256:1a2b3c4d5e6f", ""],
                  "model_hash": ["sha256:6dbb90523a35", "sha256:6dbb90523a35", ""]}
    features = pd.DataFrame({"class": ["Tumor", "Tumor", "Stroma"], "id": ["obj-1", "obj-1", ""],
                             "clicks": [3, 3, 0], "model": ["vit_t", "vit_t", ""], **provenance})
    data = [_square(0, 0, 10, 10), _square(20, 20, 30, 30), _square(40, 40, 50, 50)]  # two parts + a hand-drawn one
    meta = {"features": features, "shape_type": ["polygon"] * 3, "metadata": {"level0_size": (60, 60)}}
    [path] = write_shapes_geojson(str(tmp_path / "p.geojson"), data, meta)
    drawn, by_hand = _features(path)
    assert drawn["id"] == "obj-1" and drawn["geometry"]["type"] == "MultiPolygon"
    assert drawn["properties"]["napari-sam-histo"] == {
        "model": "vit_t", "clicks": 3, "shape_type": "polygon", "decoder": "md", "decoder_kind": "sam",
        "decoder_hash": "sha256:1a2b3c4d5e6f", "model_hash": "sha256:6dbb90523a35", "class_id": 1}
    assert by_hand["properties"]["napari-sam-histo"]["class_id"] == 2
    assert not {"decoder", "decoder_hash"} & set(by_hand["properties"]["napari-sam-histo"])
    [tif] = write_shapes_tiff(str(tmp_path / "p.ome.tif"), data, meta)
    objects = read_label_tiff_metadata(tif)["objects"]
    assert objects["obj-1"] == {"class": "Tumor", "class_id": 1, "model": "vit_t", "decoder": "md",
                                "decoder_kind": "sam", "decoder_hash": "sha256:1a2b3c4d5e6f",
                                "model_hash": "sha256:6dbb90523a35"}
    assert [o["class"] for o in objects.values()] == ["Tumor", "Stroma"]

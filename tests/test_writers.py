import json

import numpy as np
import pandas as pd
import tifffile

from napari_sam_histo._napari.writers import write_shapes_geojson, write_shapes_tiff
from napari_sam_histo.annotations.geojson import read_geojson


def _square(r0, c0, r1, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def test_shapes_layer_to_geojson_with_classes(tmp_path):
    data = [_square(10, 20, 50, 80), _square(100, 100, 120, 150)]
    meta = {"features": pd.DataFrame({"class": ["Tumor", "Stroma"]}), "metadata": {"mpp": (0.5, 0.5)}}
    [path] = write_shapes_geojson(str(tmp_path / "s.geojson"), data, meta)
    objects = read_geojson(path)
    assert [o.class_name for o in objects] == ["Tumor", "Stroma"]
    assert objects[0].polygons[0].exterior.min(axis=0).tolist() == [20, 10]  # (x, y) from (row, col)
    props = json.loads(open(path).read())["features"][0]["properties"]
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

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_sam_histo._napari.writers import write_shapes_geojson, write_shapes_tiff
from napari_sam_histo.annotations import class_table
from napari_sam_histo.annotations.class_table import TABLE_NAME, ClassTable, class_table_path, fallback_path
from napari_sam_histo.annotations.label_tiff import read_label_tiff_metadata
from napari_sam_histo.errors import InputError


def _square(r0, c0, r1, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def _layer(classes: list[str], metadata: dict | None = None):
    """napari's (data, meta) of a Shapes layer with one 20 px square per class, side by side."""
    data = [_square(0, 30 * i, 20, 30 * i + 20) for i in range(len(classes))]
    return data, {"features": pd.DataFrame({"class": classes}), "shape_type": ["polygon"] * len(classes),
                  "metadata": dict(metadata or {}, level0_size=(30 * len(classes), 20))}


def _value_of(labels, i):
    return int(labels[10, 30 * i + 10])


def test_two_exports_with_different_class_sets_give_tumor_the_same_pixel_value(tmp_path):
    first = tmp_path / "first.ome.tif"
    write_shapes_tiff(str(first), *_layer(["Tumor", "Stroma"]))
    second = tmp_path / "second.ome.tif"
    write_shapes_tiff(str(second), *_layer(["Mucin", "Necrosis", "Tumor"]))  # sorted names would make Tumor 3
    tumor_first = _value_of(tifffile.imread(first), 0)
    labels = tifffile.imread(second)
    assert _value_of(labels, 2) == tumor_first == 1
    assert {_value_of(labels, 0), _value_of(labels, 1)} == {3, 4}  # new classes: the next free ids
    assert read_label_tiff_metadata(second)["classes"] == {"0": "background", "1": "Tumor", "2": "Stroma",
                                                          "3": "Mucin", "4": "Necrosis"}
    # the GeoJSON export of the same folder gives the same ids
    [path] = write_shapes_geojson(str(tmp_path / "third.geojson"), *_layer(["Necrosis", "Tumor"]))
    with open(path) as stream:
        ours = [f["properties"]["napari-sam-histo"] for f in json.loads(stream.read())["features"]]
    assert [o["class_id"] for o in ours] == [4, 1]
    assert ClassTable.load(tmp_path / TABLE_NAME).ids() == {"Tumor": 1, "Stroma": 2, "Mucin": 3, "Necrosis": 4}


def test_a_second_slide_in_the_same_folder_shares_the_table(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"")
    (tmp_path / "b.svs").write_bytes(b"")
    first = ClassTable.for_slide(tmp_path / "a.svs")
    assert first.id_of("Lymphocytes", (0, 0, 255)) == 1 and first.id_of("Tumor") == 2
    second = ClassTable.for_slide(tmp_path / "b.svs")
    assert second.path == first.path == tmp_path / TABLE_NAME
    assert second.ids() == {"Lymphocytes": 1, "Tumor": 2}
    assert second.colour_of("Lymphocytes") == (0, 0, 255) and second.colour_of("Tumor") == (200, 0, 0)
    assert ClassTable.for_slide(tmp_path).path == first.path  # the folder itself names the same table
    # the writers use the table named in the layer's metadata, wherever the file goes
    out = tmp_path / "exports"
    write_shapes_tiff(str(out / "b.ome.tif"), *_layer(["Tumor"], {"class_table": str(second.path)}))
    assert _value_of(tifffile.imread(out / "b.ome.tif"), 0) == 2
    assert not (out / TABLE_NAME).exists()
    assert read_label_tiff_metadata(out / "b.ome.tif")["class_table"] == str(second.path)


def test_ids_never_change_and_are_never_reused(tmp_path):
    path = tmp_path / TABLE_NAME
    table = ClassTable.load(path)
    assert not path.exists() and len(table) == 0
    assert [table.id_of(n) for n in ("Tumor", "Stroma", "Other")] == [1, 2, 3]
    table.set_colour("Stroma", (1, 2, 3))
    assert table.id_of("Stroma") == 2 and ClassTable.load(path).colour_of("Stroma") == (1, 2, 3)
    data = json.loads(path.read_text())
    data["classes"] = [c for c in data["classes"] if c["name"] != "Other"]  # removed by hand
    path.write_text(json.dumps(data))
    again = ClassTable.load(path)
    assert again.id_of("Necrosis") == 4  # 3 stays Other's
    assert again.id_of("Other") == 5
    assert again.names() == ["Tumor", "Stroma", "Necrosis", "Other"]


def test_classes_added_by_another_window_are_kept(tmp_path):
    path = tmp_path / TABLE_NAME
    one, two = ClassTable.load(path), ClassTable.load(path)
    assert one.id_of("Tumor") == 1
    assert two.id_of("Stroma") == 2  # re-reads the file before choosing an id
    assert one.id_of("Necrosis") == 3 and one.id_of("Stroma") == 2
    assert ClassTable.load(path).ids() == {"Tumor": 1, "Stroma": 2, "Necrosis": 3}
    data = json.loads(path.read_text())
    data["classes"][0]["id"] = 9  # Tumor renumbered by hand while the table is in use
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"{TABLE_NAME} was changed while in use: it gives id 9 to 'Tumor'"):
        one.id_of("Mucin")


@pytest.mark.parametrize("content, words", [
    ("{oops", "is not usable: Expecting property name"),
    ("", "is not usable: Expecting value"),
    (json.dumps({"classes": []}), 'not a class table'),
    (json.dumps({"format": "napari-sam-histo-classes", "format_version": 1,
                 "classes": [{"id": 1, "name": "Tumor", "color": [1, 2, 3]},
                             {"id": 1, "name": "Stroma", "color": [1, 2, 3]}]}),
     "id 1 is given to two classes"),
    (json.dumps({"format": "napari-sam-histo-classes", "format_version": 1,
                 "classes": [{"id": 0, "name": "Tumor", "color": [1, 2, 3]}]}), "id 0 is not an integer 1..65535"),
    (json.dumps({"format": "napari-sam-histo-classes", "format_version": 1,
                 "classes": [{"id": 2, "name": "Tumor", "color": "red"}]}), "colour 'red' is not three integers"),
])
def test_an_unreadable_table_is_an_input_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / TABLE_NAME
    path.write_text(content)
    with pytest.raises(InputError, match=f"Class table {path} ") as caught:
        ClassTable.load(path)
    assert words in str(caught.value) and "never renumbered" in str(caught.value)
    # an export into that folder refuses too, and leaves the table and the folder as they were
    with pytest.raises(InputError, match=f"Class table {path} "):
        write_shapes_tiff(str(tmp_path / "x.ome.tif"), *_layer(["Tumor"]))
    assert path.read_text() == content and sorted(p.name for p in tmp_path.iterdir()) == [TABLE_NAME]


def test_a_table_that_cannot_be_read_at_all_is_named(tmp_path, monkeypatch):
    path = tmp_path / TABLE_NAME
    path.write_text("{}")
    real = type(path).read_text

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(path), "read_text", denied)
    with pytest.raises(InputError, match=f"Class table {path} cannot be read \\(Permission denied\\)"):
        ClassTable.for_slide(tmp_path / "slide.svs")


def test_a_read_only_folder_keeps_the_table_in_the_cache_and_says_so(tmp_path, empty_cache, monkeypatch):
    slides = tmp_path / "share"
    slides.mkdir()
    (slides / TABLE_NAME).write_text(json.dumps({"format": "napari-sam-histo-classes", "format_version": 1,
                                                 "classes": [{"id": 5, "name": "Tumor", "color": [200, 0, 0]}]}))
    real_atomic = class_table.atomic_path

    def read_only(path, overwrite=True):
        if path.parent == slides:
            raise InputError(f"Cannot write to {slides}: Permission denied.")
        return real_atomic(path, overwrite)

    monkeypatch.setattr(class_table, "atomic_path", read_only)
    monkeypatch.setattr(class_table.os, "access", lambda p, mode: not str(p).startswith(str(slides)))
    table = ClassTable.for_slide(slides / "a.svs")
    assert table.path == slides / TABLE_NAME and table.id_of("Tumor") == 5  # read where it is
    assert table.id_of("Stroma") == 6  # written to the cache, seeded from the folder's table
    cached = fallback_path(slides)
    assert table.path == cached and cached.is_relative_to(empty_cache)
    assert f"Cannot write the class table {slides / TABLE_NAME}" in table.notice and str(cached) in table.notice
    assert ClassTable.load(cached).ids() == {"Tumor": 5, "Stroma": 6}
    # the next slide of that folder finds the copy, and says where it is
    assert class_table_path(slides / "b.svs") == cached
    later = ClassTable.for_slide(slides / "b.svs")
    assert later.ids() == {"Tumor": 5, "Stroma": 6} and str(cached) in later.notice
    # napari's save into that folder uses the copy and warns with what happened
    monkeypatch.setattr(class_table, "atomic_path", real_atomic)
    with pytest.warns(UserWarning, match="its class table is kept in"):
        write_shapes_tiff(str(slides / "a.ome.tif"), *_layer(["Stroma", "Tumor"]))
    labels = tifffile.imread(slides / "a.ome.tif")
    assert (_value_of(labels, 0), _value_of(labels, 1)) == (6, 5)

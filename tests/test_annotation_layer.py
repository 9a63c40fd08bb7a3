"""The annotations layer as the store of accepted objects (napari layer models, no Qt)."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_sam_histo._napari import annotation_layer  # noqa: E402
from napari_sam_histo.annotations.geometry import Polygon  # noqa: E402
from napari_sam_histo.annotations.objects import AnnotatedObject  # noqa: E402


class _Viewer:
    """The two things ``layer_for`` needs of a viewer."""

    def __init__(self):
        from napari.components import LayerList

        self.layers = LayerList()

    def add_shapes(self, **kwargs):
        from napari.layers import Shapes

        layer = Shapes(**kwargs)
        self.layers.append(layer)
        return layer


def _square(x, y, side=50.0):
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], float)


@pytest.fixture
def layer():
    from napari.layers import Image

    viewer = _Viewer()
    image = Image(np.zeros((64, 64)), metadata={"mpp": (0.5, 0.5)})
    layer = annotation_layer.layer_for(viewer, image, "slide-1")
    two_parts = AnnotatedObject([Polygon(_square(0, 0)), Polygon(_square(100, 0)), Polygon(_square(200, 0))], "Tumor")
    other = AnnotatedObject([Polygon(_square(0, 300))], "Stroma", (0, 255, 0), clicks=4, model="vit_t")
    annotation_layer.add_objects(layer, [two_parts, other], lambda name: (200, 0, 0))
    return layer, two_parts, other


def test_parts_are_grouped_by_id_and_counted_without_conversion(layer):
    layer, two_parts, other = layer
    objects = annotation_layer.layer_objects(layer)
    assert [o.id for o in objects] == [two_parts.id, other.id]
    assert len(objects[0].polygons) == 3 and objects[1].clicks == 4 and objects[1].model == "vit_t"
    assert annotation_layer.object_count(layer) == 2


def test_redo_of_a_partial_deletion_removes_only_those_parts(layer):
    layer, two_parts, other = layer
    rows = annotation_layer.rows_of(layer, two_parts.id)
    parts = annotation_layer.objects_in_rows(layer, rows[1:2])  # the user deleted the middle part
    layer.remove(rows[1:2])
    annotation_layer.add_objects(layer, parts, lambda name: (200, 0, 0))  # undo
    assert len(annotation_layer.rows_of(layer, two_parts.id)) == 3
    annotation_layer.remove_parts(layer, parts)  # redo
    assert len(annotation_layer.rows_of(layer, two_parts.id)) == 2
    assert len(annotation_layer.rows_of(layer, other.id)) == 1


def test_another_slides_layer_is_renamed_not_replaced(layer):
    from napari.layers import Image

    layer, _, _ = layer
    viewer = _Viewer()
    viewer.layers.append(layer)
    second = annotation_layer.layer_for(viewer, Image(np.zeros((8, 8)), name="slide two"), "slide-2")
    assert second is not layer and second.name == annotation_layer.ANNOTATIONS
    assert layer.name.startswith(annotation_layer.ANNOTATIONS + " (") and len(layer.data) == 4
    back = annotation_layer.layer_for(viewer, Image(np.zeros((8, 8))), "slide-1")
    assert back is layer and layer.name == annotation_layer.ANNOTATIONS

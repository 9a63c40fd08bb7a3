"""The annotations layer as the store of accepted objects (napari layer models, no Qt)."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_sam_histo._napari import annotation_layer  # noqa: E402
from napari_sam_histo._napari.annotator.view import camera
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


def test_another_slides_layer_is_renamed_and_hidden_not_replaced(layer):
    from napari.layers import Image

    layer, _, _ = layer
    viewer = _Viewer()
    viewer.layers.append(layer)
    second = annotation_layer.layer_for(viewer, Image(np.zeros((8, 8)), name="slide two"), "slide-2")
    assert second is not layer and second.name == annotation_layer.ANNOTATIONS
    assert layer.name.startswith(annotation_layer.ANNOTATIONS + " (") and len(layer.data) == 4
    assert not layer.visible and second.visible  # the first slide's objects are not drawn over the second
    back = annotation_layer.layer_for(viewer, Image(np.zeros((8, 8))), "slide-1")
    assert back is layer and layer.name == annotation_layer.ANNOTATIONS
    assert layer.visible and not second.visible


def _ring(cx, cy, rx, ry, n=240):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[cx + rx * np.cos(t), cy + ry * np.sin(t)]


@pytest.mark.gui
@pytest.mark.slow
def test_a_click_inside_an_accepted_object_selects_it_in_select_mode(make_napari_viewer, qtbot):
    """Real mouse presses on napari's canvas, over a slide in µm: inside a large object with a
    hole, inside its second part and inside a small object, each selects that shape; the hole and
    the glass select nothing."""
    from qtpy.QtCore import QPoint, Qt

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    slide = viewer.add_image(np.zeros((4000, 6000), np.uint8), name="slide", scale=(0.5, 0.5), units=("um", "um"))
    layer = annotation_layer.layer_for(viewer, slide, "slide-1")
    large = AnnotatedObject([Polygon(_ring(2000, 2000, 1600, 1300), [_ring(2600, 2000, 200, 200)[::-1]]),
                             Polygon(_ring(4600, 1000, 500, 400))], "Tumor")
    small = AnnotatedObject([Polygon(_ring(4600, 3200, 60, 60))], "Stroma")
    annotation_layer.add_objects(layer, [large, small], lambda name: (200, 0, 0))
    viewer.reset_view()
    viewer.layers.selection.active = layer
    layer.mode = "select"
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.wait(200)

    def click_at(x0, y0):
        """Press and release on the canvas pixel showing level-0 pixel (x0, y0)."""
        world = np.asarray(layer.data_to_world((y0, x0)))[-2:]
        row, col = (world - np.asarray(camera(viewer).center[-2:])) * camera(viewer).zoom
        at = QPoint(round(canvas.width() / 2 + col), round(canvas.height() / 2 + row))
        layer.selected_data = set()
        qtbot.mouseMove(canvas, at)
        qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=at)
        qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=at)
        qtbot.wait(30)
        return set(layer.selected_data)

    large_rows = annotation_layer.rows_of(layer, large.id)
    (small_row,) = annotation_layer.rows_of(layer, small.id)
    assert click_at(1000, 2000) == {large_rows[0]}  # far from any vertex
    assert click_at(2000, 1200) == {large_rows[0]}
    assert click_at(4600, 1000) == {large_rows[1]}
    assert click_at(4600, 3200) == {small_row}
    assert click_at(2600, 2000) == set()  # in the hole
    assert click_at(5800, 3900) == set()  # on the glass

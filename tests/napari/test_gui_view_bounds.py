"""What the user accepts is what they saw (Xvfb, real MobileSAM, real mouse and key events): an
object grows only inside the view and is shown whole before it is accepted; images opened later
stay under the annotator's layers; the status names the level in use and the decoder as chosen."""

import numpy as np
import pytest
from app_model.types import KeyCode

pytest.importorskip("napari")

from napari_sam_histo._napari.annotation_layer import ANNOTATIONS  # noqa: E402
from napari_sam_histo._napari.annotator.view import camera
from napari_sam_histo._napari.annotator.working_layers import CLICKS, CURRENT, TILES  # noqa: E402
from napari_sam_histo._napari.slide_layer_data import slide_stem  # noqa: E402

from ..annotator_gui import click_image, press, wait_idle  # noqa: E402
from .test_gui_slide_scale import _started  # noqa: E402

SPOT = (700, 2400)  # stroma of the large tissue region: at a coarse level SAM takes the tissue around it
VIEW_SIDE = 1200  # level-0 pixels across the view


def _look_at(viewer, dock, x0, y0, side):
    """Centre the view on level-0 (x0, y0), ``side`` level-0 pixels across its longer side."""
    camera(viewer).center = tuple(dock.image_layer.data_to_world((y0, x0)))
    height, width = viewer.canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size
    camera(viewer).zoom = max(width, height) / side / float(dock.image_layer.scale[-1])


def _bounds(obj):
    boxes = np.array([p.bounds() for p in obj.polygons])
    return (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))


def test_a_click_at_a_coarse_level_with_growth_on_accepts_only_what_the_view_showed(make_napari_viewer, qtbot,
                                                                                    mobile_sam, slide):
    viewer, dock = _started(make_napari_viewer, qtbot, slide, tile=256, grow=True, show=True)
    try:
        _look_at(viewer, dock, *SPOT, VIEW_SIDE)
        qtbot.wait(50)
        shown = dock.view_box()
        assert dock.view_level().downsample >= 4  # a coarse level: a 256-px tile spans about the view
        click_image(dock, *SPOT)
        wait_idle(dock, qtbot)
        dock.annotator.wait_continuation(120)
        qtbot.wait(300)  # the grown tiles are drawn
        assert dock.annotator.grown <= 2  # free, it spread through 7 tiles across the slide
        (x, y), mask = dock.annotator.state().mask
        ys, xs = np.nonzero(mask)
        d = dock.annotator.state().downsample
        reaches_beyond = (xs.min() + x) * d < shown[0] - d or (xs.max() + x + 1) * d > shown[2] + d or \
            (ys.min() + y) * d < shown[1] - d or (ys.max() + y + 1) * d > shown[3] + d
        press(viewer, KeyCode.Enter)
        if reaches_beyond:  # not accepted: the view now shows the whole object
            qtbot.waitUntil(lambda: "Not accepted yet" in dock.status.text(), timeout=60_000)
            assert not dock.object_list.ids and dock.annotator.clicks
            qtbot.wait(50)
            press(viewer, KeyCode.Enter)
        seen = dock.view_box()
        qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
        [obj] = dock.objects()
        x0, y0, x1, y1 = _bounds(obj)
        slack = 2 * d
        assert seen[0] - slack <= x0 and seen[1] - slack <= y0 and x1 <= seen[2] + slack and y1 <= seen[3] + slack
        assert reaches_beyond  # this spot floods past the view: the check above was really exercised
    finally:
        dock.close_session(wait=True)


def test_an_image_opened_while_annotating_goes_under_the_annotators_layers(make_napari_viewer, qtbot, mobile_sam,
                                                                          slide):
    viewer, dock = _started(make_napari_viewer, qtbot, slide, level=0, grow=False)
    try:
        viewer.add_image(np.zeros((3000, 2300), np.uint8), name="second slide", scale=dock.image_layer.scale)
        names = lambda: [layer.name for layer in viewer.layers]  # noqa: E731
        qtbot.waitUntil(lambda: names().index("second slide") < min(
            names().index(n) for n in (ANNOTATIONS, CURRENT, TILES, CLICKS)), timeout=5_000)
        viewer.layers.selection.active = viewer.layers["second slide"]
        click_image(dock, 2091, 615)  # still the slide being annotated that is clicked
        wait_idle(dock, qtbot)
        assert len(viewer.layers[CLICKS].data) == 1 and len(dock.annotator.clicks) == 1
        # Start on the slide again (hidden meanwhile, under the second image): it is shown, above that image
        slide_layer = dock.image_layer
        slide_layer.visible = False
        dock.clear()
        wait_idle(dock, qtbot)
        dock.start()
        qtbot.waitUntil(lambda: dock.annotator is not None and not dock.session.starting, timeout=120_000)
        assert slide_layer.visible
        assert names().index("second slide") < names().index(slide_layer.name) < min(
            names().index(n) for n in (ANNOTATIONS, CURRENT, TILES, CLICKS))
    finally:
        dock.close_session(wait=True)


def test_the_status_names_the_level_in_view_and_the_decoder_as_chosen(make_napari_viewer, qtbot, mobile_sam, slide):
    def md(dock):
        dock.decoder_combo.setCurrentText("md")

    viewer, dock = _started(make_napari_viewer, qtbot, slide, show=True, before_start=md)
    try:
        from napari_sam_histo.engine.working_levels import describe_downsample

        text = dock.status.text()
        assert "md decoder" in text and "sha256" in text
        assert describe_downsample(dock.view_level().downsample, dock.source.mpp) in text  # not level 0's
        assert dock.view_level().downsample > 1
        viewer.reset_view()  # the whole slide on screen
        click_image(dock, 2091, 615)
        wait_idle(dock, qtbot)
        press(viewer, KeyCode.Enter)
        qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
        assert ", 1 click," in dock.status.text()
        [obj] = dock.objects()
        assert obj.properties["decoder"] == "md" and obj.properties["decoder_kind"] == "sam"  # kept in the layer
    finally:
        dock.close_session(wait=True)


def test_suggested_names_drop_the_slides_extensions():
    assert slide_stem("case.ome.tif") == "case" and slide_stem("case.svs") == "case"
    assert slide_stem("a.b.OME.TIFF") == "a.b"

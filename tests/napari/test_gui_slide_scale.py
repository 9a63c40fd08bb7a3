"""Slide scale in the real dock (Xvfb, real MobileSAM): the working level follows the view on a
slide without a pixel size, a coarse outline refined at a higher magnification stays one object,
and an object across a tile border has no straight cut there."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")

from napari_sam_histo._napari.annotation_layer import ANNOTATIONS  # noqa: E402
from napari_sam_histo._napari.annotator.dock import AnnotatorDock  # noqa: E402
from napari_sam_histo._napari.annotator.view import camera
from napari_sam_histo._napari.annotator.working_layers import CURRENT  # noqa: E402
from napari_sam_histo._napari.sample_data import cmu1_region  # noqa: E402
from napari_sam_histo.evaluation.slide_benchmark import write_pyramid  # noqa: E402

from ..annotator_gui import FRAGMENT, click_image, wait_idle  # noqa: E402


@pytest.fixture
def no_mpp_slide(tmp_path):
    """The CC0 region as a two-level pyramid (1, 1/4) that states no pixel size."""
    [(pixels, _, _)] = cmu1_region()
    return write_pyramid(tmp_path / "no-pixel-size.ome.tif", np.asarray(pixels), None, downsamples=(1, 4))


def _started(make_napari_viewer, qtbot, path, level=None, tile=None, grow=None, show=False, before_start=None):
    """A viewer with ``path`` open and the Annotator dock started on it: CPU, no prefetching, the
    working level ``level`` pinned (None: auto), ``tile`` px tiles, continuation ``grow`` (None:
    the default). ``before_start(dock)`` checks or sets more before Start is pressed."""
    viewer = make_napari_viewer(show=show)
    viewer.open(str(path), plugin="napari-sam-histo")
    dock = AnnotatorDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.device_combo.setCurrentText("cpu")
    dock.prefetch_check.setChecked(False)
    if level is not None:
        dock.level_combo.setCurrentIndex(dock.level_combo.findData(level))
    if tile is not None:
        dock.tile_spin.setValue(tile)
    if grow is not None:
        dock.grow_check.setChecked(grow)
    if before_start is not None:
        before_start(dock)
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.annotator is not None, timeout=120_000)
    return viewer, dock


def test_auto_level_follows_the_view_on_a_slide_without_a_pixel_size_and_refines_as_one_object(
        make_napari_viewer, qtbot, mobile_sam, no_mpp_slide):
    levels = []
    viewer, dock = _started(make_napari_viewer, qtbot, no_mpp_slide, show=True, before_start=lambda dock: levels.extend(
        dock.level_combo.itemText(i) for i in range(dock.level_combo.count())))
    assert levels[0].startswith("auto") and levels[1:] == ["level 0: 1/1", "level 1: 1/4"]  # no pixel size needed
    assert "following the view" in dock.status.text()
    try:
        viewer.reset_view()  # the whole slide on screen
        click_image(dock, *FRAGMENT)
        wait_idle(dock, qtbot)
        state = dock.annotator.state()
        (coarse,) = state.boxes
        assert coarse.downsample >= 2  # not level 0: the tile holds what is on screen
        current = viewer.layers[CURRENT]
        assert np.allclose(current.scale[-2:], coarse.downsample) and current.data.any()
        (x, y), mask = state.mask
        ys, xs = np.nonzero(mask)
        border = (int(xs.max()) + x, int(ys[xs.argmax()]) + y)  # the mask's rightmost pixel (its downsample)
        # zoom in on the object's right border (about 600 level-0 px on screen) and correct it there
        camera(viewer).center = tuple(dock.image_layer.data_to_world((border[1] * coarse.downsample,
                                                                     border[0] * coarse.downsample)))
        height, width = viewer.canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size
        camera(viewer).zoom = max(width, height) / 600 / float(dock.image_layer.scale[-1])
        assert dock.view_level().downsample == 1.0
        click_image(dock, (border[0] - 3) * coarse.downsample, border[1] * coarse.downsample, button=2)  # negative
        wait_idle(dock, qtbot)
        refined = dock.annotator.state()
        assert {b.downsample for b in refined.boxes} == {coarse.downsample, 1.0}  # one object, two levels
        assert refined.downsample == 1.0 and np.allclose(current.scale[-2:], 1.0)
        (rx, ry), rmask = refined.mask  # still covers the whole coarse object
        assert rx <= x * coarse.downsample and rx + rmask.shape[1] >= (x + mask.shape[1]) * coarse.downsample
        assert rmask.sum() > 0.5 * mask.sum() * coarse.downsample ** 2
        dock.accept()
        qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
        [obj] = dock.objects()
        assert obj.clicks == 2
        dock.undo()  # the Accept
        qtbot.waitUntil(lambda: dock.pending == 0 and not dock.object_list.ids, timeout=60_000)
        dock.undo()  # the fine click: back to the coarse outline
        wait_idle(dock, qtbot)
        assert dock.annotator.state().boxes == (coarse,)
    finally:
        dock.close_session(wait=True)


def _border_runs(polygons, boxes, axis):
    """The longest polygon edge lying on a border line of one of ``boxes`` (x when ``axis`` is 0,
    y when 1) where another of ``boxes`` covers both sides of that line: a straight cut between
    two tiles of the object."""
    lines = {v for b in boxes for v in ((b.x, b.x + b.width) if axis == 0 else (b.y, b.y + b.height))}
    longest = 0.0
    for polygon in polygons:
        ring = np.asarray(polygon.exterior, float)
        for a, b in zip(ring, np.roll(ring, -1, axis=0)):
            for line in lines:
                if abs(a[axis] - line) < 0.75 and abs(b[axis] - line) < 0.75:
                    middle = (a + b) / 2  # inside a tile that spans the line: covered on both sides of it
                    across = any(c.x < middle[0] < c.x + c.width and c.y < middle[1] < c.y + c.height
                                 for c in boxes if (c.x < line < c.x + c.width if axis == 0 else c.y < line < c.y + c.height))
                    if across:
                        longest = max(longest, float(abs(a[1 - axis] - b[1 - axis])))
    return longest


def test_an_object_across_a_tile_border_has_no_straight_cut_there(make_napari_viewer, qtbot, mobile_sam, slide):
    # 256-px tiles: the tissue fragment is larger than one; the tiles are the clicks' own (no growth)
    viewer, dock = _started(make_napari_viewer, qtbot, slide, level=0, tile=256, grow=False)
    try:
        click_image(dock, *FRAGMENT)
        click_image(dock, FRAGMENT[0] - 200, FRAGMENT[1])  # beyond the first tile's left border
        click_image(dock, FRAGMENT[0], FRAGMENT[1] + 200)  # and below it
        wait_idle(dock, qtbot)
        boxes = dock.annotator.state().boxes
        assert len(boxes) >= 2 and len(dock.annotator.clicks) == 3
        dock.accept()
        qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
        [obj] = dock.objects()
        assert _border_runs(obj.polygons, boxes, 0) < 16 and _border_runs(obj.polygons, boxes, 1) < 16
        assert len(viewer.layers[ANNOTATIONS].data) >= 1
    finally:
        dock.close_session(wait=True)


def _world_bounds(layer, rows, cols):
    """World (row, col) bounds of data positions of ``layer``."""
    corners = np.array([layer.data_to_world((r, c)) for r in rows for c in cols])
    return corners.min(axis=0), corners.max(axis=0)


def test_an_accepted_object_lies_where_its_mask_was_shown_at_a_coarse_level(make_napari_viewer, qtbot,
                                                                            mobile_sam, no_mpp_slide):
    # one pixel convention (napari_sam_histo.coordinates): at 1/4 the live mask and the accepted
    # shape coincide (two conventions would put them 1.5 level-0 pixels apart)
    def no_cleaning(dock):
        dock.min_area_spin.setValue(0)
        dock.simplify_spin.setValue(0)

    viewer, dock = _started(make_napari_viewer, qtbot, no_mpp_slide, level=1, grow=False,  # level 1: 1/4
                            before_start=no_cleaning)
    try:
        click_image(dock, *FRAGMENT)
        wait_idle(dock, qtbot)
        current = viewer.layers[CURRENT]
        assert np.allclose(current.scale[-2:], 4.0, atol=0.01)
        rows, cols = np.nonzero(np.asarray(current.data))
        # napari draws data pixel i over [i - 0.5, i + 0.5]
        shown_min, shown_max = _world_bounds(current, (rows.min() - 0.5, rows.max() + 0.5),
                                             (cols.min() - 0.5, cols.max() + 0.5))
        dock.accept()
        qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
        shapes = viewer.layers[ANNOTATIONS]
        vertices = np.concatenate([np.asarray(s) for s in shapes.data])
        accepted = np.array([shapes.data_to_world(v) for v in vertices])
        assert np.abs(accepted.min(axis=0) - shown_min).max() <= 0.5
        assert np.abs(accepted.max(axis=0) - shown_max).max() <= 0.5
        # and the image under it: the click's level-0 pixel is inside both
        assert shown_min[1] <= FRAGMENT[0] <= shown_max[1] and shown_min[0] <= FRAGMENT[1] <= shown_max[0]
    finally:
        dock.close_session(wait=True)


def test_the_object_grows_past_a_tile_border_without_a_click_there(make_napari_viewer, qtbot, mobile_sam, slide):
    growing = []
    # 256-px tiles: the tissue fragment is larger than one
    viewer, dock = _started(make_napari_viewer, qtbot, slide, level=0, tile=256,
                            before_start=lambda dock: growing.append(dock.grow_check.isChecked()))
    assert growing == [True]  # on by default
    try:
        viewer.reset_view()  # the whole slide on screen: the object grows only inside the view
        click_image(dock, *FRAGMENT)
        click_image(dock, FRAGMENT[0] - 200, FRAGMENT[1])  # the second click's tissue reaches its tiles' borders
        wait_idle(dock, qtbot)
        # two clicks open at most two tiles; the next tiles are computed and decoded by themselves
        qtbot.waitUntil(lambda: len(dock.annotator.state().boxes) > 2 and "continues past" in dock.status.text(),
                        timeout=180_000)
        assert len(dock.annotator.clicks) == 2
        assert any(purpose == "continuation" for _, _, purpose in dock.progress_log)  # with its progress bar
        qtbot.waitUntil(lambda: len(viewer.layers["SAM tiles"].data) > 1, timeout=10_000)  # outlined on screen
        current = viewer.layers[CURRENT]
        assert np.asarray(current.data).shape[1] > 256 or np.asarray(current.data).shape[0] > 256  # drawn whole
        dock.grow_check.setChecked(False)  # the switch stops it
        dock.undo()  # the click and what it grew go together
        wait_idle(dock, qtbot)
        assert len(dock.annotator.state().boxes) == 1 and len(dock.annotator.clicks) == 1
    finally:
        dock.close_session(wait=True)

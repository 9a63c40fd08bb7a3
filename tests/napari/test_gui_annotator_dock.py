"""The Annotator dock on the real CC0 slide with the real MobileSAM (Xvfb)."""

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from napari_sam_histo._napari.annotation_layer import ANNOTATIONS, FACE_ALPHA  # noqa: E402
from napari_sam_histo._napari.annotator.view import camera
from napari_sam_histo._napari.annotator.working_layers import CLICKS, CURRENT, TILES  # noqa: E402
from napari_sam_histo.annotations.bridged import to_bridged_ring  # noqa: E402
from napari_sam_histo.annotations.geometry import Polygon, polygon_area, rasterize  # noqa: E402

from ..annotator_gui import FRAGMENT, GRID_LINE_Y, STRIP, send_mouse, wait_idle  # noqa: E402


def test_click_accept_export_and_reimport(dock, qtbot, tmp_path):
    dock.add_click(*FRAGMENT)
    assert len(dock.viewer.layers[CLICKS].data) == 1  # the click shows at once
    wait_idle(dock, qtbot)
    current = dock.viewer.layers[CURRENT]
    assert current.data.any() and current.data.shape == (1024, 1024)
    qtbot.waitUntil(lambda: len(dock.viewer.layers[TILES].data) == 1, timeout=5_000)  # its tile is outlined (next turn)
    dock.accept()
    qtbot.waitUntil(lambda: dock.pending == 0 and bool(dock.objects()), timeout=60_000)
    [obj] = dock.objects()
    assert obj.class_name == "Tumor" and obj.clicks == 1 and obj.model == "vit_t"
    min_x, min_y, max_x, max_y = np.array([p.bounds() for p in obj.polygons]).T
    assert min_x.min() < FRAGMENT[0] < max_x.max() and min_y.min() < FRAGMENT[1] < max_y.max()
    assert len(dock.viewer.layers[ANNOTATIONS].data) >= 1 and not dock.viewer.layers[CLICKS].data.size
    assert not dock.viewer.layers[TILES].data
    dock.add_click(*FRAGMENT)  # the next object's first click shows (the old selection is gone)
    assert len(dock.viewer.layers[CLICKS].data) == 1
    dock.clear()
    wait_idle(dock, qtbot)

    geojson = dock.export_geojson(tmp_path / "slide.geojson").result()
    [feature] = json.loads(geojson.read_text())["features"]
    assert feature["properties"]["classification"]["name"] == "Tumor"
    assert "Area µm^2" in feature["properties"]["measurements"]
    labels = tifffile.imread(dock.export_tiff(tmp_path / "slide.ome.tif").result())
    assert labels.shape == (2967, 2220) and labels[FRAGMENT[1], FRAGMENT[0]] == 1
    added = dock.import_geojson(geojson)
    qtbot.waitUntil(added.done, timeout=10_000)
    assert added.result() == 0 and len(dock.objects()) == 1  # the file's object is here already


def test_undo_and_clicks_outside_the_slide(dock, qtbot):
    dock.add_click(*FRAGMENT)
    dock.add_click(FRAGMENT[0] + 40, FRAGMENT[1], positive=False)
    wait_idle(dock, qtbot)
    assert len(dock.annotator.clicks) == 2
    dock.undo()
    wait_idle(dock, qtbot, 60_000)
    assert len(dock.annotator.clicks) == 1 and len(dock.viewer.layers[CLICKS].data) == 1
    dock.add_click(FRAGMENT[0] - 20, FRAGMENT[1])  # shows at once (no stale point selection in the way)
    assert len(dock.viewer.layers[CLICKS].data) == 2
    wait_idle(dock, qtbot)
    dock.add_click(5000, 10)
    assert dock.status.text().startswith("⚠") and "outside" in dock.status.text()


def test_a_click_near_a_grid_line_gives_an_object_not_cut_there_with_its_hole_drawn(dock, qtbot):
    """The strip crosses y = 1024, a line of the fixed grid: the tile centred on the click holds it
    whole. Accepted, it is drawn in its class's colour with the gap inside it left empty."""
    dock.add_click(*STRIP)
    wait_idle(dock, qtbot)
    [box] = dock.annotator.state().boxes
    assert box.y < GRID_LINE_Y - 256 and box.y + box.height > GRID_LINE_Y + 256
    (x, y), mask = dock.annotator.current_mask()
    rows = np.nonzero(mask.any(axis=1))[0] + y
    assert rows.min() < GRID_LINE_Y - 5 and rows.max() > GRID_LINE_Y + 5  # on both sides of the line
    edges = mask[0].any() or mask[-1].any() or mask[:, -1].any()  # inner borders (x = 0 is the slide's)
    assert not edges, "the object is cut by its tile's border"
    # a progress bar was shown while the embedding was computed, and is closed
    started = [e for e in dock.progress_log if e[0] == "started"]
    assert ("started", box.key(), "click") in started and ("finished", box.key(), "click") in dock.progress_log
    assert not dock.progress.bars

    dock.class_combo.setCurrentText("Stroma")
    dock.accept()
    qtbot.waitUntil(lambda: dock.pending == 0 and bool(dock.objects()), timeout=60_000)
    [obj] = dock.objects()
    assert obj.class_name == "Stroma" and obj.color == dock.classes["Stroma"]
    shapes = dock.viewer.layers[ANNOTATIONS]
    assert list(shapes.features["class"]) == ["Stroma"] * len(obj.polygons)
    assert np.allclose(shapes.face_color[0], [*(c / 255 for c in dock.classes["Stroma"]), FACE_ALPHA])
    assert np.allclose(shapes.edge_color[0, :3], [c / 255 for c in dock.classes["Stroma"]])

    with_holes = [p for p in obj.polygons if p.holes]
    assert with_holes, "SAM left no gap in the strip"
    polygon = max(with_holes, key=polygon_area)
    hole = max(polygon.holes, key=lambda h: polygon_area(Polygon(h)))
    (hx, hy), (fx, fy) = _inside(Polygon(hole)), _inside(polygon)
    index = next(i for i, p in enumerate(obj.polygons) if p is polygon)
    assert shapes._data_view.inside((fy, fx)) == index  # the tissue is filled…
    assert shapes._data_view.inside((hy, hx)) is None  # …and the gap is not

    dock.set_class_color("Stroma", (0, 255, 0))  # editing the class's colour recolours its objects
    assert np.allclose(shapes.face_color[0], [0, 1, 0, FACE_ALPHA])


def _inside(polygon: Polygon) -> tuple[float, float]:
    """A level-0 point well inside ``polygon`` (holes excluded)."""
    from scipy import ndimage

    x0, y0, x1, y1 = polygon.bounds()
    mask = rasterize([polygon], (np.floor(x0), np.floor(y0)), 1.0, (int(y1 - y0) + 2, int(x1 - x0) + 2))
    depth = ndimage.distance_transform_edt(mask)
    r, c = np.unravel_index(np.argmax(depth), depth.shape)
    assert depth[r, c] >= 2
    return np.floor(x0) + c + 0.5, np.floor(y0) + r + 0.5


def test_napari_draws_a_bridged_hole_empty():
    from napari.layers import Shapes

    square = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], float)
    hole = np.array([[30, 30], [30, 60], [60, 60], [60, 30]], float)
    shapes = Shapes([to_bridged_ring(Polygon(square, [hole]))[:, ::-1]], shape_type="polygon")
    assert shapes._data_view.inside((10, 10)) == 0 and shapes._data_view.inside((45, 45)) is None
    mask = shapes.to_masks((101, 101))[0]
    assert mask[10, 10] and not mask[45, 45]


def test_prefetch_runs_in_the_background_with_progress(dock, qtbot):
    camera(dock.viewer).center = (0, 1500 * 0.499, 1000 * 0.499)  # world (µm): level-0 (x 1000, y 1500)
    dock.annotator.prefetch_radius = 0  # one lattice tile around the view: enough to test, cheaper
    dock.prefetch_check.setChecked(True)
    dock.prefetch_now()
    future = dock.prefetch_future
    assert future is not None
    qtbot.waitUntil(future.done, timeout=120_000)
    [box] = future.result()
    assert box.contains(1000, 1500)
    key = dock.annotator.predictor.key_for(dock.annotator.source.identity, box.key())
    assert key in dock.annotator.predictor.cache
    qtbot.waitUntil(lambda: ("finished", box.key(), "prefetch") in dock.progress_log, timeout=10_000)
    assert ("started", box.key(), "prefetch") in dock.progress_log and not dock.progress.bars
    calls = dock.annotator.predictor.encoder_calls
    dock.grow_check.setChecked(False)  # (growing past the tile's border would add a tile of its own)
    dock.add_click(1000, 1500)  # a first click well inside the prefetched tile reuses it
    wait_idle(dock, qtbot)
    assert dock.annotator.state().boxes == (box,) and dock.annotator.predictor.encoder_calls == calls


def test_mouse_clicks_drags_and_keys(dock, qtbot, monkeypatch):
    viewer, seen = dock.viewer, []
    # napari's pixel centre (col 2091) is level-0 2091.5 in the corner convention (coordinates.py)
    monkeypatch.setattr(dock, "add_click",
                        lambda x, y, positive=True: seen.append((round(x - 0.5), round(y - 0.5), positive)))
    world = tuple(np.array([FRAGMENT[1], FRAGMENT[0]]) * 0.499)  # (row, col) in µm
    at = np.array([100.0, 100.0])
    send_mouse(viewer, "mouse_press", position=world, pos=at)
    send_mouse(viewer, "mouse_release", position=world, pos=at)
    assert seen == [(*FRAGMENT, True)]  # a click
    send_mouse(viewer, "mouse_press", position=world, pos=at, button=2)
    send_mouse(viewer, "mouse_release", position=world, pos=at, button=2)
    send_mouse(viewer, "mouse_press", position=world, pos=at, modifiers=["Alt"])
    send_mouse(viewer, "mouse_release", position=world, pos=at, modifiers=["Alt"])
    assert seen[1:] == [(*FRAGMENT, False)] * 2  # right click, Alt + click: negative
    zoom = camera(viewer).zoom
    send_mouse(viewer, "mouse_double_click", position=world, pos=at)
    assert len(seen) == 4  # the second click of a double click counts…
    assert camera(viewer).zoom == zoom  # …and does not zoom
    send_mouse(viewer, "mouse_press", position=world, pos=at)
    send_mouse(viewer, "mouse_move", position=world, pos=at + 30, is_dragging=True)
    send_mouse(viewer, "mouse_release", position=world, pos=at + 30)
    assert len(seen) == 4  # a drag pans; it is no click
    viewer.layers.selection.active = viewer.layers[ANNOTATIONS]
    viewer.layers[ANNOTATIONS].mode = "add_polygon"
    send_mouse(viewer, "mouse_press", position=world, pos=at)
    send_mouse(viewer, "mouse_release", position=world, pos=at)
    assert len(seen) == 4  # drawing shapes by hand keeps its clicks
    viewer.layers[ANNOTATIONS].mode = "pan_zoom"

    from napari.components._viewer_mouse_bindings import double_click_to_zoom

    assert double_click_to_zoom not in viewer.mouse_double_click_callbacks

    calls = []
    for name in ("accept", "undo", "redo"):
        monkeypatch.setattr(dock, name, lambda name=name: calls.append(name))
    handler = viewer.window._qt_viewer._key_map_handler
    from app_model.types import KeyBinding, KeyCode, KeyMod

    keys = [KeyBinding.from_int(k) for k in (KeyCode.Enter, KeyMod.CtrlCmd | KeyCode.KeyZ,
                                             KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ)]
    for layer in (dock.image_layer, viewer.layers[CURRENT], viewer.layers[CLICKS]):
        viewer.layers.selection.active = layer  # Labels binds Enter and Ctrl-Z itself: ours must win
        for key in keys:
            handler.press_key(key)
            handler.release_key(key)
    assert calls == ["accept", "undo", "redo"] * 3
    dock.shutdown()
    assert double_click_to_zoom in viewer.mouse_double_click_callbacks  # napari's zoom is back


def test_embeddings_can_be_kept_on_disk_per_slide(dock, qtbot, tmp_path, monkeypatch):
    from napari_sam_histo.assembly import annotating
    from napari_sam_histo.models.weights import cache_dir

    store = annotating.embedding_store(dock.annotator.source.identity)
    assert store.parent == cache_dir() / "embeddings" and store != annotating.embedding_store("another slide")
    monkeypatch.setattr(annotating, "embedding_store", lambda identity: tmp_path / "store")
    old = dock.annotator
    dock.disk_check.setChecked(True)
    dock.start()  # again, now with a store on disk
    qtbot.waitUntil(lambda: (dock.annotator is not None and dock.annotator is not old)
                    or dock.status.text().startswith("⚠"), timeout=120_000)
    assert dock.annotator is not old, dock.status.text()
    assert dock.annotator.predictor.cache.store_dir == tmp_path / "store"
    dock.add_click(*FRAGMENT)
    wait_idle(dock, qtbot)
    assert len(list((tmp_path / "store").glob("*.zarr"))) == 1


def test_enter_in_the_class_box_adds_the_class_and_does_not_accept(dock, qtbot):
    """Typing a new class and pressing Enter in the class box adds the class and makes it the one
    the object will be accepted as; the object being clicked stays live (Enter on the canvas
    accepts it)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    dock.add_click(*FRAGMENT)
    wait_idle(dock, qtbot)
    line = dock.class_combo.lineEdit()
    line.selectAll()
    QTest.keyClicks(line, "Gland")
    QTest.keyClick(line, Qt.Key.Key_Return)
    qtbot.wait(200)
    wait_idle(dock, qtbot)
    assert not dock.objects() and len(dock.annotator.clicks) == 1
    assert dock.class_combo.findText("Gland") >= 0 and dock.class_picker.name == "Gland"
    assert "Gland" in dock.status.text() and "Gland" in dock.classes


def test_the_status_follows_the_object_back_to_none(dock, qtbot):
    """Undoing an object's only click leaves no object: the status says so (not the last click's
    text), and Enter then says there is nothing to accept."""
    dock.add_click(*FRAGMENT)
    wait_idle(dock, qtbot)
    assert dock.status.text().startswith("1 click")
    dock.undo()
    wait_idle(dock, qtbot)
    assert not dock.annotator.clicks and dock.status.text().startswith("No object is being clicked")
    dock.accept()
    wait_idle(dock, qtbot)
    assert "nothing to accept" in dock.status.text() and not dock.objects()

"""The Annotator dock keeps every piece of a pathologist's work (Xvfb, real MobileSAM, real slide).

Each test drives the dock as a user does: clicks and keys through napari's own event dispatch,
buttons with the mouse, file dialogs answered; then checks the layers and the files written."""

import json
from pathlib import Path

import numpy as np
import pytest
from app_model.types import KeyCode, KeyMod

pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QFileDialog  # noqa: E402

from napari_sam_histo._napari.annotation_layer import ANNOTATIONS  # noqa: E402
from napari_sam_histo._napari.annotator.dock import AnnotatorDock  # noqa: E402
from napari_sam_histo._napari.annotator.session import NOT_STARTED  # noqa: E402
from napari_sam_histo._napari.annotator.working_layers import CLICKS, CURRENT, TILES  # noqa: E402
from napari_sam_histo.annotations.geometry import polygon_area  # noqa: E402

from ..annotator_gui import FRAGMENT, MPP, STRIP, MouseEvent, click, press, reopen, wait_idle, world  # noqa: E402

UNDO, REDO = KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ


def _accept_one(dock, qtbot, at=FRAGMENT) -> None:
    """Click once at ``at`` and press Enter; wait until the object is in the layer."""
    n = len(dock.object_list.ids)
    click(dock.viewer, *at)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == n + 1, timeout=60_000)


def _answer_save_dialog(monkeypatch, path, seen=None):
    def dialog(parent, caption, suggested, filter_):
        if seen is not None:
            seen.append(suggested)
        return str(path), filter_

    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog)


def _export(dock, qtbot, monkeypatch, path) -> dict:
    _answer_save_dialog(monkeypatch, path)
    said, set_text = [], dock.status.setText
    monkeypatch.setattr(dock.status, "setText", lambda text: said.append(text) or set_text(text))
    qtbot.mouseClick(dock.buttons["Export GeoJSON…"], Qt.MouseButton.LeftButton)
    written = Path(str(path) if Path(path).suffix else f"{path}.geojson")
    qtbot.waitUntil(lambda: any(t.startswith(("Exported", "⚠")) for t in said), timeout=30_000)
    assert any(t.startswith("Exported") for t in said) and written.exists(), said
    monkeypatch.setattr(dock.status, "setText", set_text)
    return json.loads(written.read_text())


def test_start_again_keeps_accepted_objects_and_asks_before_dropping_clicks(dock, answers, qtbot, monkeypatch,
                                                                              tmp_path):
    _accept_one(dock, qtbot)
    click(dock.viewer, *STRIP)  # an object being clicked
    wait_idle(dock, qtbot)
    old = dock.annotator
    answers.answer = False
    dock.decoder_combo.setCurrentText("sam")
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    assert dock.annotator is old and len(old.clicks) == 1 and "cancelled" in dock.status.text()
    answers.answer, asked = True, answers.asked
    asked.clear()
    source = dock.source
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.annotator is not old and dock.annotator is not None, timeout=120_000)
    assert asked and "(1 click)" in asked[0]
    assert dock.source is source  # the slide is reused, not opened again
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=5_000)
    assert len(dock.viewer.layers[ANNOTATIONS].data) >= 1
    qtbot.wait(2_000)  # (an object kept on disk would be offered back by now)
    assert len(asked) == 1  # the object dropped on purpose is not offered back as one kept from before
    collection = _export(dock, qtbot, monkeypatch, tmp_path / "after-restart")  # no extension typed
    assert len(collection["features"]) == 1  # the object accepted before Start is exported


def test_the_layer_is_the_truth_deletions_and_vertex_edits_are_exported(dock, qtbot, monkeypatch, tmp_path):
    _accept_one(dock, qtbot)
    _accept_one(dock, qtbot, at=STRIP)
    shapes = dock.viewer.layers[ANNOTATIONS]
    fragment_id, strip_id = dock.object_list.ids
    # the user moves the fragment's outline 100 px to the right (vertex edit) …
    rows = [i for i, v in enumerate(shapes.features["id"]) if v == fragment_id]
    data = list(shapes.data)
    for i in rows:
        data[i] = data[i] + np.array([0.0, 100.0])
    shapes.data = data
    # … and deletes the strip on the canvas: select it, press Delete with the layer active
    viewer = dock.viewer
    viewer.layers.selection.active = shapes
    shapes.mode = "select"
    shapes.selected_data = {i for i, v in enumerate(shapes.features["id"]) if v == strip_id}
    press(viewer, KeyCode.Delete)
    qtbot.waitUntil(lambda: dock.object_list.ids == [fragment_id], timeout=5_000)
    collection = _export(dock, qtbot, monkeypatch, tmp_path / "truth.geojson")
    [feature] = collection["features"]
    assert feature["id"] == fragment_id
    xs = [p[0] for ring in _rings(feature["geometry"]) for p in ring]
    assert min(xs) > FRAGMENT[0] - 400 + 100 and max(xs) > FRAGMENT[0] + 100  # moved, as on screen
    # napari's File > Save Selected Layers writes the same objects
    viewer.layers.selection.active = shapes
    viewer.layers.selection = {shapes}
    viewer.layers.save(str(tmp_path / "saved.geojson"), selected=True, plugin="napari-sam-histo")
    [saved] = json.loads((tmp_path / "saved.geojson").read_text())["features"]
    assert saved["id"] == feature["id"] and saved["geometry"] == feature["geometry"]
    assert saved["properties"]["classification"] == feature["properties"]["classification"]
    # the deletion is undone with Ctrl-Z on the canvas
    viewer.layers.selection.active = dock.image_layer
    press(viewer, UNDO)
    qtbot.waitUntil(lambda: sorted(dock.object_list.ids) == sorted([fragment_id, strip_id]), timeout=5_000)


def _rings(geometry):
    return geometry["coordinates"] if geometry["type"] == "Polygon" else [r for p in geometry["coordinates"] for r in p]


def test_undo_redo_cover_accept_and_clear_and_escape_cancels(dock, qtbot):
    viewer = dock.viewer
    _accept_one(dock, qtbot)
    [obj_id] = dock.object_list.ids
    press(viewer, UNDO)  # undo Accept: the object leaves the layer and is being clicked again
    wait_idle(dock, qtbot)
    qtbot.waitUntil(lambda: dock.object_list.ids == [], timeout=5_000)
    assert len(dock.annotator.clicks) == 1
    assert dock.viewer.layers[CURRENT].data.any() and len(viewer.layers[CLICKS].data) == 1
    press(viewer, REDO)  # redo Accept
    wait_idle(dock, qtbot)
    qtbot.waitUntil(lambda: dock.object_list.ids == [obj_id], timeout=5_000)
    assert dock.annotator.clicks == []
    click(viewer, *STRIP)
    click(viewer, STRIP[0] + 30, STRIP[1], button=2)
    wait_idle(dock, qtbot)
    press(viewer, KeyCode.Escape)  # cancels the object being clicked, as in QuPath
    wait_idle(dock, qtbot)
    assert dock.annotator.clicks == [] and not viewer.layers[CURRENT].data.any()
    assert "Cleared" in dock.status.text() and "1 object on this slide" in dock.status.text()
    press(viewer, UNDO)  # undo Clear
    wait_idle(dock, qtbot)
    assert len(dock.annotator.clicks) == 2 and len(viewer.layers[CLICKS].data) == 2
    press(viewer, UNDO)  # then the clicks, one by one
    wait_idle(dock, qtbot)
    assert len(dock.annotator.clicks) == 1


def test_a_mask_painted_by_hand_is_the_object_accepted(dock, qtbot):
    import wrapt
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer = dock.viewer
    click(viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    current = viewer.layers[CURRENT]
    sam_pixels = int(current.data.sum())
    # paint a disc with napari's brush well away from the fragment, inside the object's tile
    viewer.layers.selection.active = current
    current.mode = "paint"
    current.brush_size = 40
    target = (FRAGMENT[0] - 300, FRAGMENT[1] + 250)
    for kind, dispatch in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        dispatch(current, wrapt.ObjectProxy(MouseEvent(kind, position=world(*target))))
    assert current.data.sum() > sam_pixels and "by hand" in dock.status.text()
    current.mode = "pan_zoom"
    press(viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
    [obj] = dock.objects()
    assert any(_contains(p, target) for p in obj.polygons)  # the painted part is in the object
    assert any(_contains(p, FRAGMENT) for p in obj.polygons)


def _contains(polygon, point) -> bool:
    from matplotlib.path import Path as MplPath

    return MplPath(polygon.exterior).contains_point(point)


def test_autosave_beside_the_slide_and_resume_on_reopening(make_napari_viewer, dock, qtbot, slide):
    _accept_one(dock, qtbot)
    qtbot.waitUntil(lambda: dock.last_autosave is not None and dock.last_autosave.done(), timeout=10_000)
    sidecar = slide.with_name(slide.name + ".sam-annotations.geojson")
    assert sidecar.exists() and len(json.loads(sidecar.read_text())["features"]) == 1
    [obj_id] = dock.object_list.ids
    dock.close_session(wait=True)

    def reopen_answering(answer: bool):
        again, asked = reopen(make_napari_viewer, qtbot, slide, answer)
        qtbot.waitUntil(lambda: again.autosave_path is not None, timeout=120_000)
        return again, asked

    resumed, asked = reopen_answering(True)
    qtbot.waitUntil(lambda: resumed.object_list.ids == [obj_id], timeout=5_000)
    assert asked and "Resume" in asked[0]
    resumed.close_session(wait=True)
    declined, asked = reopen_answering(False)
    assert asked and declined.object_list.ids == []
    kept = list(slide.parent.glob(slide.name + ".sam-annotations.*.geojson"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["features"][0]["id"] == obj_id  # set aside, not lost
    declined.close_session(wait=True)


def test_importing_a_file_already_loaded_adds_nothing(dock, qtbot, monkeypatch, tmp_path):
    _accept_one(dock, qtbot)
    collection = _export(dock, qtbot, monkeypatch, tmp_path / "objects.geojson")
    for feature in collection["features"]:
        feature.pop("id")  # as another tool might write it: no ids
    (tmp_path / "no-ids.geojson").write_text(json.dumps(collection))
    said, set_text = [], dock.status.setText
    monkeypatch.setattr(dock.status, "setText", lambda text: said.append(text) or set_text(text))
    for name in ("objects.geojson", "no-ids.geojson"):
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, name=name: (str(tmp_path / name), ""))
        said.clear()
        qtbot.mouseClick(dock.buttons["Import GeoJSON…"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: any(t.startswith(("Imported", "⚠")) for t in said), timeout=20_000)
        assert any("Imported 0 objects" in t for t in said), said
        assert len(dock.object_list.ids) == 1


def test_object_list_zooms_reclassifies_and_deletes(dock, qtbot):
    _accept_one(dock, qtbot)
    _accept_one(dock, qtbot, at=STRIP)
    table = dock.object_list.table
    assert table.rowCount() == 2 and table.item(0, 0).text() == "Tumor"
    assert table.item(0, 1).text().endswith("µm²") and table.item(0, 2).text() == "1" and table.item(0, 3).text() == "vit_t"
    table.selectRow(1)  # the strip: the view goes to it
    cy, cx = dock.view.camera.center[-2:]
    [strip] = [o for o in dock.objects() if o.id == dock.object_list.ids[1]]
    x0, y0, x1, y1 = np.array([p.bounds() for p in strip.polygons]).T
    assert x0.min() * MPP <= cx <= x1.max() * MPP and y0.min() * MPP <= cy <= y1.max() * MPP
    dock.class_combo.setCurrentText("Stroma")
    qtbot.mouseClick(dock.object_list.class_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: table.item(1, 0).text() == "Stroma", timeout=5_000)
    shapes = dock.viewer.layers[ANNOTATIONS]
    rows = [i for i, v in enumerate(shapes.features["id"]) if v == strip.id]
    assert np.allclose(shapes.edge_color[rows[0], :3], [c / 255 for c in dock.classes["Stroma"]])
    qtbot.mouseClick(dock.object_list.delete_button, Qt.MouseButton.LeftButton)
    assert "Deleted 1 object" in dock.status.text()
    qtbot.waitUntil(lambda: table.rowCount() == 1, timeout=5_000)
    press(dock.viewer, UNDO)
    qtbot.waitUntil(lambda: table.rowCount() == 2, timeout=5_000)


def test_accepted_geometry_is_cleaned_and_shown_as_saved(dock, qtbot):
    assert dock.min_area_spin.suffix() == " µm²" and dock.min_area_spin.value() == 10.0
    click(dock.viewer, *STRIP)
    wait_idle(dock, qtbot)
    raw = dock.annotator.current_polygons()
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: dock.pending == 0 and len(dock.object_list.ids) == 1, timeout=60_000)
    [obj] = dock.objects()
    minimum = 10.0 / MPP ** 2
    areas = sorted(polygon_area(p) for p in obj.polygons)
    assert all(a >= minimum for a in areas[:-1])
    holes = [h for p in obj.polygons for h in p.holes]
    assert all(polygon_area(type(obj.polygons[0])(h)) >= minimum for h in holes)
    assert len(obj.polygons) <= len(raw)
    assert len(dock.viewer.layers[ANNOTATIONS].data) == len(obj.polygons)  # one shape per part on screen


def test_sources_are_reused_and_everything_bound_is_taken_back(dock, qtbot, monkeypatch):
    viewer = dock.viewer
    hooks = dock.canvas_input
    assert hooks.on_mouse in viewer.mouse_drag_callbacks
    assert any(f.__qualname__.startswith("CanvasInput") for f in viewer.keymap.values())  # Enter, Escape, Ctrl-Z …
    dock.shutdown()
    assert hooks.on_mouse not in viewer.mouse_drag_callbacks
    assert hooks.on_double_click not in viewer.mouse_double_click_callbacks
    assert not hooks.connections and not hooks.bound
    assert not any(getattr(f, "__qualname__", "").startswith("CanvasInput") for f in viewer.keymap.values())
    for layer in (viewer.layers[CURRENT], viewer.layers[CLICKS]):
        assert not layer.keymap
    closed = []
    monkeypatch.setattr(dock.source, "close", lambda: closed.append(True))
    dock.close_session()
    assert dock.source is None
    # closed once the stopped annotator's threads (clicks, prefetch, adaptation) have ended
    qtbot.waitUntil(lambda: bool(closed), timeout=10_000)


def test_an_image_of_another_reader_is_refused_not_loaded(dock, qtbot):
    viewer = dock.viewer
    levels = [np.zeros((4096, 4096, 3), np.uint8), np.zeros((2048, 2048, 3), np.uint8)]
    viewer.add_image(levels, multiscale=True, rgb=True, name="other reader")
    dock.layer_combo.setCurrentText("other reader")
    old = dock.annotator
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    assert dock.status.text().startswith("⚠") and "another reader" in dock.status.text()
    assert dock.annotator is old


def test_buttons_before_start_say_what_to_do(make_napari_viewer, qtbot, slide):
    viewer = make_napari_viewer()
    widget = AnnotatorDock(viewer)
    viewer.window.add_dock_widget(widget)
    for name in ("Undo", "Redo", "Clear", "Accept", "Export GeoJSON…", "Export TIFF…", "Import GeoJSON…"):
        widget.status.setText("")
        qtbot.mouseClick(widget.buttons[name], Qt.MouseButton.LeftButton)
        assert widget.status.text() == NOT_STARTED, name
    assert widget.min_area_spin.suffix() == " px²"  # no slide yet
    viewer.open(str(slide), plugin="napari-sam-histo")
    assert widget.min_area_spin.suffix() == " µm²" and widget.min_area_spin.value() == 10.0  # before Start


def test_status_speaks_in_magnification_and_save_dialogs_suggest_a_name(dock, qtbot, monkeypatch, tmp_path, slide):
    said, set_text = [], dock.status.setText
    monkeypatch.setattr(dock.status, "setText", lambda text: said.append(text) or set_text(text))
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    computing = [t for t in said if t.startswith("Computing")]
    assert computing and "x (0.50 µm/px)" in computing[0] and "511×511 µm" in computing[0]
    assert not [t for t in said if "L0:" in t]  # no tile keys
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
    seen = []
    _answer_save_dialog(monkeypatch, tmp_path / "labels", seen)
    qtbot.mouseClick(dock.buttons["Export TIFF…"], Qt.MouseButton.LeftButton)
    assert seen == [str(slide.with_name("cmu-1-small-region-labels.ome.tif"))]  # never the slide's own name
    qtbot.waitUntil(lambda: (tmp_path / "labels.ome.tif").exists(), timeout=30_000)  # the extension is added


def test_start_waits_for_running_clicks_and_takes_no_clicks_while_loading(dock, answers, qtbot):
    click(dock.viewer, *FRAGMENT)  # its embedding takes seconds: the click is still running
    assert dock.pending == 1
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    assert "Wait until" in dock.status.text()
    wait_idle(dock, qtbot)
    old = dock.annotator
    answers.answer = True
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    assert not dock.start_button.isEnabled()
    click(dock.viewer, *STRIP)  # while the new settings load: refused, said, nothing queued
    assert "Loading the new settings" in dock.status.text() and dock.pending == 0 and len(old.clicks) == 1
    qtbot.waitUntil(lambda: dock.annotator is not None and dock.annotator is not old, timeout=120_000)
    assert dock.start_button.isEnabled()


def test_removing_the_dock_saves_closes_and_takes_everything_back(dock, qtbot, monkeypatch, slide):
    viewer = dock.viewer
    closed = []
    monkeypatch.setattr(dock.source, "close", lambda: closed.append(True))
    _accept_one(dock, qtbot)
    click(viewer, *STRIP)  # an object being clicked when the dock goes
    wait_idle(dock, qtbot)
    viewer.window.remove_dock_widget(dock)  # what napari's close button on the dock does
    qtbot.waitUntil(lambda: bool(closed), timeout=30_000)
    assert dock.canvas_input.on_mouse not in viewer.mouse_drag_callbacks and not dock.canvas_input.bound
    # the dock's working layers go with it (the live object is on disk); the accepted objects stay
    assert not any(name in viewer.layers for name in (CURRENT, TILES, CLICKS)) and ANNOTATIONS in viewer.layers
    sidecar = slide.with_name(slide.name + ".sam-annotations.geojson")
    assert len(json.loads(sidecar.read_text())["features"]) == 1


def test_a_shape_drawn_by_hand_is_an_object_of_its_own(dock, qtbot):
    from napari_sam_histo._napari.annotation_layer import rows_of

    shapes = dock.viewer.layers[ANNOTATIONS]
    shapes.add_polygons([np.array([[100.0, 100.0], [100.0, 300.0], [300.0, 300.0], [300.0, 100.0]])])  # as drawn
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=5_000)
    [obj_id] = dock.object_list.ids
    assert rows_of(shapes, obj_id) == [0] and dock.object_list.table.item(0, 3).text() == "by hand"
    dock.object_list.table.selectRow(0)
    qtbot.mouseClick(dock.object_list.delete_button, Qt.MouseButton.LeftButton)
    assert "Deleted 1 object" in dock.status.text() and not len(shapes.data)


def test_deleting_a_layer_the_dock_draws_on_stops_annotating_and_says_so(dock, qtbot):
    dock.viewer.layers.remove(CLICKS)
    assert dock.annotator is None and "was deleted" in dock.status.text()
    click(dock.viewer, *FRAGMENT)  # the dock no longer listens to the canvas
    assert "was deleted" in dock.status.text() and not dock.pending


def test_the_dock_stays_usable_when_layers_go_while_it_works(dock, answers, qtbot):
    answers.answer = True
    click(dock.viewer, *FRAGMENT)  # still running when the user deletes the clicks layer
    dock.viewer.layers.remove(CLICKS)
    assert dock.pending == 0
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.annotator is not None, timeout=120_000)
    assert CLICKS in dock.viewer.layers  # made again
    image = dock.image_layer
    qtbot.mouseClick(dock.start_button, Qt.MouseButton.LeftButton)
    dock.viewer.layers.remove(image)  # while the new settings load
    qtbot.waitUntil(lambda: dock.start_button.isEnabled() and not dock.session.starting, timeout=120_000)
    assert dock.annotator is None and dock.status.text().startswith("⚠") and "removed" in dock.status.text()

"""The object being clicked survives a quit (Xvfb, real MobileSAM, real clicks and keys): it is kept
beside the slide while it changes, gone once accepted, and offered back at the next Start."""

import json

import pytest
from app_model.types import KeyCode

pytest.importorskip("napari")


from ..annotator_gui import FRAGMENT, click, press, reopen, wait_idle  # noqa: E402


def _live_file(slide):
    return slide.with_name(slide.name + ".sam-annotations.live.geojson")


def test_the_object_being_clicked_is_kept_on_quit_and_offered_back(make_napari_viewer, dock, qtbot, slide):
    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    live = _live_file(slide)
    qtbot.waitUntil(live.exists, timeout=10_000)
    [feature] = json.loads(live.read_text())["features"]
    assert feature["properties"]["napari-sam-histo"]["unaccepted"] is True
    dock.close_session(wait=True)  # napari quits with the object not accepted
    assert live.exists()

    again, asked = reopen(make_napari_viewer, qtbot, slide)
    viewer = again.viewer
    try:
        qtbot.waitUntil(lambda: len(again.object_list.ids) == 1, timeout=120_000)
        assert any("not accepted yet" in q for q in asked)
        [obj] = again.objects()
        assert obj.clicks == 1
        qtbot.waitUntil(lambda: not live.exists(), timeout=10_000)  # taken in: not offered twice
        # a new object is kept while clicked and gone once accepted
        click(viewer, 600, 1040)
        wait_idle(again, qtbot)
        qtbot.waitUntil(live.exists, timeout=10_000)
        press(viewer, KeyCode.Enter)
        qtbot.waitUntil(lambda: len(again.object_list.ids) == 2, timeout=60_000)
        qtbot.waitUntil(lambda: not live.exists(), timeout=10_000)
    finally:
        again.close_session(wait=True)

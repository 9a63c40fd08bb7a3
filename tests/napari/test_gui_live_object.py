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


def test_the_earlier_objects_are_offered_before_the_object_being_clicked(make_napari_viewer, dock, qtbot, slide,
                                                                        monkeypatch):
    """Both an accepted object and one being clicked were kept: at the next Start the accepted
    objects are offered first, then the unaccepted one, even when the accepted ones take longer to
    read; both are added."""
    from napari_sam_histo.annotations import autosave

    click(dock.viewer, *FRAGMENT)
    wait_idle(dock, qtbot)
    press(dock.viewer, KeyCode.Enter)
    qtbot.waitUntil(lambda: len(dock.object_list.ids) == 1, timeout=60_000)
    click(dock.viewer, 600, 1040)
    wait_idle(dock, qtbot)
    qtbot.waitUntil(_live_file(slide).exists, timeout=10_000)
    dock.close_session(wait=True)

    load = autosave.load

    def slow_sidecar(path, *args, **kwargs):
        if not str(path).endswith(".live.geojson"):
            import time

            time.sleep(1.0)  # the accepted objects' file is read last
        return load(path, *args, **kwargs)

    monkeypatch.setattr(autosave, "load", slow_sidecar)
    again, asked = reopen(make_napari_viewer, qtbot, slide)
    try:
        qtbot.waitUntil(lambda: len(again.object_list.ids) == 2, timeout=120_000)
        assert len(asked) == 2 and "Resume them?" in asked[0] and "not accepted yet" in asked[1]
    finally:
        again.close_session(wait=True)

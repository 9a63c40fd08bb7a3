"""napari GUI test (Xvfb via pytest-xvfb; Qt's offscreen platform cannot render napari)."""

import pytest

pytest.importorskip("napari")


def test_sample_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam-histo", "cmu1_region")
    [layer] = viewer.layers
    assert layer.name == "CMU-1 small region" and layer.rgb
    assert layer.data.shape == (2967, 2220, 3)
    screenshot = viewer.screenshot(canvas_only=True)
    assert screenshot.std() > 5  # the canvas really drew the slide


def test_slide_opens_through_our_reader(make_napari_viewer):
    from ..conftest import SAMPLE_SLIDE

    viewer = make_napari_viewer()
    [layer] = viewer.open(str(SAMPLE_SLIDE), plugin="napari-sam-histo")
    assert layer.rgb and layer.metadata["identity"].startswith("slide:")
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert viewer.screenshot(canvas_only=True).std() > 5


def test_slide_overview_is_read_in_the_background_and_then_drawn(make_napari_viewer, qtbot, monkeypatch):
    """napari slices a new layer's coarsest level on its GUI thread: ours is read on a thread
    (white until then), and the layer is redrawn once it is complete."""
    import threading

    import numpy as np

    from napari_sam_histo.slides.background_level import BackgroundLevel

    from ..conftest import SAMPLE_SLIDE

    release = threading.Event()
    read = BackgroundLevel._read

    def held_read(self, source):
        release.wait(30)
        read(self, source)

    monkeypatch.setattr(BackgroundLevel, "_read", held_read)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(SAMPLE_SLIDE), plugin="napari-sam-histo")  # returns while the read is held
    overview = layer.data[-1]
    assert isinstance(overview, BackgroundLevel) and not overview.done.is_set()
    before = layer.thumbnail.copy()
    centre = before[8:24, 12:20, :3]  # inside the slide's part of the (padded) thumbnail
    assert np.all(centre == 255)  # white: nothing read yet
    release.set()
    # redrawn with the slide's pixels once read
    qtbot.waitUntil(lambda: layer.thumbnail[8:24, 12:20, :3].std() > 5, timeout=20000)
    assert overview.error is None

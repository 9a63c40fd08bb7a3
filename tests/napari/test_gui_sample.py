"""napari GUI test (Xvfb via pytest-xvfb; Qt's offscreen platform cannot render napari)."""

import pytest

from napari_sam_histo._napari.annotator.view import camera

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


def test_slide_chunks_are_read_in_the_background_and_then_drawn(make_napari_viewer, qtbot, monkeypatch):
    """napari slices a layer's chunks in view on its GUI thread: ours answer at once (white until
    read, on threads), and the layer is redrawn as they arrive."""
    import threading

    import numpy as np

    from napari_sam_histo.slides.progressive_level import ChunkReader, ProgressiveLevel

    from ..conftest import SAMPLE_SLIDE

    release = threading.Event()
    work = ChunkReader._work

    def held_work(self):
        release.wait(30)
        work(self)

    monkeypatch.setattr(ChunkReader, "_work", held_work)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(SAMPLE_SLIDE), plugin="napari-sam-histo")  # returns while every read is held
    overview = layer.data[-1]
    assert isinstance(overview, ProgressiveLevel) and not overview.reader.idle()
    before = layer.thumbnail.copy()
    centre = before[8:24, 12:20, :3]  # inside the slide's part of the (padded) thumbnail
    assert np.all(centre == 255)  # white: nothing read yet
    release.set()
    # redrawn with the slide's pixels once read
    qtbot.waitUntil(lambda: layer.thumbnail[8:24, 12:20, :3].std() > 5, timeout=20000)
    assert overview.reader.errors == []
    # a zoomed-in view asks for level-0 chunks: drawn once read, without the test asking for them
    camera(viewer).zoom, camera(viewer).center = 8 * camera(viewer).zoom, (0, 700, 500)
    qtbot.waitUntil(lambda: overview.reader.idle() and viewer.screenshot(canvas_only=True).std() > 5, timeout=20000)
    # the layer deleted: its reader stops and drops its chunks
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: overview.reader.closed, timeout=5000)

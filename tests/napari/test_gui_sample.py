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

"""napari reader: slides and pyramidal (OME-)TIFFs open as lazy multiscale images (``slides.lazy``),
plain images whole (``slide_layer_data``). The coarsest level of a multiscale slide is read on a
background thread (``slides.background_level``) and the layer redrawn when it is complete, so
opening a slide never waits for its overview.
"""

from __future__ import annotations

from pathlib import Path

from ..slides.reader import PLAIN_SUFFIXES, SLIDE_SUFFIXES


def get_reader(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    suffix = Path(str(path)).suffix.lower()
    if suffix not in SLIDE_SUFFIXES + PLAIN_SUFFIXES or Path(str(path)).is_dir():
        return None
    return read_image


def read_image(path):
    from ..slides.background_level import BackgroundLevel
    from .overview_refresh import refresh_when_read
    from .slide_layer_data import slide_layer_data

    layers = slide_layer_data(path)
    for data, kwargs, _ in layers:
        if kwargs["multiscale"] and isinstance(data[-1], BackgroundLevel):
            refresh_when_read(data[-1])
    return layers

"""napari reader: slides and pyramidal (OME-)TIFFs open as multiscale images read chunk by chunk,
plain images whole (``slide_layer_data``). The levels of a multiscale slide are read on threads
(``slides.progressive_level``) and the layer is redrawn as their chunks arrive, so neither opening
a slide nor moving around it waits for a read.
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
    from ..slides.progressive_level import ProgressiveLevel
    from .chunk_refresh import refresh_as_read
    from .slide_layer_data import slide_layer_data

    layers = slide_layer_data(path)
    for data, kwargs, _ in layers:
        if kwargs["multiscale"] and isinstance(data[-1], ProgressiveLevel):
            refresh_as_read(data[-1].reader)
    return layers

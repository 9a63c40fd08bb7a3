"""Redraw a slide's layer as the chunks napari asked for arrive.

The reader hands napari ``ProgressiveLevel``s (white where a chunk is not read yet, read on
threads); a timer on the GUI thread watches their ``ChunkReader`` and refreshes the layers that show
it when chunks have arrived, so napari draws them without its GUI thread ever waiting for a read.
The timer stops, and the reader with it, once no layer of the current viewer shows the slide any
more.
"""

from __future__ import annotations

import time

from ..slides.progressive_level import ChunkReader, ProgressiveLevel

POLL_MS = 50
FIND_LAYER_S = 10.0  # a reader whose layer never appears (napari refused it) stops being watched


def refresh_as_read(reader: ChunkReader, poll_ms: int = POLL_MS) -> None:
    """Refresh the current viewer's layers showing ``reader``'s levels whenever it has read more;
    nothing to do without a running Qt application (a script reading slides)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    timer = QTimer(app)  # owned by the application until it stops itself
    timer.setInterval(poll_ms)
    state = {"drawn": -1, "seen": False, "started": time.monotonic()}

    def poll() -> None:
        layers = layers_showing(reader)
        if layers:
            state["seen"] = True
        elif state["seen"] or time.monotonic() - state["started"] > FIND_LAYER_S:
            timer.stop()
            timer.deleteLater()
            reader.close()  # the layer is gone: its reads and cached chunks with it
            return
        generation = reader.generation
        if generation != state["drawn"] and layers:
            state["drawn"] = generation
            for layer in layers:
                layer.refresh()

    timer.timeout.connect(poll)
    timer.start()


def layers_showing(reader: ChunkReader) -> list:
    import napari

    viewer = napari.current_viewer()
    return [] if viewer is None else [layer for layer in viewer.layers if reader in readers_of(layer)]


def readers_of(layer) -> set[ChunkReader]:
    """The chunk readers behind a multiscale image layer's levels (none for any other layer)."""
    from napari.layers import Image

    if not isinstance(layer, Image) or not layer.multiscale:
        return set()
    return {level.reader for level in layer.data if isinstance(level, ProgressiveLevel)}

"""Redraw a slide's layer once its overview, read in the background, is complete.

The reader hands napari the coarsest level as a ``BackgroundLevel`` (white until read); a timer on
the GUI thread polls it and refreshes the layers that show it, so napari's slicing and thumbnail
pick up the pixels without the GUI thread ever waiting for the read.
"""

from __future__ import annotations

from ..slides.background_level import BackgroundLevel

POLL_MS = 40


def refresh_when_read(level: BackgroundLevel, poll_ms: int = POLL_MS) -> None:
    """Refresh every layer of the current napari viewer whose coarsest level is ``level`` once the
    read has ended; nothing to do without a running Qt application (a script reading slides)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    timer = QTimer(app)  # owned by the application until it stops itself
    timer.setInterval(poll_ms)

    def poll() -> None:
        if not level.done.is_set():
            return
        timer.stop()
        timer.deleteLater()
        for layer in layers_showing(level):
            layer.refresh()

    timer.timeout.connect(poll)
    timer.start()


def layers_showing(level: BackgroundLevel) -> list:
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return []
    return [layer for layer in viewer.layers
            if isinstance(layer, napari.layers.Image) and layer.multiscale
            and any(data is level for data in layer.data)]

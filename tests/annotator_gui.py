"""Shared pieces of the Annotator dock's GUI tests: places on the sample slide, clicks and keys through
napari's own dispatch, the slide opened again. The fixtures (``slide``, the started ``dock``) are in
tests/napari/conftest.py."""

from dataclasses import dataclass, field

import numpy as np

from napari_sam_histo._napari.annotator.dock import AnnotatorDock

FRAGMENT = (2091, 615)  # a tissue fragment alone on the glass, level-0 (x, y)
STRIP = (500, 1040)  # a strip of stroma across the grid line y = 1024 (y 1005..1154), with a gap inside
GRID_LINE_Y = 1024
MPP = 0.499  # the slide's µm per level-0 pixel: world coordinates are level-0 pixels times this


def wait_idle(dock, qtbot, timeout=120_000):
    """Wait until every click and action queued on the dock has come back and been drawn."""
    qtbot.waitUntil(lambda: dock.pending == 0, timeout=timeout)


@dataclass
class MouseEvent:
    """The fields of a napari mouse event that its callbacks read."""

    type: str
    button: int = 1
    position: tuple = (0.0, 0.0)  # world
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))  # canvas pixels
    modifiers: list = field(default_factory=list)
    handled: bool = False
    is_dragging: bool = False
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    delta: tuple | None = None
    native: object = None


def send_mouse(viewer, kind, **kwargs):
    """Send a mouse event through napari's own dispatch (as its tests do)."""
    import wrapt
    from napari.utils.interactions import (
        mouse_double_click_callbacks,
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    event = wrapt.ObjectProxy(MouseEvent(kind, **kwargs))
    {"mouse_press": mouse_press_callbacks, "mouse_move": mouse_move_callbacks,
     "mouse_release": mouse_release_callbacks, "mouse_double_click": mouse_double_click_callbacks}[kind](viewer, event)


def world(x0: float, y0: float) -> tuple[float, float]:
    """napari world coordinates (row, col in µm) of level-0 pixel (x0, y0)."""
    return (y0 * MPP, x0 * MPP)


def click(viewer, x0: float, y0: float, button: int = 1, modifiers=()) -> None:
    """A user's click (press and release in place) at level-0 (x0, y0)."""
    at = np.array([100.0, 100.0])
    for kind in ("mouse_press", "mouse_release"):
        send_mouse(viewer, kind, position=world(x0, y0), pos=at, button=button, modifiers=list(modifiers))


def click_image(dock, x0: float, y0: float, button: int = 1) -> None:
    """A user's click at level-0 (x0, y0) of the annotated image, whatever its scale."""
    position = tuple(dock.image_layer.data_to_world((y0, x0)))
    for kind in ("mouse_press", "mouse_release"):
        send_mouse(dock.viewer, kind, position=position, pos=np.array([100.0, 100.0]), button=button)


def press(viewer, key: int) -> None:
    """A key press and release on the canvas, through napari's key map (as the canvas sends them)."""
    from app_model.types import KeyBinding

    handler = viewer.window._qt_viewer._key_map_handler
    binding = KeyBinding.from_int(key)
    handler.press_key(binding)
    handler.release_key(binding)


def reopen(make_napari_viewer, qtbot, slide, answer: bool = True, before_start=None):
    """The slide opened again in a new napari, the Annotator dock added and Start pressed (CPU, no
    prefetching); every question the dock asks is answered ``answer`` and recorded. Returns the dock
    (not yet started: wait for what the test needs) and the questions asked."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-sam-histo")
    asked = []
    again = AnnotatorDock(viewer, confirm=lambda question: asked.append(question) or answer)
    viewer.window.add_dock_widget(again)
    again.device_combo.setCurrentText("cpu")
    again.prefetch_check.setChecked(False)
    if before_start is not None:
        before_start(again)
    qtbot.mouseClick(again.start_button, Qt.MouseButton.LeftButton)
    return again, asked

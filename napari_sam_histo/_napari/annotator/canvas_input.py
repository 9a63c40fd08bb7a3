"""Everything the dock hooks into napari while annotating, in one place, and taken back on release:
the mouse (a click is a press and release without moving), the keys, and napari's events.

* A click is a press and release without moving (more than ``CLICK_SLOP`` screen pixels) while the
  active layer is in pan/zoom mode: dragging still pans (left), zooms (right) and draws napari's Alt
  zoom box, and a layer being edited by hand (drawing shapes, painting labels) keeps its clicks.
* Left click: positive point. Right click, or Alt + left click: negative point. The second click of
  a quick double click counts too (vispy reports it only as a double click), and napari's
  double-click zoom is switched off while annotating so two clicks in the same place do not zoom.
* Enter: accept; Escape: cancel the object being clicked (as in QuPath); Ctrl-Z / Ctrl-Shift-Z
  (Cmd on macOS): undo / redo. They are bound on the viewer and again on the working layers
  (Labels binds Ctrl-Z / Ctrl-Shift-Z and Enter itself, and napari asks the active layer first).
  Every key bound is given back to napari's own binding on release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLICK_SLOP = 4  # screen pixels a press may move and still be a click, not a drag
# the dock's help line
BINDINGS = ("Left click: positive point · right click or Alt+click: negative · Enter: accept · Escape: cancel "
            "the object · Ctrl-Z / Ctrl-Shift-Z: undo / redo (clicks act while the active layer is in pan/zoom "
            "mode) · paint on 'SAM current object' to correct by hand")


@dataclass(frozen=True)
class KeyActions:
    """What the annotating keys do."""

    accept: Callable[[], None]
    cancel: Callable[[], None]
    undo: Callable[[], None]
    redo: Callable[[], None]


def negative(event) -> bool:
    """Right click, or Alt + left click."""
    return event.button == 2 or "Alt" in {str(m) for m in event.modifiers}


class CanvasInput:
    def __init__(self, viewer, on_click: Callable[[tuple, bool], None]) -> None:
        """``on_click(world_position, negative)`` for every click on the canvas while attached."""
        self.viewer = viewer
        self.on_click = on_click
        self.bound: list[tuple[object, object, object]] = []  # (target, key, napari's own binding)
        self.connections: list[tuple[object, object]] = []  # (event emitter, callback) to disconnect
        self._double_click_zoom = None  # napari's, removed while annotating
        self._pressing = False
        self._attached = False

    def connect(self, emitter, callback) -> None:
        """Connect ``callback`` to a napari event until ``release``."""
        emitter.connect(callback)
        self.connections.append((emitter, callback))

    def attach(self, key_targets, actions: KeyActions) -> None:
        """Take clicks on the canvas and the keys on ``key_targets`` (the viewer and layers)."""
        self.viewer.mouse_drag_callbacks.append(self.on_mouse)
        self.viewer.mouse_double_click_callbacks.append(self.on_double_click)
        from napari.components._viewer_mouse_bindings import double_click_to_zoom

        if double_click_to_zoom in self.viewer.mouse_double_click_callbacks:
            self.viewer.mouse_double_click_callbacks.remove(double_click_to_zoom)
            self._double_click_zoom = double_click_to_zoom
        self._bind_keys(key_targets, actions)
        self._attached = True

    def _bind_keys(self, targets, actions: KeyActions) -> None:
        from app_model.types import KeyCode, KeyMod

        bindings = ((KeyCode.Enter, lambda _: actions.accept()),
                    (KeyCode.Escape, lambda _: actions.cancel()),
                    (KeyMod.CtrlCmd | KeyCode.KeyZ, lambda _: actions.undo()),
                    (KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ, lambda _: actions.redo()))
        for target in targets:
            for key, action in bindings:
                previous = target.bind_key(key, action, overwrite=True)
                self.bound.append((target, key, previous))

    def release(self) -> None:
        """Give back every event, key and mouse callback taken (napari's own bindings return)."""
        self._attached = False
        for emitter, callback in self.connections:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        self.connections.clear()
        for target, key, previous in reversed(self.bound):
            target.bind_key(key, previous if callable(previous) else None, overwrite=True)
        self.bound.clear()
        for callbacks, callback in ((self.viewer.mouse_drag_callbacks, self.on_mouse),
                                    (self.viewer.mouse_double_click_callbacks, self.on_double_click)):
            while callback in callbacks:
                callbacks.remove(callback)
        if self._double_click_zoom is not None:
            if self._double_click_zoom not in self.viewer.mouse_double_click_callbacks:
                self.viewer.mouse_double_click_callbacks.append(self._double_click_zoom)
            self._double_click_zoom = None

    def _clicks_enabled(self) -> bool:
        active = self.viewer.layers.selection.active
        return self._attached and (active is None or active.mode == "pan_zoom")

    def on_mouse(self, viewer, event):
        """A press and release without moving is a click; anything else is napari's drag."""
        if event.type != "mouse_press" or event.button not in (1, 2) or not self._clicks_enabled():
            return
        press, position, is_negative = np.asarray(event.pos, float), tuple(event.position), negative(event)
        self._pressing = True
        try:
            yield
            while event.type == "mouse_move":
                if np.abs(np.asarray(event.pos, float) - press).max() > CLICK_SLOP:
                    return  # a drag: pan, zoom or napari's Alt zoom box
                yield
        finally:
            self._pressing = False
        if np.abs(np.asarray(event.pos, float) - press).max() <= CLICK_SLOP:
            self.on_click(position, is_negative)

    def on_double_click(self, viewer, event):
        """vispy reports the second press of a double click only as a double click."""
        if self._pressing or event.button not in (1, 2) or not self._clicks_enabled():
            return
        self.on_click(tuple(event.position), negative(event))

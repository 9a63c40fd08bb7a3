"""The layers the dock draws the object being clicked on, made once and reused by every Start:
*SAM current object* (Labels: the mask, which the user may paint on), *SAM tiles* (Shapes: the
tiles the object uses) and *SAM clicks* (Points). Each change of a layer costs napari a redraw, so
only what differs is set."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from ...coordinates import corner_translate, mask_translate
from ..annotation_layer import rgba

CLICKS, CURRENT, TILES = "SAM clicks", "SAM current object", "SAM tiles"
NAMES = (CURRENT, TILES, CLICKS)


class WorkingLayers:
    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.made = False  # every layer exists (a later deletion stops annotating)
        # SAM's mask as last drawn: (top-left, mask, downsample), to tell a mask painted by hand
        self.drawn: tuple[tuple[int, int], np.ndarray, float] | None = None
        self.drawn_boxes: tuple = ()  # the tiles outlined in the tiles layer

    @property
    def current(self):
        return self.viewer.layers[CURRENT]

    @property
    def clicks(self):
        return self.viewer.layers[CLICKS]

    def present(self) -> list[str]:
        """The names of the layers that exist now."""
        return [name for name in NAMES if name in self.viewer.layers]

    def missing(self) -> list[str]:
        """The names of the layers deleted since they were made."""
        return [name for name in NAMES if self.made and name not in self.viewer.layers]

    def make(self, scale, units: dict, downsample: float):
        """Create (once, one per step: napari repaints between them) and reset the layers."""
        layers = self.viewer.layers
        if CURRENT not in layers:
            self.viewer.add_labels(np.zeros((1, 1), np.uint8), name=CURRENT, opacity=0.5, **units)
            yield
        if TILES not in layers:
            self.viewer.add_shapes(name=TILES, opacity=0.7, **units)
            yield
        if CLICKS not in layers:
            points = self.viewer.add_points(np.zeros((0, 2)), name=CLICKS, size=12, border_color="white", **units)
            points.canvas_size_limits = (10, 40)  # visible at any zoom of a large slide
            yield
        current, tiles, points = layers[CURRENT], layers[TILES], layers[CLICKS]
        current.data = np.zeros((1, 1), np.uint8)
        tiles.data, tiles.edge_width = [], 2 * downsample
        points.data = np.zeros((0, 2))
        for layer in (tiles, points):  # level-0 corner coordinates (``coordinates``)
            if not np.allclose(layer.scale[-2:], scale):
                layer.scale = scale
            if not np.allclose(layer.translate[-2:], corner_translate(scale)):
                layer.translate = corner_translate(scale)
        self.drawn, self.drawn_boxes = None, ()

    def forget(self) -> None:
        """Annotating stopped: tiles still to be drawn for it are not drawn."""
        self.drawn_boxes = None

    def remove(self) -> None:
        """The dock is gone: its layers go too (the object being clicked is on disk, and the next
        Start offers it back), so nothing left on screen looks like accepted work."""
        for name in self.present():
            self.viewer.layers.remove(name)
        self.made, self.drawn, self.drawn_boxes = False, None, ()

    def finish(self) -> None:
        """Every layer is made: the brush paints the object, the eraser removes from it."""
        self.made = True
        self.current.selected_label = 1

    def colour(self, color) -> None:
        """The object being clicked in the class's colour."""
        from napari.utils.colormaps import DirectLabelColormap

        if CURRENT in self.viewer.layers:
            self.current.colormap = DirectLabelColormap(color_dict={None: np.zeros(4), 0: np.zeros(4), 1: rgba(color)})

    def add_click(self, x0: float, y0: float, positive: bool) -> None:
        """A click drawn at once; the mask follows when the decoder has run."""
        points = self.clicks
        points.selected_data = set()  # napari recolours the selected points with the current colour
        points.current_face_color = "green" if positive else "red"
        points.add([[y0, x0]])

    def draw(self, state, image_scale) -> None:
        """Draw an ``AnnotatorState``: its clicks, its mask (at its finest level) and, in the next
        event-loop turn (napari repaints first), its tiles."""
        self._draw_clicks(state.clicks)
        current = self.current
        d = state.downsample  # the object's finest level (its tiles may be at several)
        if state.mask is None:
            if current.data.shape != (1, 1) or current.data.any():
                current.data = np.zeros((1, 1), np.uint8)
            self.drawn = None
        else:
            (x, y), mask = state.mask
            sy, sx = image_scale[-2:]
            scale, translate = (d * sy, d * sx), mask_translate(x, y, d, (sy, sx))
            if not np.allclose(current.scale, scale):  # each transform change redraws the layer
                current.scale = scale
            if not np.allclose(current.translate, translate):
                current.translate = translate
            current.data = mask.astype(np.uint8)
            self.drawn = ((x, y), mask.copy(), d)
        if state.boxes != self.drawn_boxes:
            self.drawn_boxes = state.boxes
            QTimer.singleShot(0, lambda: self._draw_tiles(state.boxes))

    def _draw_tiles(self, boxes) -> None:
        if boxes != self.drawn_boxes or TILES not in self.viewer.layers:
            return  # other tiles were drawn meanwhile, or annotating stopped
        tiles = self.viewer.layers[TILES]
        tiles.data = []
        if boxes:
            tiles.add_rectangles([np.array([[b.y, b.x], [b.y + b.height, b.x + b.width]], float) * b.downsample
                                  for b in boxes], edge_color="yellow", face_color="transparent",
                                 edge_width=2 * min(b.downsample for b in boxes))

    def _draw_clicks(self, clicks) -> None:
        """The clicks layer shows ``clicks`` (already drawn at click time: only fix what differs)."""
        points = self.clicks
        data = np.array([[y, x] for x, y, _ in clicks], float).reshape(-1, 2)
        colors = ["green" if c[2] else "red" for c in clicks]
        if len(points.data) == len(data) and np.allclose(points.data, data):
            return
        points.selected_data = set()
        points.data = data
        if colors:  # each property set is one more napari event (and repaint)
            points.face_color = colors

    def edited_mask(self):
        """The *SAM current object* labels when painted by hand since SAM drew them
        ((top-left, mask, downsample), as ``Annotator.accept`` takes it), else None."""
        if CURRENT not in self.viewer.layers or self.drawn is None:
            return None
        (x, y), drawn, d = self.drawn
        data = np.asarray(self.current.data)
        if data.shape != drawn.shape or np.array_equal(data > 0, drawn):
            return None
        return (x, y), data > 0, d

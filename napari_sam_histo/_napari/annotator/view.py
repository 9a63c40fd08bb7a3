"""The view the user annotates in: its level-0 box (the annotator grows and accepts only what the
user sees), its working level, moving it onto a box, and the working layers kept above images
opened later. napari 0.9 moved the camera and canvas size (``viewer.scene``, ``viewer.canvas``);
older napari is read the old way here, and only here."""

from __future__ import annotations

import numpy as np

from ...coordinates import napari_to_level0


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer) -> tuple[float, float]:
    """(height, width) of the canvas in screen pixels."""
    canvas = getattr(viewer, "canvas", None)  # napari 0.9; older: the viewer's _canvas_size
    size = getattr(canvas, "size", None) if canvas is not None else None
    return size if size is not None else getattr(viewer, "_canvas_size", (1000, 1000))


class View:
    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.image_layer = None  # the slide being annotated

    @property
    def camera(self):
        return camera(self.viewer)

    def extent(self) -> tuple[float, float]:
        """The view's (width, height) in level-0 pixels of the slide being annotated."""
        height, width = canvas_size(self.viewer)
        zoom = max(float(self.camera.zoom), 1e-9)  # screen pixels per world unit
        sy, sx = (float(v) for v in self.image_layer.scale[-2:])  # world units per level-0 pixel
        return width / (zoom * sx), height / (zoom * sy)

    def center0(self) -> tuple[float, float]:
        """The level-0 (x, y) at the view's centre."""
        row, col = self.image_layer.world_to_data(self.camera.center[-2:])[-2:]
        return napari_to_level0(col, row)

    def box(self) -> tuple[float, float, float, float]:
        """The level-0 box (x0, y0, x1, y1) on screen now."""
        width, height = self.extent()
        x, y = self.center0()
        return x - width / 2, y - height / 2, x + width / 2, y + height / 2

    def level0(self, world_position) -> tuple[float, float]:
        """The level-0 (x, y) of a world position on the canvas."""
        row, col = self.image_layer.world_to_data(world_position)[-2:]
        return napari_to_level0(col, row)

    def fit(self, x0: float, y0: float, x1: float, y1: float, fill: float = 0.8) -> None:
        """Centre the view on a level-0 box and zoom so that it fills ``fill`` of the canvas."""
        sy, sx = self.image_layer.scale[-2:]
        self.camera.center = ((y0 + y1) / 2 * sy, (x0 + x1) / 2 * sx)
        extent = np.array([max((y1 - y0) * sy, 1e-6), max((x1 - x0) * sx, 1e-6)])  # (rows, cols), as napari
        canvas = getattr(self.viewer, "canvas", None)
        if canvas is not None and hasattr(canvas, "viewbox_size"):
            view = np.asarray(canvas.viewbox_size(self.viewer.layers), float)[-2:]
        else:  # napari < 0.9
            view = np.asarray(self.viewer.window._qt_viewer.canvas.size, float)[::-1]
        self.camera.zoom = fill * float(np.min(view / extent))

    def keep_on_top(self, ours) -> None:
        """Move every image layer that lies above one of ``ours`` (the annotator's layers) just
        below them, so the clicks, the object being clicked and the accepted objects stay visible."""
        from napari.layers import Image

        layers = self.viewer.layers
        ours = [layer for layer in ours if layer is not None and layer in layers]
        if not ours:
            return
        while True:
            lowest = min(layers.index(layer) for layer in ours)
            above = [i for i, layer in enumerate(layers) if i > lowest and isinstance(layer, Image)]
            if not above:
                return
            layers.move(above[0], lowest)

    def show_slide(self, image, ours) -> None:
        """The slide annotation starts on is shown: visible, above every other image layer, and
        below ``ours`` (what the user sees is what the clicks go to)."""
        from napari.layers import Image

        layers = self.viewer.layers
        image.visible = True
        others = [i for i, layer in enumerate(layers) if isinstance(layer, Image) and layer is not image]
        if others and layers.index(image) < max(others):
            layers.move(layers.index(image), max(others) + 1)  # an insertion point: lands just above it
        self.keep_on_top(ours)


def level_text(annotator, source, downsample: float | None = None) -> str:
    """A working level as a user reads it: magnification (or downsample) and µm per pixel; with
    "auto", that the level follows the view."""
    from ...engine.working_levels import describe_downsample

    d = annotator.grid.downsample if downsample is None else downsample
    text = describe_downsample(d, source.mpp)
    return f"{text}, following the view (auto)" if annotator.auto and downsample is None else text


def tile_text(annotator, source, box) -> str:
    """A tile as a user reads it: its size in pixels at its level, and in µm."""
    mpp, d = source.mpp, box.downsample
    size = f"{box.width}×{box.height} px tile at {level_text(annotator, source, d)}"
    return size + (f", {box.width * d * mpp[0]:.0f}×{box.height * d * mpp[1]:.0f} µm" if mpp else "")

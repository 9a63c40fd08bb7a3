"""The layers a replayed benchmark sample is drawn in beside the open layers: the image, the
ground-truth outline, the predicted mask and the clicks (green positive, red negative), at the
open layers' pixel size and in their units (a slide in µm stays in µm), the view moved onto them."""

from __future__ import annotations

import numpy as np

REPLAY_PREFIX = "replay: "
REPLAY_GAP = 0.05  # the replayed image's distance from the open layers, as a share of their width
TRUTH_COLOUR, PREDICTION_COLOUR = "yellow", "dodgerblue"


class ReplayLayers:
    def __init__(self, viewer) -> None:
        self.viewer = viewer

    def show(self, sample) -> None:
        """Draw ``sample`` (image and target) in fresh replay layers, with no click yet."""
        for name in ("image", "ground truth", "prediction", "clicks"):
            if REPLAY_PREFIX + name in self.viewer.layers:
                self.viewer.layers.remove(REPLAY_PREFIX + name)
        height, width = sample.target.shape
        frame = self._replay_frame()
        image = self.viewer.add_image(sample.image, name=REPLAY_PREFIX + "image", rgb=True, **frame)
        self.viewer.add_labels(np.zeros(sample.target.shape, np.uint8), name=REPLAY_PREFIX + "prediction",
                               opacity=0.45, colormap={1: PREDICTION_COLOUR}, **frame)
        # Above the prediction, in a colour H&E stains rarely have, a few pixels wide at any image size.
        truth = self.viewer.add_labels(sample.target.astype(np.uint8), name=REPLAY_PREFIX + "ground truth",
                                       opacity=1.0, colormap={1: TRUTH_COLOUR}, **frame)
        truth.contour = max(2, round(max(height, width) / 200))
        self.viewer.add_points(np.zeros((0, 2)), name=REPLAY_PREFIX + "clicks", size=max(6, height // 40),
                               face_color="green", border_color="white", **frame)
        self._fit_view(image)

    def _replay_frame(self) -> dict:
        """Scale, translate and units of the replay layers: in the units of the layers open (a slide
        in µm: µm, so napari keeps using them), at the pixel size of the first image among them,
        to the right of them all (nothing open: napari's defaults, pixels at the origin)."""
        layers = [layer for layer in self.viewer.layers if not layer.name.startswith(REPLAY_PREFIX)]
        if not layers:
            return {}
        from napari.layers import Image

        units = self.viewer.layers.extent.units  # None when the open layers disagree already
        image = next((layer for layer in layers if isinstance(layer, Image)), None)
        scale = tuple(float(v) for v in image.scale[-2:]) if image is not None else (1.0, 1.0)
        (top, left), (_, right) = self.viewer.layers.extent.world[:, -2:]
        frame = {"scale": scale, "translate": (float(top), float(right + REPLAY_GAP * max(right - left, 0.0)))}
        if units is not None:
            frame["units"] = tuple(units[-2:])
        return frame

    def _fit_view(self, layer) -> None:
        """Centre and zoom onto the replayed image: other layers (a whole slide) may be far larger."""
        try:
            self.viewer.fit_to_view(layers=[layer])
        except (AttributeError, TypeError):  # napari before fit_to_view(layers=...): fit everything
            self.viewer.reset_view()

    def show_step(self, replay, step: int) -> str:
        """Show ``replay`` (a ``SampleResult`` with its masks) after click ``step`` (1-based, clamped);
        returns what the click was, as a user reads it."""
        step = min(max(step, 1), len(replay.ious))
        clicks = replay.clicks[:step]
        points = self.viewer.layers[REPLAY_PREFIX + "clicks"]
        points.data = np.array([[c.row, c.col] for c in clicks], float)
        points.face_color = ["green" if c.positive else "red" for c in clicks]
        self.viewer.layers[REPLAY_PREFIX + "prediction"].data = replay.masks[step - 1].astype(np.uint8)
        return (f"click {step}: {'positive' if clicks[-1].positive else 'negative'} at "
                f"(x {clicks[-1].col}, y {clicks[-1].row}), IoU {replay.ious[step - 1]:.3f}")

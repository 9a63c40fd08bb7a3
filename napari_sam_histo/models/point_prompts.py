"""SAM's embedding of point prompts, in numpy: what ``PromptEncoder(points=..., boxes=None)`` returns.

Why not SAM's own module: on a CPU a click's point embedding is a dozen tiny PyTorch operations
(sin, cos, masked adds on a (1, N, 256) tensor), and right after the CPU runtime has run the
decoder each of them waits for PyTorch's thread pool: measured 27 ms a click on 2 loaded cores,
a quarter of the decoder itself, where this numpy copy of the same arithmetic takes well under a
millisecond. The weights are copied from the loaded model's prompt encoder; the result equals the
module's within float32 rounding (tested).
"""

from __future__ import annotations

import numpy as np
import torch


class PointPrompts:
    """The sparse prompt embedding of clicks, computed like SAM's prompt encoder (no boxes: one
    padding point is added, as SAM adds it)."""

    def __init__(self, prompt_encoder: torch.nn.Module) -> None:
        with torch.no_grad():
            self.gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.detach().float().cpu().numpy()
            self.label_embeddings = {
                -1: prompt_encoder.not_a_point_embed.weight.detach().float().cpu().numpy()[0],
                0: prompt_encoder.point_embeddings[0].weight.detach().float().cpu().numpy()[0],
                1: prompt_encoder.point_embeddings[1].weight.detach().float().cpu().numpy()[0],
            }
        self.input_size = tuple(int(s) for s in prompt_encoder.input_image_size)  # (h, w) of the model input

    def __call__(self, points: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """(1, N + 1, C) float32 for ``points`` (N, 2) as (x, y) in the model input's pixels and
        ``labels`` (N,) 1 positive / 0 negative."""
        points = np.asarray(points, np.float32).reshape(-1, 2) + np.float32(0.5)  # the pixel's centre
        labels = np.asarray(labels).reshape(-1)
        coords = np.concatenate([points, np.zeros((1, 2), np.float32)])  # SAM's padding point
        coords = coords / np.array([self.input_size[1], self.input_size[0]], np.float32)
        projected = (2 * coords - 1) @ self.gaussian * np.float32(2 * np.pi)
        embedding = np.concatenate([np.sin(projected), np.cos(projected)], axis=-1).astype(np.float32)
        embedding[-1] = 0.0
        for row, label in enumerate([*labels.tolist(), -1]):
            embedding[row] += self.label_embeddings[int(label)]
        return torch.from_numpy(embedding[None])

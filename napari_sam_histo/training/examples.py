"""A training example: one accepted object on one tile (its cached embedding, the accepted mask,
the clicks that drew it). What the online adaptation, the slide refiner and a project's decoder
training all learn from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.embedding_cache import Embedding
from .prompted_forward import ImageGeometry


@dataclass(frozen=True)
class AdaptationExample:
    """One accepted object on one tile."""

    embedding: Embedding  # the tile's (features on the CPU)
    target: np.ndarray  # (h, w) bool at the tile's resolution: the accepted mask there
    clicks: tuple = ()  # the user's clicks on the tile, (x, y, positive) in its pixels (provenance)
    # the tile's (H, W, 3) pixels, or a function that reads them (the slide refiner's colour; the
    # adapter's thread reads them when it comes to the object), or None
    image: object = None
    # a function giving the tile's ``colour_features`` (the annotator keeps them per tile, so the
    # refiner's learning and the next object's clicks on the tile make them once), or None
    colour: object = None

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry(tuple(self.embedding.input_size), tuple(self.embedding.original_size))

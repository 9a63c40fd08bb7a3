"""The slide prior of the online adaptation, fitted on the adapter's training examples
(``models.slide_prior``: a logistic read-out of the embedding): the cells of each tile are drawn
once and kept (in float16) while the examples on that tile stay the same, so a gate after more
steps, or a new example on another tile, costs only the fit."""

from __future__ import annotations

import numpy as np
import torch

from ..models.slide_prior import SlidePrior, example_cells, fit_slide_prior


class PriorFitter:
    """Fits the slide prior on tagged examples, (object serial, object key, example) as the adapter
    keeps them, and remembers the last fit. ``seed``: the cells' draw."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.cells: dict[tuple, tuple] = {}  # a tile's (serial, id) of examples -> (cells, labels)
        self._fit: tuple | None = None  # (the examples' key, the prior fitted on them)

    def fit(self, training: list[tuple], held: list[tuple]) -> SlidePrior | None:
        """The slide prior fitted on ``training`` (never on ``held``); None when the examples hold
        one class only. Refitted only when the examples change."""
        # (held-out objects count too: on a tile they share with training objects their cells are left out)
        key = tuple((t[0], id(t[2])) for t in training + held)
        if self._fit is not None and self._fit[0] == key:
            return self._fit[1]
        # one set of cells per tile: positive inside any accepted object on it (another accepted
        # object on the same tile is no negative); cells of a held-out object are left out
        tiles: dict[int, list] = {}
        for side, tagged in (("train", training), ("held", held)):
            for serial, _, example in tagged:
                entry = tiles.setdefault(id(example.embedding), [example.embedding, [], []])
                entry[1 if side == "train" else 2].append((serial, example))
        cells, labels, cache = [], [], {}
        for embedding, on_tile, held_on_tile in tiles.values():
            if not on_tile:
                continue
            tile_key = tuple((serial, id(example)) for serial, example in on_tile + held_on_tile)
            if tile_key not in self.cells:
                shape = np.shape(on_tile[0][1].target)
                union, ignore = _union_of(on_tile, shape), _union_of(held_on_tile, shape)
                rng = np.random.default_rng([self.seed, on_tile[0][0], len(on_tile)])
                x, y = example_cells(embedding.features, union, embedding.input_size, embedding.original_size,
                                     rng, ignore=ignore & ~union)
                self.cells[tile_key] = (x.half(), y)  # half the memory; fitted in float32
            cache[tile_key] = self.cells[tile_key]
            cells.append(cache[tile_key][0].float())
            labels.append(cache[tile_key][1])
        self.cells = cache  # what no longer describes a tile goes
        prior = fit_slide_prior(torch.cat(cells), torch.cat(labels)) if cells else None
        self._fit = (key, prior)
        return prior


def _union_of(tagged: list[tuple], shape: tuple) -> np.ndarray:
    """The union of the (serial, example) targets that have ``shape`` (one tile's)."""
    union = np.zeros(shape, bool)
    for _, example in tagged:
        if np.shape(example.target) == shape:
            union |= np.asarray(example.target, bool)
    return union

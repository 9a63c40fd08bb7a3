"""What the engine takes from outside it, as protocols: the slide's learning and a project's
recorder (set on the annotator by a UI; ``training`` provides them, and the engine imports nothing
of training), the embeddings a tile's clicks decode with (``TileWork``: the annotator's threads, or
the predictor directly), and a tile's refiner (``models.slide_refiner.TileRefiner``). The product's
classes and the tests' fakes both implement them."""

from __future__ import annotations

from typing import Protocol

from .embedding_cache import Embedding
from .tiles import TileBox


class SlideLearning(Protocol):
    """What the annotator needs of the slide's learning (``adaptation.slide_adaptation``, set by a UI
    as ``adaptation``)."""

    enabled: bool  # the slide is being learnt
    refine_borders: bool  # with the slide refiner (its tiles' colours are then kept)

    def predictor(self): ...  # the ``Predictor`` a new object decodes with

    def refiner(self): ...  # the slide refiner a new object's tiles use, or None

    def add_object(self, sessions, blended, edited=None, key=None, read_tile=None, tile_colour=None) -> int: ...

    def take_turn(self, timeout: float | None = None) -> bool: ...  # one unit of learning, now

    def close(self, wait: bool = True) -> None: ...


class AcceptedObjects(Protocol):
    """Where the annotator hands every accepted object besides the slide's learning: a project's
    training set (``training.project_objects.ProjectRecorder``, set by a UI as ``recorder``). It
    must return at once (the writing is its own writer's)."""

    def add_accepted(self, obj, sessions, blended, edited=None): ...


class TileWork(Protocol):
    """How the object's tiles get their embeddings, and who hears that the object changed."""

    def embedding(self, box: TileBox, purpose: str) -> Embedding: ...  # purpose: "click" or "continuation"

    def fetching(self, key: str) -> bool: ...  # the tile's embedding is being computed now

    def changed(self) -> None: ...  # undo, redo, clear or restore replaced the object's clicks (under its lock)


class TileRefinement(Protocol):
    """A refiner on one tile as a click session uses it: SAM's logits in, refined logits out."""

    start: str  # what the object's first mask shows: "refined" or "sam"
    lead: float  # nats by which SAM must lead at the clicks to be shown (``ClickEvidence``)
    evidence: object  # the object's ``ClickEvidence`` so far (from its other tiles), or None

    @property
    def min_agreement(self) -> float: ...

    def __call__(self, logits): ...

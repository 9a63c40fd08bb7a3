"""What the engine takes from outside it, as protocols: the predictor a tile's clicks decode with
(``TilePredictor``: ``predictor.Predictor``) and the store of tiles' embeddings it keeps
(``EmbeddingStore``: ``embedding_cache.EmbeddingCache``), the slide's learning and a project's
recorder (set on the annotator by a UI; ``training`` provides them, and the engine imports nothing
of training), the embeddings a tile's clicks decode with (``TileWork``: the annotator's threads, or
the predictor directly), a tile's refiner (``models.slide_refiner.TileRefiner``), and what the
learning and the recorder read of an accepted object's tiles (``ClickedTile``: ``session.ClickSession``).
The product's classes and the tests' fakes both implement them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..annotations.objects import AnnotatedObject
from ..models.decoders import DecoderChoice, Provenance
from ..models.registry import LoadedModel
from ..models.slide_refiner import SlideRefiner
from ..slides.boxes import TileBox
from ..slides.source import ImageSource
from .blending import Blend
from .embedding_cache import Embedding, EmbeddingKey


@runtime_checkable
class EmbeddingStore(Protocol):
    """What the engine uses of a store of tiles' embeddings (``embedding_cache.EmbeddingCache``):
    the predictor computes each embedding through it, and a new object's first tile is chosen
    among the tiles it holds."""

    store_dir: Path | None  # the disk store's folder (None: memory only)

    def __contains__(self, key: EmbeddingKey) -> bool: ...  # held in memory

    def stored(self, key: EmbeddingKey, verify: bool = False) -> bool: ...  # held in the disk store

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], Embedding],
                       device: torch.device | str | None = None) -> Embedding: ...


@runtime_checkable
class Decoded(Protocol):
    """What one decode gives (``predictor.Prediction``)."""

    low_res_logits: torch.Tensor  # (K, 256, 256): feed one back as the next mask prompt
    iou_predictions: torch.Tensor  # (K,)


@runtime_checkable
class TilePredictor(Protocol):
    """What the engine's click path uses of a predictor (``predictor.Predictor``): the tiles'
    embeddings (``embedding_for``, through ``cache``), a click's decode (``decode``, ``upscale``) and
    what an accepted object records of the model and decoder that drew it."""

    model: LoadedModel  # its name goes into an accepted object
    decoder: DecoderChoice  # its kind too (an adapted predictor's: maybe "residual")
    device: torch.device  # where a mask prompt must be
    image_size: int  # the encoder's input side; SAM's low-resolution frame is a quarter of it
    cache: EmbeddingStore
    last_decoder_s: float  # the decoder's seconds in the last ``decode``

    @property
    def provenance(self) -> Provenance: ...  # the model and decoder as chosen, recorded at Accept

    def key_for(self, image_identity: str, tile_key: str) -> EmbeddingKey: ...

    def embedding_for(self, source: ImageSource, box: TileBox, computing=None) -> Embedding: ...

    def decode(self, embedding: Embedding, points_xy: np.ndarray, labels: np.ndarray,
               mask_input: torch.Tensor | None = None, multimask: bool = False) -> Decoded: ...

    def upscale(self, embedding: Embedding, low_res_logits: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TileClick(Protocol):
    """A click on a tile (``session.Click``)."""

    x: float  # column, in the tile's pixels
    y: float  # row
    positive: bool


@runtime_checkable
class ClickedTile(Protocol):
    """One tile of an accepted object as the slide's learning and a project's recorder read it
    (``session.ClickSession``)."""

    box: TileBox
    embedding: Embedding

    @property
    def clicks(self) -> Sequence[TileClick]: ...


class SlideLearning(Protocol):
    """What the annotator needs of the slide's learning (``adaptation.slide_adaptation``, set by a UI
    as ``adaptation``)."""

    enabled: bool  # the slide is being learnt
    refine_borders: bool  # with the slide refiner (its tiles' colours are then kept)

    def predictor(self) -> TilePredictor: ...  # the predictor a new object decodes with

    def refiner(self) -> SlideRefiner | None: ...  # the slide refiner a new object's tiles use, or None

    def add_object(self, sessions: Sequence[ClickedTile], blended: Blend | None, edited: tuple | None = None,
                   key: str | None = None, read_tile: Callable[[TileBox], np.ndarray] | None = None,
                   tile_colour: Callable[[TileBox], object] | None = None) -> int: ...

    def take_turn(self, timeout: float | None = None) -> bool: ...  # one unit of learning, now

    def close(self, wait: bool = True) -> None: ...


class AcceptedObjectSink(Protocol):
    """Where the annotator hands every accepted object besides the slide's learning: a project's
    training set (``training.project_objects.ProjectRecorder``, set by a UI as ``recorder``). It
    must return at once (the writing is its own writer's)."""

    def add_accepted(self, obj: AnnotatedObject, sessions: Sequence[ClickedTile], blended: Blend | None,
                     edited: tuple | None = None): ...


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

"""What a project keeps of an object (``training.project_store``), and how an object accepted in
the dock becomes one: its tiles at its finest level, the accepted mask cut to each, the clicks there
(``accepted_tiles``), written off the caller's thread (``ProjectRecorder``, called at Accept)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.embedding_cache import Embedding, EmbeddingKey
from ..slides.boxes import TileBox


@dataclass(frozen=True)
class SlideRef:
    """Which slide an object lies on: its name, its identity (``ImageSource.identity``: survives a
    rename for slides with an OpenSlide quickhash) and the path it was opened from ("" if none)."""

    name: str
    identity: str
    path: str = ""

    @classmethod
    def of(cls, source, path: str | Path | None = None) -> SlideRef:
        """The reference of an open ``ImageSource`` (``path``: the file it was opened from)."""
        return cls(source.name, source.identity, str(Path(path).resolve()) if path else "")


@dataclass(frozen=True)
class TileExample:
    """An object on one tile, as the store takes it: the tile, its embedding, the object's mask at
    the tile's resolution and the clicks on the tile ((x, y, positive) in the tile's pixels)."""

    box: TileBox
    embedding: Embedding
    target: np.ndarray
    clicks: tuple = ()


@dataclass(frozen=True)
class StoredTile:
    box: TileBox
    embedding_key: EmbeddingKey
    clicks: tuple  # ((x, y, positive), ...) in the tile's pixels

    @property
    def level0_box(self) -> tuple[float, float, float, float]:
        return self.box.level0_box


@dataclass(frozen=True)
class StoredObject:
    """One object of the project (an entry of the store)."""

    entry: str  # the file name stem under objects/
    object_id: str  # the annotation's id (as in the GeoJSON export)
    class_name: str
    slide: SlideRef
    accepted_at: str  # ISO 8601, UTC, microseconds: when it was accepted (or imported)
    origin: str  # "accepted" (clicked in the dock) or "imported" (from a GeoJSON or label image)
    model: str  # the model's name
    weights_hash: str  # the model weights' hash (the embeddings are this model's)
    decoder: dict  # the decoder that drew it (``Provenance.properties()``; an import keeps what its file says)
    tiles: tuple[StoredTile, ...]
    masks: str  # the file of its masks under objects/
    signature: tuple = ()  # ``annotations.objects.signature``: the same region whatever its id


def accepted_tiles(sessions, blended, edited: tuple | None = None) -> list[TileExample]:
    """An accepted object's ``TileExample``s from the annotator's state at Accept (as
    ``examples.tile_examples`` cuts them: the object's tiles at its finest level, the
    accepted or hand-edited mask cut to each, the clicks there), each with its tile."""
    from .examples import tile_examples

    sessions = list(sessions)
    if not sessions:
        return []
    finest = min(s.box.downsample for s in sessions)
    out = []
    for session in sessions:
        if abs(session.box.downsample - finest) > 1e-6 * finest:
            continue
        for example in tile_examples([session], blended, edited):
            out.append(TileExample(session.box, example.embedding, example.target, example.clicks))
    return out


class ProjectRecorder:
    """Keeps the objects accepted on one slide in a project: ``add_accepted`` (called at Accept,
    with the object and the annotator's tiles as ``SlideLearning.add_object`` gets them) cuts the object's tiles at once
    (numpy only, no waiting) and hands the writing (a few MiB) to ``submit`` (a UI's writer thread;
    None: written before it returns); ``forget`` takes an object back (its Accept undone, or it was
    deleted). ``predictor``: the annotator's (its embeddings, its model's keys)."""

    def __init__(self, store, slide: SlideRef, predictor,
                 submit: Callable[[Callable[[], object]], object] | None = None):
        self.store = store
        self.slide = slide
        self.predictor = predictor
        self.submit = submit

    def _run(self, work: Callable[[], object]):
        return work() if self.submit is None else self.submit(work)

    def add_accepted(self, obj, sessions, blended, edited: tuple | None = None):
        """Keep ``obj`` (``AnnotatedObject``: id, class, provenance) with the annotator's sessions,
        blended logits and hand-edited mask at Accept; returns what ``submit`` returns (without
        one, the ``StoredObject`` or None when no tile holds a mask)."""
        from ..annotations.objects import PROVENANCE_KEYS, signature

        tiles = accepted_tiles(sessions, blended, edited)
        decoder = {k: str(obj.properties[k]) for k in PROVENANCE_KEYS if obj.properties.get(k) is not None}
        key, class_name, region = obj.id, obj.class_name, signature(obj)
        return self._run(lambda: self.store.add_object(key, class_name, self.slide, tiles, self.predictor,
                                                       "accepted", decoder, region))

    def forget(self, object_id: str):
        """Remove object ``object_id`` of this slide from the project (through ``submit``, in order
        after its writing)."""
        return self._run(lambda: self.store.remove_object(object_id, self.slide.identity))

"""One annotating session built from a UI's settings: the slide opened (``open_slide``), the model
loaded, its predictor with an embedding cache (on disk in the slide's store when asked), the
annotator, and the slide's learning (``adaptation.slide_adaptation``), which a Start on the same
slide with the same model and decoder carries on (``carry_learning``).

Everything here is slow (a model load, a slide open): a UI calls it on a worker thread. Importing
this module imports no torch (a UI imports it while napari starts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..engine.tiles import DEFAULT_TILE_SIZE
from ..slides.source import ImageSource

if TYPE_CHECKING:  # torch: imported when a session is built (on a worker thread), not with the UI
    from ..adaptation.slide_adaptation import SlideAdaptation
    from ..engine.annotator import Annotator


@dataclass(frozen=True)
class SlideFile:
    """A slide or image file, opened tile by tile."""

    path: str | Path


@dataclass(frozen=True)
class SlidePixels:
    """An image held in memory (a plain image layer), under ``name``."""

    pixels: object
    name: str


@dataclass(frozen=True)
class AnnotatorConfig:
    """What a UI's settings choose for a session."""

    model: str
    decoder: str = "sam"
    device: str = "auto"
    level: int | str = 0  # a pyramid level, or "auto" (the view's)
    tile_size: int = DEFAULT_TILE_SIZE
    embeddings_on_disk: bool = False  # the slide's store (``embedding_store``), as ``napari-sam-histo embed`` fills it
    continuation: bool = False  # the object grows past tile borders by itself
    learning: bool = False  # learn from accepted objects from the start (switchable later)


# (the adaptation, its new state): what the slide's learning reports, from its own thread
LearningListener = Callable[[object, object], None]


def embedding_store(identity: str) -> Path:
    """The folder that keeps one slide's embeddings on disk (all models; the keys tell them apart):
    the one ``napari-sam-histo embed`` fills (``cohort.store``; ``NAPARI_SAM_HISTO_EMBEDDINGS``)."""
    from ..cohort.store import slide_store

    return slide_store(identity)


def open_slide(spec: SlideFile | SlidePixels) -> ImageSource:
    """The source a session reads: a file (``InputError`` naming it when it cannot be opened) or
    pixels in memory."""
    from ..slides.reader import from_array, open_image

    if isinstance(spec, SlideFile):
        return open_image(spec.path)
    return from_array(np.asarray(spec.pixels), spec.name)


def build_annotator(config: AnnotatorConfig, source: ImageSource, learnt: SlideAdaptation | None = None,
                    on_learning: LearningListener | None = None,
                    load_model: Callable | None = None) -> Annotator:
    """The annotator for ``source`` as ``config`` asks. Its ``adaptation`` is a new
    ``SlideAdaptation`` (enabled as ``config.learning`` says, reporting to ``on_learning``), unless
    ``learnt`` (the learning of the annotator it replaces) is reusable for the same slide, model and
    decoder: then it stays None and ``carry_learning`` hands ``learnt`` on once the old annotator
    is stopped. ``load_model(name, device)``: ``models.registry.load_model`` unless given."""
    from ..adaptation.slide_adaptation import SlideAdaptation
    from ..cohort.store import is_precomputed
    from ..engine.annotator import Annotator
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor

    if load_model is None:
        from ..models.registry import load_model
    cache = None
    if config.embeddings_on_disk:
        store = embedding_store(source.identity)
        # a precomputed store is kept whole: its size limit is for stores that grow by clicking
        cache = EmbeddingCache(store_dir=store, **({"max_disk_bytes": None} if is_precomputed(store) else {}))
    predictor = Predictor(load_model(config.model, config.device), config.decoder, cache=cache)
    predictor.wait_for_optimized_encoder = False  # tiles run eager until it is built:
    predictor.prepare_encoder()  # the optimized encoder builds in the background now
    annotator = Annotator(predictor, source, level=config.level, tile_size=config.tile_size,
                          continuation=config.continuation)
    if not (learnt is not None and learnt.reusable_for(predictor, source.identity)):
        annotator.adaptation = SlideAdaptation(predictor, annotator.quiet, enabled=config.learning,
                                               on_change=on_learning, slide=source.identity)
    return annotator


def assemble(config: AnnotatorConfig, spec: SlideFile | SlidePixels | None, reused: ImageSource | None = None,
             learnt: SlideAdaptation | None = None, on_learning: LearningListener | None = None,
             load_model: Callable | None = None) -> tuple[Annotator, ImageSource]:
    """``build_annotator`` on the slide ``spec`` names (opened now), or on ``reused`` (the open
    slide, when ``spec`` is None). A slide opened here is closed again when the build fails."""
    source = reused if spec is None else open_slide(spec)
    if source is None:
        raise ValueError("assemble needs a slide to open (spec) or an open one (reused).")
    try:
        return build_annotator(config, source, learnt, on_learning, load_model), source
    except BaseException:
        if source is not reused:
            source.close()
        raise


def carry_learning(annotator: Annotator, previous: Annotator | None, enabled: bool,
                   on_learning: LearningListener | None = None) -> None:
    """Give ``annotator`` (built without learning of its own: ``build_annotator``) what
    ``previous`` learned on the same slide, model and decoder, or a fresh ``SlideAdaptation``
    when that is gone meanwhile. Call it before ``previous`` is closed (closing it must not stop
    what is handed on). Does nothing when ``annotator`` has its learning already."""
    if annotator.adaptation is not None:
        return
    from ..adaptation.slide_adaptation import SlideAdaptation

    learnt = previous.adaptation if previous is not None else None
    if learnt is not None and learnt.reusable_for(annotator.predictor, annotator.source.identity):
        previous.adaptation = None  # handed on: closing the old annotator must not stop it
        learnt.rebind(annotator.predictor, annotator.quiet)
        annotator.adaptation = learnt
    else:
        annotator.adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, enabled=enabled,
                                               on_change=on_learning, slide=annotator.source.identity)

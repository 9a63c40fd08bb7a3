"""Run the automatic click evaluation: for each sample, click where RITM's clicker says until the
target IoU is reached or the clicks run out.

The SAM models run through the same ``Predictor`` and ``ClickSession`` as the annotator (what is
measured is what the user runs); each image is encoded once per model (instances of one image
share the embedding through the cache). Any ``InteractiveModel`` (``begin(sample)`` returning
``ObjectClicks``) can be evaluated, which is how the tests run an oracle and a model that never
changes its mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .click_loop import click_object
from .clicker import AutoClick
from .dataset import Sample
from .metrics import LOGIT_THRESHOLD


class ObjectClicks(Protocol):
    """One object being clicked (``InteractiveModel.begin``)."""

    @property
    def last_decoder_s(self) -> float:
        """The decoder's seconds in the last click."""

    @property
    def last_fallback(self) -> str | None:
        """Whether the last click showed an alternative to the usual decode (``engine.session``)."""

    @property
    def charged_encoder_s(self) -> float:
        """Encoder seconds charged to this object beyond its own (an embedding reused from a cache
        is charged at what computing it cost; 0.0 for a method without an encoder)."""

    def click(self, x: float, y: float, positive: bool) -> np.ndarray: ...


class InteractiveModel(Protocol):
    """A method the benchmark clicks with."""

    name: str

    @property
    def encoder_calls(self) -> int:
        """Encoder runs so far."""

    @property
    def store_loads(self) -> int | None:
        """Embeddings read from an on-disk store so far (None: the method keeps no store count)."""

    @property
    def runtime(self) -> dict | None:
        """What it runs on (``runtime.predictor_runtime``); None for a method that is no model
        (a test's oracle): a report's runtime leaves it out."""

    def begin(self, sample: Sample) -> ObjectClicks: ...


@dataclass
class SampleResult:
    method: str
    sample_id: str
    ious: list[float] = field(default_factory=list)
    clicks: list[AutoClick] = field(default_factory=list)
    decoder_s: list[float] = field(default_factory=list)
    fallbacks: int = 0  # clicks whose mask is an alternative to the usual decode, which broke the clicks
    begin_s: float = 0.0  # embedding (encoder, or cache hit) and session set-up
    total_s: float = 0.0  # loading + encoder + all clicks: RITM's end-to-end time
    masks: list[np.ndarray] | None = None  # kept only when asked (replay)


class SamClickModel:
    """A predictor (model + decoder) as an ``InteractiveModel``."""

    def __init__(self, predictor, name: str | None = None, mask_prompt: bool = True, key_tag: str = "",
                 first_mask: str = "iou", refiner=None, honour_clicks: bool = True) -> None:
        """``refiner``: a slide refiner every object's tile is refined with (``models.slide_refiner``;
        shown by the object's click evidence, as the annotator does). ``honour_clicks``: the
        session's alternative decode where the usual one breaks the clicks (``engine.session``; off
        only to measure without it). ``key_tag`` is added to every image identity of the cache
        keys: the benchmark's on-disk embedding store tags its entries with the device (and stored
        dtype), so an embedding, and the encoder seconds recorded with it, are only reused where
        they were computed."""
        self.predictor = predictor
        self.mask_prompt = mask_prompt
        self.first_mask = first_mask  # engine.session.FIRST_MASK_RULES
        self.key_tag = key_tag
        self.refiner = refiner
        self.honour_clicks = honour_clicks
        self.name = name or (f"{predictor.model.name}+{predictor.decoder.kind}" + ("" if mask_prompt else "/points")
                             + ("" if honour_clicks else "/no-fallback"))
        self.store_loads = 0  # embeddings this method read from the on-disk store (not encoded, not in memory)

    @property
    def encoder_calls(self) -> int:
        return self.predictor.encoder_calls

    @property
    def runtime(self) -> dict:
        """The precision that really runs and where (see ``evaluation.runtime``)."""
        from .runtime import predictor_runtime

        return predictor_runtime(self.predictor)

    def begin(self, sample: Sample) -> _SamObject:
        from ..engine.session import ClickSession
        from ..slides.boxes import TileBox

        height, width = sample.target.shape
        calls = self.predictor.encoder_calls
        disk_hits = self.predictor.cache.disk_hits
        embedding = self.predictor.embedding_for_array(sample.image, sample.identity + self.key_tag)
        self.store_loads += self.predictor.cache.disk_hits - disk_hits
        # Cached in memory or read from the store: charged at the encode_s recorded when it was computed.
        reused = self.predictor.encoder_calls == calls
        refine = None
        if self.refiner is not None:
            from ..models.slide_refiner import TileRefiner

            refine = TileRefiner(self.refiner, lambda: sample.image)
        session = ClickSession(self.predictor, TileBox(0, 0, 0, width, height), embedding,
                               threshold=LOGIT_THRESHOLD, mask_prompt=self.mask_prompt,
                               first_mask=self.first_mask, refine=refine, honour_clicks=self.honour_clicks)
        return _SamObject(session, embedding.encode_s if reused else 0.0)


class _SamObject:
    def __init__(self, session, charged_encoder_s: float) -> None:
        self.session = session
        # An embedding reused from the cache (another instance of the same image, another decoder
        # of the same model, an earlier run through the on-disk store) is charged at what computing
        # it cost, so end-to-end SPC counts the encoder once per sample, as RITM's timing does.
        self.charged_encoder_s = charged_encoder_s

    @property
    def last_decoder_s(self) -> float:
        return self.session.last_decoder_s

    @property
    def last_fallback(self) -> str | None:
        return self.session.fallback

    def click(self, x: float, y: float, positive: bool) -> np.ndarray:
        return self.session.add_click(x, y, positive).mask


def run_sample(model: InteractiveModel, sample: Sample, max_clicks: int = 20, stop_iou: float | None = 0.9,
               load_s: float = 0.0, keep_masks: bool = False) -> SampleResult:
    """Click until ``stop_iou`` (None: always ``max_clicks``) and record IoU and time per click."""
    result = SampleResult(model.name, sample.sample_id)
    started = time.perf_counter()
    session = model.begin(sample)
    result.begin_s = time.perf_counter() - started

    def record(_: int) -> None:
        result.decoder_s.append(session.last_decoder_s)
        result.fallbacks += session.last_fallback is not None

    clicked = click_object(lambda click: session.click(*click.xy, click.positive), sample.target, max_clicks,
                           stop_iou, sample.ignore, keep_masks, after_click=record)
    result.clicks, result.ious, result.masks = clicked.clicks, clicked.ious, clicked.masks
    result.total_s = load_s + time.perf_counter() - started + session.charged_encoder_s
    return result

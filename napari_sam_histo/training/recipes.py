"""What a project-decoder recipe offers the project training and the learning curve.

Two recipes implement it: ``tissue_training.TissueRecipe`` (a head that corrects SAM's first mask)
and ``decoder_finetune.FinetuneRecipe`` (SAM's decoder fine-tuned on the states of every click).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..models.decoders import DecoderChoice


class TrainedDecoder(Protocol):
    """A decoder a recipe trained: ready for a ``Predictor`` and writable as a decoder file."""

    choice: DecoderChoice
    report: dict  # seconds, steps, losses, the recipe

    def save(self, path: str | Path, model, metrics: dict | None = None, config: dict | None = None,
             provenance: dict | None = None) -> Path: ...


class DecoderRecipe(Protocol):
    """Settings that decide what is learnt, and the training they drive."""

    name: str  # "tissue-head", "finetune": recorded in reports
    label: str  # how reports name its decoders ("tissue decoder", "fine-tuned decoder")

    def as_dict(self) -> dict: ...

    @classmethod
    def completed(cls, recorded: dict) -> dict:
        """A recipe as a report recorded it (``as_dict``), with the settings added to the recipe
        since filled in as they were when it ran: a report joined later reads as it ran."""
        ...

    def train(self, predictor, examples: list, log: Callable[[str], None] | None = None,
              cancel: Callable[[], bool] | None = None, resume: Any = None,
              on_checkpoint: Callable[[Any], None] | None = None) -> TrainedDecoder:
        """Train on ``examples`` (``training.examples.AdaptationExample``) for ``predictor``'s SAM
        decoder; ``on_checkpoint`` receives states that ``resume`` (read back with
        ``state_from_dict``) goes on from."""
        ...

    def state_from_dict(self, data: dict) -> Any:
        """A training state, as ``on_checkpoint`` gave it (``as_dict``), read back."""
        ...

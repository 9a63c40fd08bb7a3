"""The decoder names and the decoder files shipped in ``resources/``, without importing torch.

The Annotator dock lists them when it opens, on napari's GUI thread, where importing torch
(seconds) would freeze the viewer; building a decoder (``models.decoders``) needs torch and runs
on a worker.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

SHIPPED_DECODERS = ("residual", "modified", "md")
DECODER_NAMES = ("sam", "residual", "modified", "md")
VALID_DECODERS = ("'sam' (SAM's own), 'residual' (SAM's decoder + a trained correction), 'modified' "
                  "(Kim et al.), 'md' (SAM's decoder fine-tuned) or the path of a decoder checkpoint file")


def shipped_decoder_path(base_model: str, kind: str = "modified") -> Path | None:
    """The trained decoder shipped for ``base_model``, if there is one: ``residual``, ``modified``
    (Kim et al.'s decoder) or ``md`` (SAM's decoder fine-tuned, the paper's SAM^MD)."""
    path = RESOURCES / f"decoder-{kind}-{base_model}.pt"
    return path if path.is_file() else None


def shipped_decoders(base_model: str) -> list[str]:
    """The decoders a user can pick for ``base_model``: SAM's own, then those shipped for it."""
    return ["sam"] + [kind for kind in SHIPPED_DECODERS if shipped_decoder_path(base_model, kind)]

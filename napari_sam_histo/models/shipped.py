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


# What each shipped decoder was trained on: ``(tissue, data)``, as its checkpoint's metadata says
# (``tissue``, ``training_data``; a test checks that they agree). The picker shows it, without torch.
SHIPPED_TRAINING = {
    "md": ("colorectal and oral carcinoma (H&E)",
           "EBHI-Seg colorectal biopsies (training cases) + OCDC oral squamous cell carcinoma tiles"),
    "modified": ("colorectal and oral carcinoma (H&E)",
                 "EBHI-Seg colorectal biopsies (training cases) + OCDC oral squamous cell carcinoma tiles"),
}


def decoder_tissue(name: str) -> str:
    """A few words for beside the decoder picker: the tissue the decoder ``name`` is for."""
    if name == "sam":
        return "zero-shot: any tissue"
    if name in SHIPPED_TRAINING:
        return f"trained on {SHIPPED_TRAINING[name][0]}"
    return "a decoder file: its tissue is in its metadata"


def decoder_note(name: str) -> str:
    """One line for the decoder picker: what the decoder ``name`` was trained on."""
    if name == "sam":
        return "SAM's own decoder: not trained on histology; the honest default on any tissue."
    if name in SHIPPED_TRAINING:
        tissue, data = SHIPPED_TRAINING[name]
        return (f"Trained on {tissue}: {data}. Best on that tissue; on others it can need more clicks "
                "than SAM's own.")
    return "A decoder file: the tissue it was trained on is in its metadata (tissue, training_data)."


def shipped_decoder_path(base_model: str, kind: str = "modified") -> Path | None:
    """The trained decoder shipped for ``base_model``, if there is one: ``residual``, ``modified``
    (Kim et al.'s decoder) or ``md`` (SAM's decoder fine-tuned, the paper's SAM^MD)."""
    path = RESOURCES / f"decoder-{kind}-{base_model}.pt"
    return path if path.is_file() else None


def shipped_decoders(base_model: str) -> list[str]:
    """The decoders a user can pick for ``base_model``: SAM's own, then those shipped for it."""
    return ["sam"] + [kind for kind in SHIPPED_DECODERS if shipped_decoder_path(base_model, kind)]

"""Our decoder checkpoint format: decoder weights plus the metadata that makes them safe to use.

A file holds ``{"format", "format_version", "metadata", "state_dict"}`` saved with ``torch.save``
(tensors, strings and numbers only, so ``torch.load(weights_only=True)`` reads it). The metadata
names the decoder kind, the base model and the sha256/xxh128 of its weights, the training scenario,
the date and the metrics. A decoder is trained against one image encoder's embeddings, so loading
it onto another base model is refused.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CheckpointError
from .state_dict import read_checkpoint

FORMAT = "napari-sam-histo-decoder"
FORMAT_VERSION = 1
DECODER_KINDS = ("sam", "modified", "residual")


def decoder_metadata(
    decoder_kind: str,
    base_model: str,
    base_weights_hash: str,
    training_scenario: str,
    trained: bool,
    metrics: dict | None = None,
    config: dict | None = None,
) -> dict:
    if decoder_kind not in DECODER_KINDS:
        raise CheckpointError(f"Unknown decoder kind {decoder_kind!r}; expected one of {DECODER_KINDS}.")
    return {
        "decoder_kind": decoder_kind,
        "base_model": base_model,
        "base_weights_hash": base_weights_hash,
        "training_scenario": training_scenario,
        "trained": bool(trained),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
    }


def save_decoder_checkpoint(path: str | Path, decoder: torch.nn.Module | dict, metadata: dict,
                            dtype: torch.dtype = torch.float32) -> Path:
    """Write a decoder module (or its state dict) atomically (temp file in the same folder, then
    rename). ``dtype=torch.float16`` halves the file (shipped decoders); loading casts back to the
    module's float32."""
    source = decoder if isinstance(decoder, dict) else decoder.state_dict()
    state = {key: value.detach().cpu().to(dtype) if value.is_floating_point() else value.detach().cpu()
             for key, value in source.items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": metadata, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_decoder_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(metadata, state_dict) of a decoder checkpoint, or ``CheckpointError`` naming the file."""
    data = read_checkpoint(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-sam-histo decoder checkpoint (no '{FORMAT}' format tag). "
            f"Whole SAM checkpoints are chosen as the model, not as the decoder."
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has decoder format version {data.get('format_version')}; "
                              f"this version of napari-sam-histo reads version {FORMAT_VERSION}.")
    metadata, state = data.get("metadata"), data.get("state_dict")
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} lacks its metadata or its weights.")
    for key in ("decoder_kind", "base_model", "base_weights_hash", "trained"):
        if key not in metadata:
            raise CheckpointError(f"{path}: metadata lacks {key!r}.")
    return metadata, state


def check_base_model(metadata: dict, model_name: str, weights_hash: str, source: str) -> None:
    """Refuse a decoder trained on other encoder weights than the ones loaded."""
    if metadata["base_weights_hash"] != weights_hash:
        raise CheckpointError(
            f"{source} was trained for base model {metadata['base_model']!r} "
            f"(weights {metadata['base_weights_hash']}), but the loaded model is {model_name!r} "
            f"(weights {weights_hash}). Choose the matching model, or train a decoder for this one."
        )


def decoder_file_note(path: str | Path) -> tuple[str, str]:
    """(a few words for beside the decoder picker, a longer note) of a decoder file: the tissue it
    was trained on and, for a project decoder, its held-out verdict, as its metadata says;
    ``CheckpointError`` naming the file when it is no decoder checkpoint."""
    metadata, _ = read_decoder_checkpoint(path)
    described = {**metadata, **metadata.get("tissue_head", {})}
    tissue = described.get("tissue")
    if not tissue:
        return ("a decoder file without a tissue in its metadata",
                f"{Path(path).name}: trained {'yes' if metadata['trained'] else 'no'}; its metadata names no tissue.")
    verdict = described.get("verdict")
    short = f"{tissue}: {verdict.split(':')[0]}" if verdict else f"trained on {tissue}"
    data = described.get("training_data")
    return short, ". ".join(part for part in (f"Trained on {tissue}", data, verdict and f"Verdict: {verdict}") if part) + "."


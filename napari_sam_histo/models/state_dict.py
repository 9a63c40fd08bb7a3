"""Read weights files safely: ``torch.load(weights_only=True)``, one clear error per failure."""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError


def read_checkpoint(path: str | Path) -> dict:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``; raise ``CheckpointError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain values; it is refused because "
            f"loading it would run code from the file ({err.__class__.__name__})."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"Cannot read checkpoint {path}: the file is truncated or corrupt ({err}).") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dictionary of weights.")
    return data


def sam_state_dict(data: dict) -> "OrderedDict[str, torch.Tensor]":
    """The SAM weights inside a checkpoint: a plain state dict, or torch_em's training format
    (``model_state`` with ``sam.``-prefixed keys, as micro-sam's fine-tuned models are stored)."""
    state = data.get("model_state", data)
    if not isinstance(state, dict):
        raise CheckpointError("The checkpoint's 'model_state' is not a dictionary of weights.")
    prefix = "sam."
    return OrderedDict(
        (key[len(prefix):] if key.startswith(prefix) else key, value)
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    )

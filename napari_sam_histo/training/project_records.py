"""An object's record in a project's store (``project_store``): the ``objects/<entry>.json`` that
commits the object, made from what is kept of it and read back as a ``StoredObject``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..engine.embedding_cache import EmbeddingKey
from ..errors import InputError
from ..slides.boxes import TileBox
from .project_objects import SlideRef, StoredObject, StoredTile

VERSION = 1  # of the manifest and of every object's .json; a store of a newer version is refused


def object_record(object_id: str, class_name: str, origin: str, accepted_at: str, slide: SlideRef, predictor,
                  decoder: dict | None, signature: tuple, tiles: list, keys: list[EmbeddingKey]) -> dict:
    """The record of an object (its masks' file name is added by the store): ``tiles`` are its
    ``TileExample``s, ``keys`` their embeddings' keys, ``predictor`` the one that made them."""
    return {
        "version": VERSION, "object_id": str(object_id), "class": str(class_name), "origin": origin,
        "accepted_at": accepted_at, "slide": asdict(slide),
        "model": predictor.model.name, "weights_hash": predictor.model.weights_hash,
        "decoder": dict(decoder or {}), "signature": [_plain(v) for v in signature],
        "tiles": [{"box": _box_json(t.box), "embedding_key": asdict(key),
                   "clicks": [[float(x), float(y), bool(p)] for x, y, p in t.clicks],
                   "mask_shape": list(np.shape(t.target))} for t, key in zip(tiles, keys)],
    }


def read_object_record(path: Path) -> StoredObject:
    """The object a record describes; ``InputError`` naming the file when it cannot be read or was
    written by a newer version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = int(data.get("version", 0))
        if version > VERSION:
            raise InputError(f"{path} was written by a newer napari-sam-histo (object format version {version}; "
                             f"this one reads up to {VERSION}); it is left out.")
        slide = SlideRef(**data["slide"])
        tiles = tuple(StoredTile(_box_from(t["box"]), EmbeddingKey(**t["embedding_key"]),
                                 tuple((float(x), float(y), bool(p)) for x, y, p in t["clicks"]))
                      for t in data["tiles"])
        return StoredObject(path.stem, str(data["object_id"]), str(data["class"]), slide, str(data["accepted_at"]),
                            str(data["origin"]), str(data["model"]), str(data["weights_hash"]),
                            dict(data.get("decoder") or {}), tiles, str(data["masks"]),
                            tuple(data.get("signature") or ()))
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not a readable project object ({type(err).__name__}: {err}); "
                         "it is left out.") from err


def _box_json(box: TileBox) -> dict:
    return {"level": box.level, "x": box.x, "y": box.y, "width": box.width, "height": box.height,
            "downsample": box.downsample, "virtual": box.virtual, "level0_box": list(box.level0_box)}


def _box_from(data: dict) -> TileBox:
    return TileBox(int(data["level"]), int(data["x"]), int(data["y"]), int(data["width"]), int(data["height"]),
                   float(data["downsample"]), bool(data.get("virtual", False)))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value

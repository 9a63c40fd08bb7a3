"""The messages a user reads for a bad file or value: one line, naming the file or value, saying
what is wrong, raised as the project's error classes (so the CLI and the docks show them without a
traceback). No Qt, no network."""

import errno
import json
import os
import pathlib

import numpy as np
import pytest
import torch

from napari_sam_histo.cli import main
from napari_sam_histo.errors import CheckpointError, InputError, SamHistoError

from ..conftest import SAMPLE_SLIDE


def _one_clear_line(err: BaseException, *names: str) -> str:
    assert isinstance(err, SamHistoError)
    message = str(err)
    assert "\n" not in message and "Traceback" not in message
    for name in names:
        assert name in message
    return message


# --- B1: a checkpoint that is no PyTorch checkpoint ----------------------------------------------

NOT_CHECKPOINTS = {
    "random.pt": os.urandom(2048),
    "notes.pt": b"these are not weights\n",
    "empty.pt": b"",
    "page.pth": b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>",
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_model_and_decoder_paths_that_are_no_checkpoint(tmp_path, tiny_model, empty_cache, name):
    from napari_sam_histo.models.decoders import choose_decoder
    from napari_sam_histo.models.registry import load_model

    path = tmp_path / name
    path.write_bytes(NOT_CHECKPOINTS[name])
    for load in (lambda: load_model(str(path), "cpu"), lambda: choose_decoder(tiny_model, str(path))):
        with pytest.raises(CheckpointError) as caught:
            load()
        message = _one_clear_line(caught.value, str(path))
        assert message.startswith(f"{path} is not a PyTorch checkpoint (")
        assert "run code" not in message


def test_a_truncated_zip_checkpoint(tmp_path, tiny_model, empty_cache):
    from napari_sam_histo.models.registry import load_model

    path = tmp_path / "cut.pt"
    torch.save(tiny_model.sam.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(CheckpointError) as caught:
        load_model(str(path), "cpu")
    assert _one_clear_line(caught.value).startswith(f"{path} is not a PyTorch checkpoint (truncated or corrupt")


def test_only_real_pickled_code_gets_the_code_refusal(tmp_path, empty_cache):
    from napari_sam_histo.models.registry import load_model

    path = tmp_path / "code.pt"
    torch.save({"weights": torch.zeros(2), "callback": pathlib.PurePosixPath("x")}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model(str(path), "cpu")
    message = _one_clear_line(caught.value, str(path))
    assert "would run code from the file" in message and "PurePosixPath" in message


def test_the_cli_prints_one_line_for_a_model_file_that_is_no_checkpoint(tmp_path, capsys, empty_cache):
    path = tmp_path / "sam.pt"
    path.write_bytes(b"\x00\x01garbage" * 50)
    assert main(["perf", "--model", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"napari-sam-histo: {path} is not a PyTorch checkpoint (") and "\n" not in err


# --- B2: empty and truncated slides -----------------------------------------------------------

def _geojson(tmp_path):
    path = tmp_path / "ann.geojson"
    square = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "Tumor"}}}]}))
    return path


@pytest.mark.parametrize("name, cut, words", [
    ("empty.svs", 0, "empty.svs is empty (0 bytes)"),
    ("empty.tif", 0, "empty.tif is empty (0 bytes)"),
    ("half.svs", 2, "half.svs is truncated or damaged ({} bytes"),
    ("half.tif", 2, "half.tif is truncated or damaged ({} bytes"),
])
def test_empty_and_truncated_slides_through_the_cli(tmp_path, capsys, name, cut, words):
    data = SAMPLE_SLIDE.read_bytes()
    kept = data[: len(data) // cut] if cut else b""
    (tmp_path / name).write_bytes(kept)
    code = main(["prepare", str(tmp_path / name), "--annotations", str(_geojson(tmp_path)),
                 "--magnification", "10", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("napari-sam-histo: ") and words.format(len(kept)) in err
    assert "not recognise" not in err


# --- B3: a full disk ---------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_exporting_geojson_from_napari(tmp_path, monkeypatch):
    from napari_sam_histo._napari.writers import write_shapes_geojson

    target = tmp_path / "slide.geojson"
    target.write_text("previous export")
    monkeypatch.setattr(pathlib.Path, "write_text", _no_space)
    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)
    with pytest.raises(InputError) as caught:
        write_shapes_geojson(str(target), [square], {"shape_type": ["polygon"], "metadata": {}})
    monkeypatch.undo()
    _one_clear_line(caught.value, str(target), "the disk is full")
    assert target.read_text() == "previous export" and os.listdir(tmp_path) == ["slide.geojson"]


def test_a_full_disk_while_saving_a_decoder_checkpoint(tmp_path, tiny_model, monkeypatch):
    from napari_sam_histo.models import decoder_checkpoint
    from napari_sam_histo.models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as stream:
            stream.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")  # no errno

    monkeypatch.setattr(decoder_checkpoint.torch, "save", full)
    from napari_sam_histo import atomic

    usage = atomic.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage._replace(free=0))
    meta = decoder_metadata("sam", tiny_model.name, tiny_model.weights_hash, "md", True)
    with pytest.raises(InputError) as caught:
        save_decoder_checkpoint(tmp_path / "decoder.pt", tiny_model.sam.mask_decoder, meta)
    monkeypatch.undo()
    _one_clear_line(caught.value, str(tmp_path / "decoder.pt"), "the disk is full")
    assert os.listdir(tmp_path) == []


# --- B4: an unknown decoder name ----------------------------------------------------------------

def test_an_unknown_decoder_name_lists_the_valid_names(tiny_model):
    from napari_sam_histo.engine.predictor import Predictor

    with pytest.raises(InputError) as caught:
        Predictor(tiny_model, decoder="mdd")
    _one_clear_line(caught.value, "'mdd'", "'sam'", "'modified'", "'md'", "decoder checkpoint file")

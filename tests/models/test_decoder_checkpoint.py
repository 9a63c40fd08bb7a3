import pytest
import torch

from napari_sam_histo.errors import CheckpointError, InputError
from napari_sam_histo.models.decoder_checkpoint import decoder_metadata, read_decoder_checkpoint, save_decoder_checkpoint
from napari_sam_histo.models.decoders import choose_decoder
from napari_sam_histo.models.modified_decoder import ModifiedMaskDecoder
from napari_sam_histo.models.registry import random_model


def _save(tmp_path, model, trained=True, kind="modified", base_hash=None):
    decoder = ModifiedMaskDecoder.from_sam_decoder(model.sam.mask_decoder)
    with torch.no_grad():
        decoder.mask_head.bias.fill_(3.5)  # a recognisable trained value
    meta = decoder_metadata(kind, model.name, base_hash or model.weights_hash, "modified", trained,
                            metrics={"noc@85": 4.2})
    return save_decoder_checkpoint(tmp_path / "dec.pt", decoder, meta)


def test_round_trip_keeps_weights_and_metadata(tmp_path, tiny_model):
    path = _save(tmp_path, tiny_model)
    meta, state = read_decoder_checkpoint(path)
    assert meta["decoder_kind"] == "modified" and meta["base_model"] == tiny_model.name
    assert meta["metrics"] == {"noc@85": 4.2} and meta["trained"] is True and meta["created"]
    choice = choose_decoder(tiny_model, str(path))
    assert choice.kind == "modified" and choice.trained
    assert torch.all(choice.module.mask_head.bias == 3.5)
    assert not list(tmp_path.glob("*.tmp"))


def test_decoder_for_another_base_model_is_refused(tmp_path, tiny_model):
    other = random_model("tiny", "cpu", seed=1)
    path = _save(tmp_path, tiny_model, base_hash="sha256:" + "0" * 64)
    with pytest.raises(CheckpointError, match="was trained for base model"):
        choose_decoder(other, str(path))


def test_untrained_modified_decoder_is_never_used_silently(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="No trained modified decoder"):
        choose_decoder(tiny_model, "modified")
    path = _save(tmp_path, tiny_model, trained=False)
    with pytest.raises(CheckpointError, match="untrained"):
        choose_decoder(tiny_model, str(path))
    assert not choose_decoder(tiny_model, "modified", allow_untrained=True).trained


def test_a_whole_sam_checkpoint_is_not_a_decoder(tmp_path, tiny_model):
    path = tmp_path / "sam.pt"
    torch.save(tiny_model.sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a napari-sam-histo decoder checkpoint"):
        choose_decoder(tiny_model, str(path))


@pytest.mark.parametrize("name", ["samm", "modifed", "", "decoders/none.pt"])
def test_an_unknown_decoder_lists_the_valid_ones(tmp_path, tiny_model, name):
    with pytest.raises(InputError) as caught:
        choose_decoder(tiny_model, name)
    message = str(caught.value)
    for valid in ("'sam'", "'modified'", "'md'", "path of a decoder checkpoint"):
        assert valid in message
    if name:
        assert name in message  # the value that was given
    assert "Traceback" not in message


def test_decoder_names_are_case_insensitive(tiny_model):
    assert choose_decoder(tiny_model, "SAM").kind == "sam"
    assert choose_decoder(tiny_model, " Sam ").module is tiny_model.sam.mask_decoder


@pytest.mark.parametrize("content, words", [
    (bytes(range(256)) * 8, "starts with bytes"),
    (b"decoder weights: see the shared drive\n", "it is text"),
    (b"", "empty, 0 bytes"),
])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, tiny_model, content, words):
    path = tmp_path / "decoder.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"decoder\.pt is not a PyTorch checkpoint \(.*" + words) as caught:
        choose_decoder(tiny_model, str(path))
    assert "run code" not in str(caught.value)


def test_a_truncated_decoder_checkpoint_is_named_as_such(tmp_path, tiny_model):
    path = _save(tmp_path, tiny_model)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"dec\.pt is not a PyTorch checkpoint \(truncated or corrupt"):
        choose_decoder(tiny_model, str(path))


class _Code:
    pass


def test_a_decoder_checkpoint_with_pickled_code_is_refused_as_code(tmp_path, tiny_model):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-sam-histo-decoder", "hook": _Code()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt holds Python objects .* would run code .*_Code"):
        choose_decoder(tiny_model, str(path))


class _RunsCode:
    """Unpickling this calls ``os.system``: the kind of file ``weights_only`` is there to refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])  # torch.save's default (GLOBAL) and STACK_GLOBAL
def test_a_checkpoint_whose_pickle_calls_a_function_is_refused_as_code_not_as_corrupt(tmp_path, tiny_model,
                                                                                      protocol):
    from napari_sam_histo.models.state_dict import read_checkpoint

    marker = tmp_path / "it ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-sam-histo-decoder", "weights": torch.zeros(2), "hook": _RunsCode(marker)},
               path, pickle_protocol=protocol)
    for load in (lambda: read_checkpoint(path), lambda: choose_decoder(tiny_model, str(path))):
        with pytest.raises(CheckpointError) as caught:
            load()
        message = str(caught.value)
        assert message.startswith(f"{path} holds Python objects other than tensors")
        assert "loading it would run code from the file" in message and "system" in message
        assert "corrupt" not in message and "Traceback" not in message
    assert not marker.exists()


@pytest.mark.parametrize("damage", [lambda pkl: pkl[: len(pkl) // 2],  # torch: UnpicklingError
                                    lambda pkl: pkl[: len(pkl) // 2] + b"\xff" * (len(pkl) - len(pkl) // 2)])
def test_a_checkpoint_whose_pickle_is_damaged_inside_an_intact_zip_is_corrupt(tmp_path, damage):
    import zipfile

    from napari_sam_histo.models.state_dict import read_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"weights": torch.zeros(2)}, good)
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = damage(data)
            target.writestr(info, data)
    with pytest.raises(CheckpointError, match=r"damaged\.pt: the file is truncated or corrupt") as caught:
        read_checkpoint(path)
    assert "run code" not in str(caught.value)

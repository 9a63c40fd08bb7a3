"""The annotating session a UI asks for (``assembly.annotating``), built without Qt."""

import numpy as np
import pytest

from napari_sam_histo.assembly.annotating import (
    AnnotatorConfig,
    SlideFile,
    SlidePixels,
    assemble,
    build_annotator,
    carry_learning,
    open_slide,
)
from napari_sam_histo.errors import InputError
from napari_sam_histo.slides.reader import from_array

IMAGE = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)


@pytest.fixture
def loader(tiny_model):
    asked = []
    return asked, lambda name, device: asked.append((name, device)) or tiny_model


def test_the_config_chooses_the_model_level_tile_and_growth(loader, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_HISTO_EMBEDDINGS", str(tmp_path / "stores"))
    asked, load = loader
    config = AnnotatorConfig("tiny", "sam", "cpu", level="auto", tile_size=256, continuation=True,
                             embeddings_on_disk=True)
    annotator, source = assemble(config, SlidePixels(IMAGE, "pixels.png"), load_model=load)
    try:
        assert asked == [("tiny", "cpu")] and source.name == "pixels.png"
        assert annotator.auto and annotator.tile_size == 256 and annotator.continuation
        assert annotator.predictor.cache.store_dir.parent == tmp_path / "stores"
        assert annotator.adaptation is not None and not annotator.adaptation.enabled  # learning is off until asked
    finally:
        annotator.close(wait=True)


def test_embeddings_stay_in_memory_unless_asked(loader):
    annotator = build_annotator(AnnotatorConfig("tiny", device="cpu", learning=True), from_array(IMAGE, "a"),
                                load_model=loader[1])
    try:
        assert annotator.predictor.cache.store_dir is None and annotator.level == 0
        assert annotator.adaptation.enabled
    finally:
        annotator.close(wait=True)


def test_a_slide_that_cannot_be_opened_is_named(loader, tmp_path):
    with pytest.raises(InputError, match="missing.svs"):
        assemble(AnnotatorConfig("tiny"), SlideFile(tmp_path / "missing.svs"), load_model=loader[1])


def test_a_failed_build_closes_the_slide_it_opened_and_not_a_reused_one(monkeypatch):
    closed = []
    source = from_array(IMAGE, "a")
    monkeypatch.setattr(source, "close", lambda: closed.append("reused"))

    def broken(name, device):
        raise InputError("no such model")

    with pytest.raises(InputError, match="no such model"):
        assemble(AnnotatorConfig("tiny"), None, reused=source, load_model=broken)
    assert closed == []
    opened = from_array(IMAGE, "b")
    monkeypatch.setattr(opened, "close", lambda: closed.append("opened"))
    monkeypatch.setattr("napari_sam_histo.assembly.annotating.open_slide", lambda spec: opened)
    with pytest.raises(InputError):
        assemble(AnnotatorConfig("tiny"), SlidePixels(IMAGE, "b"), load_model=broken)
    assert closed == ["opened"]


def test_open_slide_reads_pixels_and_files(tmp_path):
    import tifffile

    assert open_slide(SlidePixels(IMAGE, "p")).level_dimensions[0] == (400, 300)
    tifffile.imwrite(tmp_path / "f.tif", IMAGE)
    source = open_slide(SlideFile(tmp_path / "f.tif"))
    try:
        assert source.level_dimensions[0] == (400, 300)
    finally:
        source.close()


def test_a_new_start_on_the_same_slide_carries_what_was_learned(loader):
    load = loader[1]
    source = from_array(IMAGE, "a")
    first = build_annotator(AnnotatorConfig("tiny", device="cpu", learning=True), source, load_model=load)
    learnt = first.adaptation
    second = build_annotator(AnnotatorConfig("tiny", device="cpu"), source, learnt=learnt, load_model=load)
    other = build_annotator(AnnotatorConfig("tiny", device="cpu"), from_array(IMAGE[::-1].copy(), "b"),
                            learnt=learnt, load_model=load)
    try:
        assert second.adaptation is None  # handed on once the first annotator is stopped
        assert other.adaptation is not None and other.adaptation is not learnt  # another slide: its own
        carry_learning(second, first, enabled=False)
        assert second.adaptation is learnt and first.adaptation is None and learnt.enabled
        third = build_annotator(AnnotatorConfig("tiny", device="cpu"), source, learnt=learnt, load_model=load)
        learnt_again = third.adaptation
        carry_learning(third, None, enabled=False)  # the old one went meanwhile: a fresh start
        assert learnt_again is None and third.adaptation is not learnt and not third.adaptation.enabled
        third.close(wait=True)
    finally:
        for annotator in (first, second, other):
            annotator.close(wait=True)


def test_importing_the_assembly_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, napari_sam_histo.assembly.annotating; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

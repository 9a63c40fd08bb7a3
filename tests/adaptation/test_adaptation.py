"""Background decoder adaptation: the example store, determinism, the never-worse gate, the worker
yielding to clicks, saving, and every decoder kind (tiny random SAM for mechanics, MobileSAM for
the gate's behaviour)."""

import threading
import time

import numpy as np
import pytest
import torch

from napari_sam_histo.adaptation.decoder_adapter import DecoderAdapter
from napari_sam_histo.adaptation.worker import AdaptationWorker
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.models.decoders import build_decoder_from_checkpoint, choose_decoder
from napari_sam_histo.training.examples import AdaptationExample

from ..discs import disc_image


def _examples(predictor, n, seed=0):
    out = []
    for i in range(n):
        image, target = disc_image(128, centre=(50 + 3 * i, 60 + 2 * i), radius=20 + i, seed=seed + i)
        out.append(AdaptationExample(predictor.embed(image), target))
    return out


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model):
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


@pytest.mark.slow
def test_every_third_example_is_held_out_and_training_examples_owe_steps(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=5)
    examples = _examples(tiny_predictor, 6)
    for example in examples:
        adapter.add_example(example)
    adapter.add_example(AdaptationExample(examples[0].embedding, np.zeros((128, 128), bool)))  # empty: ignored
    state = adapter.state()
    assert (state.examples, state.held_out, state.owed, state.steps) == (4, 2, 20, 0)
    assert adapter.held_out == [examples[2], examples[5]]
    assert adapter.active_predictor() is tiny_predictor  # nothing judged yet


@pytest.mark.parametrize("decoder", ["sam", "modified", "residual"])
@pytest.mark.slow
def test_every_decoder_kind_adapts_a_copy_and_never_the_base(tiny_model, decoder):
    if decoder == "residual":
        from napari_sam_histo.models.decoders import DecoderChoice
        from napari_sam_histo.models.residual_decoder import ResidualMaskDecoder

        choice = DecoderChoice("residual", ResidualMaskDecoder.from_sam_decoder(tiny_model.sam.mask_decoder).eval(),
                               "untrained", False)
    else:
        choice = choose_decoder(tiny_model, decoder, allow_untrained=True)
    predictor = Predictor(tiny_model, choice, cache=EmbeddingCache(), precision="fp32")
    base_before = {k: v.clone() for k, v in choice.module.state_dict().items()}
    adapter = DecoderAdapter(predictor, steps_per_object=3, lr=1e-3)
    for example in _examples(predictor, 2):
        adapter.add_example(example)
    losses = [adapter.step() for _ in range(6)]
    assert all(np.isfinite(loss) for loss in losses) and adapter.step() is None  # 6 owed, then none
    if decoder == "sam":  # SAM's own decoder adapts through a correction that starts at zero
        assert adapter.kind == "residual"
        changed = any(v.abs().sum() > 0 for v in adapter.decoder.correction.out.state_dict().values())
    elif decoder == "residual":
        changed = any(not torch.equal(v, base_before[f"correction.{k}"])
                      for k, v in adapter.decoder.correction.state_dict().items())
    else:
        changed = any(not torch.equal(v, base_before[k]) for k, v in adapter.decoder.state_dict().items())
    assert changed
    for key, value in choice.module.state_dict().items():
        assert torch.equal(value, base_before[key]), key  # the base decoder never trains
    assert all(p.grad is None for p in tiny_model.sam.prompt_encoder.parameters())


@pytest.mark.slow
def test_adaptation_is_deterministic_under_a_seed(tiny_predictor):
    weights = []
    for _ in range(2):
        adapter = DecoderAdapter(tiny_predictor, steps_per_object=3, lr=1e-3, seed=7)
        for example in _examples(tiny_predictor, 2):
            adapter.add_example(example)
        while adapter.step() is not None:
            pass
        weights.append(adapter.decoder.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_the_worker_pauses_while_a_click_runs_and_resumes_after(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=4, lr=1e-3)
    busy = threading.Event()
    busy.set()  # a click is running
    # at normal priority: what is tested is the pause, not how a loaded machine shares its CPU
    worker = AdaptationWorker(adapter, may_run=lambda: not busy.is_set(), low_priority=False)
    try:
        for future in [worker.add_example(example) for example in _examples(tiny_predictor, 2)]:
            future.result(timeout=60)  # added (the worker does it between steps)
        time.sleep(0.5)
        assert adapter.steps == 0 and adapter.owed == 8  # nothing ran while the click did
        busy.clear()
        assert worker.wait_idle(60)
        assert adapter.steps == 8 and adapter.owed == 0 and worker.error is None
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_click_queued_during_adaptation_runs_before_the_next_step(tiny_model):
    from napari_sam_histo.engine.annotator import Annotator
    from napari_sam_histo.slides.reader import from_array

    image, _ = disc_image(256, centre=(60, 70), radius=30)
    source = from_array(image, "disc.png")
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    annotator = Annotator(predictor, source, level=0, tile_size=256)
    adapter = DecoderAdapter(predictor, steps_per_object=40, lr=1e-3)
    steps_at_click = []
    original_step = adapter.step

    def step():
        # records, for every step, whether a click was queued when it started
        steps_at_click.append(not annotator.idle)
        return original_step()

    adapter.step = step
    worker = AdaptationWorker(adapter, may_run=lambda: annotator.idle)
    try:
        for example in _examples(predictor, 2):
            worker.add_example(example)
        time.sleep(0.2)
        future = annotator.submit_click(100, 100, True)
        future.result(timeout=60)
        assert worker.wait_idle(600)  # the worker runs at the lowest priority: slow on a loaded machine
    finally:
        worker.stop()
        annotator.close(wait=True)
    assert len(steps_at_click) == 80
    # at most the one step already running when the click came started with a click queued
    assert sum(steps_at_click) <= 1


@pytest.mark.slow
def test_the_gate_keeps_the_base_decoder_when_the_copy_is_worse(mobile_sam):
    predictor = Predictor(mobile_sam, "sam", cache=EmbeddingCache(), precision="fp32")
    adapter = DecoderAdapter(predictor, steps_per_object=1, lr=1e-6)
    for example in _examples(predictor, 3):
        adapter.add_example(example)
    adapter.step()
    with torch.no_grad():  # sabotage the copy: its correction erases every mask
        adapter.decoder.correction.out.bias.fill_(-100.0)
    assert adapter.update_gate() is False
    state = adapter.state()
    assert not state.in_use and state.adapted_noc > state.base_noc
    assert adapter.active_predictor() is predictor


def test_the_gate_takes_only_a_strictly_better_copy_on_enough_held_out_objects(tiny_model, monkeypatch):
    from napari_sam_histo.adaptation import decoder_adapter
    from napari_sam_histo.training.reclick import Reclick

    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    adapter = DecoderAdapter(predictor, steps_per_object=1)
    for example in _examples(predictor, 3):  # one held out: too few
        adapter.add_example(example)
    adapter.step()
    scores = {"base": Reclick(5, 0.5), "adapted": Reclick(3, 0.6)}
    monkeypatch.setattr(decoder_adapter, "reclick",
                        lambda p, example: scores["base" if p is predictor else "adapted"])
    assert adapter.update_gate() is False
    for example in _examples(predictor, 3, seed=10):  # a second one held out: still too few
        adapter.add_example(example)
    assert adapter.update_gate() is False
    for example in _examples(predictor, 3, seed=20):  # a third one
        adapter.add_example(example)
    adapter.step()
    scores["adapted"] = Reclick(5, 0.9)  # a tie in clicks is not enough, whatever the IoU
    assert adapter.update_gate() is False
    scores["adapted"] = Reclick(4, 0.1)
    assert adapter.update_gate() is False  # the same copy is not judged twice
    adapter.step()
    assert adapter.update_gate() is True and adapter.state().adapted_noc == 4
    adapted = adapter.active_predictor()
    assert adapted is not predictor and adapted.decoder.source == "adapted"
    adapter.enabled = False
    assert adapter.active_predictor() is predictor
    adapter.enabled = True
    adapter.reset()
    assert adapter.active_predictor() is predictor and adapter.state().examples == 0


def test_a_saved_adapted_decoder_loads_back_as_a_checkpoint(tiny_model, tmp_path):
    predictor = Predictor(tiny_model, choose_decoder(tiny_model, "modified", allow_untrained=True),
                          cache=EmbeddingCache(), precision="fp32")
    # the decoder's own weights (the slide prior's round trip: test_slide_prior)
    adapter = DecoderAdapter(predictor, steps_per_object=2, lr=1e-3, prior_weight=0)
    examples = _examples(predictor, 2)
    for example in examples:
        adapter.add_example(example)
    while adapter.step() is not None:
        pass
    path = adapter.save(tmp_path / "adapted.pt", slide="slide-1.svs")
    loaded = build_decoder_from_checkpoint(tiny_model, path)
    assert loaded.kind == "modified" and loaded.trained
    reloaded = Predictor(tiny_model, loaded, cache=EmbeddingCache(), precision="fp32")
    snapshot = adapter.snapshot_predictor()
    points, labels = np.array([[60.0, 50.0]]), np.array([1])
    a = reloaded.decode(examples[0].embedding, points, labels).low_res_logits
    b = snapshot.decode(examples[0].embedding, points, labels).low_res_logits
    assert torch.allclose(a, b, atol=1e-5)
    from napari_sam_histo.models.decoder_checkpoint import read_decoder_checkpoint

    metadata, _ = read_decoder_checkpoint(path)
    assert metadata["training_scenario"] == "adapted" and metadata["config"]["adapted_on"] == "slide-1.svs"


def test_a_reset_during_a_gate_keeps_the_old_copy_out(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=1, lr=1e-3)
    for example in _examples(tiny_predictor, 3):
        adapter.add_example(example)
    adapter.step()
    calls = []

    def may_run():
        calls.append(1)
        if len(calls) == 2:  # (the first call is before the candidate is built)
            adapter.reset()  # the user presses Reset while the gate re-clicks
        return True

    assert adapter.update_gate(may_run) is None
    assert adapter.active_predictor() is tiny_predictor and adapter.state().examples == 0


def test_the_adapted_predictor_keeps_the_base_encoder_settings_and_cache(tiny_model):
    base = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32", encoder_mode="eager")
    base.wait_for_optimized_encoder = False
    adapter = DecoderAdapter(base, steps_per_object=1)
    copy = adapter.snapshot_predictor()
    assert copy.cache is base.cache and copy.preprocessing_id == base.preprocessing_id
    assert (copy.encoder_mode, copy.wait_for_optimized_encoder) == ("eager", False)


def test_an_untrained_copy_of_sams_decoder_answers_exactly_as_sam_with_its_three_candidates(tiny_model, tmp_path):
    """SAM's own decoder adapts through a zero-initialised correction: before any step the copy is
    SAM (first click: three candidates ranked by SAM's IoU head; later clicks single mask), and a
    saved copy loads back as a residual decoder checkpoint."""
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    adapter = DecoderAdapter(predictor, steps_per_object=1)
    copy = adapter.snapshot_predictor()
    assert copy.decoder.kind == "residual"
    embedding = _examples(predictor, 1)[0].embedding
    for multimask in (True, False):
        a = predictor.decode(embedding, np.array([[60.0, 50.0]]), np.array([1]), multimask=multimask)
        b = copy.decode(embedding, np.array([[60.0, 50.0]]), np.array([1]), multimask=multimask)
        assert torch.allclose(a.low_res_logits, b.low_res_logits, atol=1e-5)
    metadata_path = adapter.save(tmp_path / "adapted.pt", slide="s.svs")
    loaded = build_decoder_from_checkpoint(tiny_model, metadata_path)
    assert loaded.kind == "residual"


def test_an_objects_tiles_stay_on_one_side_and_memory_stays_bounded(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=1, max_examples=6)
    tiles = _examples(tiny_predictor, 2)
    for i in range(1, 7):  # six objects of two tiles each: objects 3 and 6 are held out whole
        adapter.add_object(tiles, key=f"object-{i}")
        if i == 3:
            assert adapter.state().held_out == 2 and adapter.state().held_out_objects == 1
    state = adapter.state()
    assert state.examples + state.held_out <= 6 and state.held_out <= 2 and state.examples >= 2
    assert {t[1] for t in adapter._held} == {"object-6"}  # the newest held-out object, both its tiles
    assert adapter.remove_object("object-6") == 2 and adapter.state().held_out == 0
    assert adapter.remove_object("no such object") == 0


def test_a_stopped_worker_cancels_what_is_handed_to_it(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=1)
    worker = AdaptationWorker(adapter, may_run=lambda: True)
    worker.stop(release=True)
    assert worker.submit(lambda: 1).cancelled() and worker.wait_idle(5)


@pytest.mark.slow
def test_a_thread_busy_with_its_own_background_work_lets_steps_run_between_its_units(tiny_predictor):
    """A prefetcher computing embeddings back to back keeps ``may_run`` false all along: without
    ``take_turn`` between its units no step runs; with it, steps run between them."""
    for turns in (False, True):
        adapter = DecoderAdapter(tiny_predictor, steps_per_object=50, refiner=False)
        busy = threading.Event()
        busy.set()
        worker = AdaptationWorker(adapter, lambda busy=busy: not busy.is_set(), low_priority=False)
        try:
            worker.submit(lambda adapter=adapter: adapter.add_object(_examples(tiny_predictor, 1)[:1])).result(timeout=60)
            for _ in range(8):  # eight "embeddings"
                if turns:
                    busy.clear()  # between two of them nothing runs: a turn for the worker
                    worker.take_turn(timeout=10)
                    busy.set()
                time.sleep(0.1)
            steps = adapter.steps
        finally:
            worker.stop()
        assert steps >= 8 if turns else steps == 0


def test_a_new_objects_first_steps_run_before_the_refiner_relearns_it(tiny_predictor):
    adapter = DecoderAdapter(tiny_predictor, steps_per_object=3)
    order = []
    step, refine = adapter.step, adapter.update_refiner
    adapter.step = lambda: (order.append("step"), step())[1]
    adapter.update_refiner = lambda may_run=None: (order.append("refiner"), refine(may_run))[1]
    examples = _examples(tiny_predictor, 1)
    examples = [AdaptationExample(e.embedding, e.target, e.clicks, image=np.full((*e.target.shape, 3), 128, np.uint8))
                for e in examples]
    worker = AdaptationWorker(adapter, lambda: True, low_priority=False)
    try:
        worker.submit(lambda: adapter.add_object(examples[:1], key="a"))
        assert worker.wait_idle(600)  # the worker runs at the lowest priority: slow on a loaded machine
    finally:
        worker.stop()
    assert order[0] == "step" and "refiner" in order and adapter.steps == 3

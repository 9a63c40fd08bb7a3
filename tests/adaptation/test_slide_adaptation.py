"""The annotator learning from accepted objects (adaptation.slide_adaptation): examples cut from an
accepted object's tiles, the next object decoding with what the adapter offers, Accept never
waiting for a step, switch off and reset (tiny random SAM: mechanics)."""

import threading

import numpy as np
import pytest

from napari_sam_histo.adaptation.slide_adaptation import SlideAdaptation
from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.blending import Blend
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array
from napari_sam_histo.training.examples import tile_examples


class _Session:
    def __init__(self, box, clicks=()):
        from napari_sam_histo.engine.session import Click

        self.box = box
        self.embedding = object()
        self.clicks = tuple(Click(*c) for c in clicks)


def test_examples_are_the_accepted_mask_cut_to_each_tile_at_the_finest_level():
    fine_a, fine_b = TileBox(0, 0, 0, 100, 100, 1.0), TileBox(0, 50, 0, 100, 100, 1.0)
    coarse = TileBox(1, 0, 0, 100, 100, 4.0)
    mask = np.zeros((100, 150), bool)
    mask[10:30, 40:120] = True  # crosses the border of the two fine tiles
    blended = Blend(1.0, 0, 0, np.where(mask, 5.0, -5.0).astype(np.float32))
    sessions = [_Session(fine_a, [(45, 20, True)]), _Session(fine_b), _Session(coarse, [(3, 3, True)])]
    examples = tile_examples(sessions, blended)
    assert len(examples) == 2  # the coarse tile gives none
    assert examples[0].target.shape == (100, 100) and examples[0].target.sum() == 20 * 60
    assert examples[1].target[10:30, 0:70].all() and examples[1].target.sum() == 20 * 70
    assert examples[0].clicks == ((45, 20, True),)
    edited = np.zeros((10, 10), bool)
    edited[2:5, 2:5] = True  # a hand-corrected mask replaces SAM's
    by_hand = tile_examples(sessions[:1], blended, ((60, 60), edited, 1.0))
    assert by_hand[0].target.sum() == 9 and by_hand[0].target[62:65, 62:65].all()
    assert tile_examples(sessions, None) == [] and tile_examples([], blended) == []


def _disc(size=256):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (yy - 120) ** 2 + (xx - 130) ** 2 < 40 ** 2
    image = np.where(inside[..., None], [120, 50, 150], [235, 200, 220]) + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def annotator(tiny_model):
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    annotator = Annotator(predictor, from_array(_disc(), "disc.png"), level=0, tile_size=256)
    yield annotator
    annotator.close(wait=True)


@pytest.mark.slow
def test_accepted_objects_teach_the_adapter_and_the_next_object_uses_what_it_offers(annotator):
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=2)
    annotator.adaptation = adaptation
    annotator.submit_click(130, 120, True).result(timeout=120)
    obj = annotator.submit_accept().result(timeout=60)
    assert obj is not None and obj.properties["adapted"] is False
    assert adaptation.worker.wait_idle(120) and adaptation.worker.error is None
    state = adaptation.state()
    assert state.examples == 1 and state.steps == 2 and state.owed == 0
    example = adaptation.adapter.examples[0]
    assert example.target.shape == (256, 256) and example.target.any()
    assert tuple(example.embedding.original_size) == (256, 256)  # the tile's own embedding, no new encoder call

    offered = Predictor(annotator.predictor.model, "sam", cache=annotator.predictor.cache, precision="fp32")
    adaptation.predictor = lambda: offered  # as if the copy had passed the gate
    annotator.submit_click(130, 120, True).result(timeout=120)
    assert all(s.predictor is offered for s in annotator.object.active_sessions())
    assert annotator.submit_accept().result(timeout=60).properties["adapted"] is True


@pytest.mark.slow
def test_accept_never_waits_for_a_step_under_way(annotator):
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=3)
    annotator.adaptation = adaptation
    running, release = threading.Event(), threading.Event()
    original = adaptation.adapter.step

    def slow_step():
        with adaptation.adapter._lock:  # holds the adapter's lock, as a real step does
            running.set()
            release.wait(60)
            return original()

    adaptation.adapter.step = slow_step
    try:
        annotator.submit_click(130, 120, True).result(timeout=120)
        annotator.submit_accept().result(timeout=60)
        assert running.wait(60)  # a step holds the lock now
        annotator.submit_click(60, 60, True).result(timeout=120)
        accepted = annotator.submit_accept().result(timeout=60)  # done while the step still holds the lock
        assert accepted is not None
        assert adaptation.state().examples == 1  # read without the lock meanwhile
    finally:
        release.set()
    assert adaptation.worker.wait_idle(120)
    assert adaptation.state().examples == 2


@pytest.mark.slow
def test_switched_off_it_keeps_no_examples_and_reset_forgets_them(annotator):
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, enabled=False, steps_per_object=1)
    annotator.adaptation = adaptation
    annotator.submit_click(130, 120, True).result(timeout=120)
    annotator.submit_accept().result(timeout=60)
    assert adaptation.worker.wait_idle(60) and adaptation.state().examples == 0
    adaptation.enabled = True
    annotator.submit_click(130, 120, True).result(timeout=120)
    annotator.submit_accept().result(timeout=60)
    assert adaptation.worker.wait_idle(120) and adaptation.state().examples == 1
    adaptation.reset().result(timeout=60)
    assert adaptation.state().examples == 0 and adaptation.predictor() is annotator.predictor


# The agreement rule off for the refiners made by hand below: they are unlike SAM (to be
# recognised), which the rule would refuse; the rule itself: tests/engine/test_session.py.
NO_AGREEMENT = 0.0


@pytest.mark.slow
def test_the_slide_refiner_learns_in_the_background_and_refines_the_next_objects_tiles(annotator):
    """Accept hands over the tile's pixels as a function the adaptation's thread calls; the
    refiner it offers refines every tile of the next object (and the object says so)."""
    import torch

    from napari_sam_histo.models.slide_refiner import FEATURES, SlideRefiner, TileRefiner

    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=0)
    annotator.adaptation = adaptation
    annotator.submit_click(130, 120, True).result(timeout=120)
    annotator.submit_accept().result(timeout=60)
    assert adaptation.worker.wait_idle(120) and adaptation.worker.error is None
    example = adaptation.adapter.examples[0]
    assert callable(example.image) and np.array_equal(example.image(), _disc())  # read from the slide
    assert adaptation.state().refiner_pending == 0 and adaptation.adapter.refinement.refiner is not None
    assert adaptation.refiner() is None  # not judged yet: not offered

    weight = torch.zeros(FEATURES)
    weight[0] = -1.0  # the opposite of SAM: a refiner no one would keep, but easy to recognise
    offered = SlideRefiner(weight, 0.0, min_agreement=NO_AGREEMENT)
    adaptation.refiner = lambda: offered  # as if its gate had passed
    annotator.submit_click(130, 120, True).result(timeout=120)
    sessions = annotator.object.active_sessions()
    assert sessions and all(isinstance(s.refine, TileRefiner) and s.refine.refiner is offered for s in sessions)
    assert sessions[0].refined  # an object's first mask is the refined one
    assert annotator.state().refined  # what a UI draws says so
    assert annotator.submit_accept().result(timeout=60).properties["refined"] is True


def test_the_refiners_own_switch_offers_nothing_but_it_goes_on_learning(annotator):
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=0)
    seen = []
    adaptation.on_change = lambda sender, state: seen.append(state)
    fitted = object()
    adaptation.adapter.refinement.active = lambda: fitted  # as if fitted and judged better
    assert adaptation.refine_borders and adaptation.refiner() is fitted
    adaptation.refine_borders = False
    assert adaptation.refiner() is None and not seen[-1].refiner_enabled and not seen[-1].refiner_in_use
    adaptation.reset().result(timeout=60)  # Reset forgets what was learned, not the user's choice
    assert not adaptation.refine_borders
    adaptation.adapter.refinement.active = lambda: fitted
    adaptation.refine_borders = True
    assert adaptation.refiner() is fitted and seen[-1].refiner_enabled and seen[-1].refiner_in_use
    adaptation.enabled = False  # the whole panel's switch wins
    assert adaptation.refiner() is None
    adaptation.close()


def test_a_tile_opened_later_starts_from_the_objects_click_evidence(annotator):
    """The evidence is the object's: once its clicks favour SAM on one tile, a tile the object
    opens later starts from that, not from the refined mask again."""
    import torch

    from napari_sam_histo.models.slide_refiner import FEATURES, ClickEvidence, SlideRefiner

    weight = torch.zeros(FEATURES)
    weight[0] = -1.0
    offered = SlideRefiner(weight, 0.0)

    class _Adaptation:
        enabled = refine_borders = True

        def predictor(self):
            return annotator.predictor

        def refiner(self):
            return offered

        def add_object(self, *args, **kwargs):
            return 0

        def close(self, wait=True):
            pass

    annotator.adaptation = _Adaptation()
    annotator.submit_click(130, 120, True).result(timeout=120)
    first = annotator.object.active_sessions()[0]
    favour_sam = ClickEvidence(0.0, start="sam")
    favour_sam.loss = {"sam": 0.0, "refined": 50.0}
    first._history[-1].evidence = favour_sam  # as if the object's clicks had gone against the refiner
    tile = annotator.object._refine_for(first.box)
    assert tile.evidence is not None and tile.evidence.loss == favour_sam.loss and not tile.evidence.use_refined


@pytest.mark.slow
def test_a_tiles_colour_is_made_once_for_the_refiners_learning_and_the_next_objects_clicks(annotator):
    """The refiner's learning (background) makes the tile's colour features through the annotator,
    which keeps them: the next object's refined click on that tile reads no pixels and blurs
    nothing, and refines as the pixels would (float16 kept)."""
    import torch

    from napari_sam_histo.models.slide_refiner import FEATURES, SlideRefiner, TileRefiner

    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=0)
    annotator.adaptation = adaptation
    annotator.submit_click(130, 120, True).result(timeout=120)
    box = annotator.object.active_sessions()[0].box
    annotator.submit_accept().result(timeout=60)
    assert adaptation.worker.wait_idle(120) and adaptation.worker.error is None
    assert callable(adaptation.adapter.examples[0].colour)
    assert box.key() in annotator.object.colours.kept and adaptation.adapter.refinement.refiner is not None

    reads = []
    read_region = annotator.source.read_region
    annotator.source.read_region = lambda b: reads.append(b) or read_region(b)
    torch.manual_seed(0)
    offered = SlideRefiner(torch.randn(FEATURES), 0.5, min_agreement=NO_AGREEMENT)
    adaptation.refiner = lambda: offered
    annotator.submit_click(130, 120, True).result(timeout=120)
    session = annotator.object.active_sessions()[0]
    assert session.refined and reads == []  # the kept colour, not the pixels
    from_pixels = TileRefiner(offered, lambda: _disc())
    from_pixels(session.sam_logits)
    for kept, made in zip(session.refine._maps, from_pixels._maps):  # float16 colour, float32 pixels
        assert torch.allclose(kept, made, atol=1e-2 * float(made.abs().max()))
    assert torch.allclose(session.logits, from_pixels(session.sam_logits), atol=0.05)  # (the agreement rule is off)


def test_kept_colours_are_bounded_and_the_prefetcher_makes_them_only_while_a_refiner_is_offered(annotator):
    from napari_sam_histo.engine import tile_colours
    from napari_sam_histo.models.slide_refiner import SlideRefiner

    boxes = [TileBox(0, 10 * i, 0, 32, 32) for i in range(tile_colours.MAX_COLOUR_TILES + 2)]
    annotator.tile_colour(boxes[0])
    assert not annotator.object.colours.kept  # no adaptation (nor its refiner): nothing is kept
    annotator.adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=0)
    for box in boxes:
        annotator.tile_colour(box)
    kept = list(annotator.object.colours.kept)
    assert kept == [b.key() for b in boxes[2:]]  # the oldest went
    assert annotator.tile_colour(boxes[-1]) is annotator.object.colours.kept[boxes[-1].key()]  # kept, not made again
    annotator.adaptation.refine_borders = False  # the refiner switched off: the kept colour goes
    annotator.tile_colour(boxes[0])
    assert not annotator.object.colours.kept
    annotator.adaptation.close()

    class _Adaptation:
        enabled = refine_borders = True
        refiner_now = None

        def predictor(self):
            return annotator.predictor

        def take_turn(self, timeout=None):
            return False

        def refiner(self):
            return self.refiner_now

        def close(self, wait=True):
            pass

    annotator.object.colours.kept.clear()
    annotator.adaptation = fake = _Adaptation()
    done = annotator.prefetch_around(130, 120).result(timeout=120)
    assert done and not annotator.object.colours.kept  # no refiner offered: no colour made
    fake.refiner_now = SlideRefiner(np.zeros(19, np.float32), 0.0)
    done = annotator.prefetch_around(130, 120).result(timeout=120)
    assert done and {b.key() for b in done} <= set(annotator.object.colours.kept)


def test_the_prefetcher_makes_colour_for_its_first_tiles_only_and_keeps_them(tiny_model):
    """On a slide of 3 x 3 tiles the prefetcher's lattice has more tiles than are kept: it makes the
    colour of its first ``COLOUR_PREFETCH`` (the view's centre first), which later tiles do not push out."""
    from napari_sam_histo.engine import tile_colours
    from napari_sam_histo.models.slide_refiner import SlideRefiner

    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    big = np.tile(_disc(), (3, 3, 1))
    annotator = Annotator(predictor, from_array(big, "discs.png"), level=0, tile_size=256)
    try:
        annotator.adaptation = SlideAdaptation(predictor, annotator.quiet, steps_per_object=0)
        offered = SlideRefiner(np.zeros(19, np.float32), 0.0)
        annotator.adaptation.refiner = lambda: offered
        done = annotator.prefetch_around(384, 384).result(timeout=300)
        assert len(done) > tile_colours.MAX_COLOUR_TILES
        assert list(annotator.object.colours.kept) == [b.key() for b in done[:tile_colours.COLOUR_PREFETCH]]
    finally:
        annotator.close(wait=True)


def _object(centre, radius, downsample=None, id=None):  # noqa: A002 - callers pass id=, as AnnotatedObject names it
    from napari_sam_histo.annotations.geometry import Polygon
    from napari_sam_histo.annotations.objects import AnnotatedObject

    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ring = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
    properties = {} if downsample is None else {"level": 0, "downsample": downsample}
    return AnnotatedObject([Polygon(ring)], properties=properties, **({"id": id} if id else {}))


@pytest.mark.slow
def test_objects_from_earlier_work_become_examples_on_the_worker_newest_first(annotator):
    predictor = annotator.predictor
    adaptation = SlideAdaptation(predictor, annotator.quiet, steps_per_object=1, slide=annotator.source.identity)
    threads, boxes = [], []
    original = predictor.embedding_for

    def embedding_for(source, box, computing=None):
        threads.append(threading.current_thread().name)
        boxes.append(box)
        return original(source, box, computing)

    predictor.embedding_for = embedding_for
    try:
        old, new = _object((130, 120), 40, downsample=1.0, id="old"), _object((60, 60), 20, id="new")
        tiny, huge = _object((200, 200), 3, id="tiny"), _object((128, 128), 400, downsample=1.0, id="huge")
        states = []
        adaptation.on_change = lambda a, s: states.append(s)
        assert adaptation.add_resumed([huge, old, tiny, new], annotator.source, 256) == 4
        assert states and states[0].resumed_pending == 4  # said at once, from the caller's thread
        assert adaptation.worker.wait_idle(120) and adaptation.worker.error is None
    finally:
        del predictor.embedding_for
    state = adaptation.state()
    assert (state.resumed, state.resumed_too_large, state.resumed_too_small, state.resumed_pending) == (2, 1, 1, 0)
    assert state.objects == 2 and state.steps == 2  # both train (every third object is held out)
    assert threads and all(name == "napari-sam-histo-adaptation" for name in threads)  # never the caller's
    # newest first: "new" (no level recorded: the finest where it fits) before "old"
    training, held = adaptation.adapter._training, adaptation.adapter._held
    keys = [t[1] for t in sorted(training + held, key=lambda t: t[0])]
    assert keys == ["new", "old"]
    example = next(t[2] for t in training + held if t[1] == "old")
    assert example.target.shape == (256, 256) and abs(int(example.target.sum()) - np.pi * 40 ** 2) < 150
    assert example.clicks and example.target[example.clicks[0][1], example.clicks[0][0]]
    # handed over again (a second Start on the slide): nothing is added twice
    assert adaptation.add_resumed([huge, old, tiny, new], annotator.source, 256) == 0
    adaptation.close()


@pytest.mark.slow
def test_accepting_says_so_at_once_while_the_worker_is_busy(annotator):
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=1)
    annotator.adaptation = adaptation
    release = threading.Event()
    adaptation.worker.submit(lambda: release.wait(60))  # the worker is busy for as long as this waits
    states = []
    adaptation.on_change = lambda a, s: states.append(s)
    try:
        annotator.submit_click(130, 120, True).result(timeout=120)
        assert annotator.submit_accept().result(timeout=60) is not None
        assert states and states[-1].queued == 1 and states[-1].activity == ""  # before the worker took it in
        assert adaptation.state().objects == 0
    finally:
        release.set()
    assert adaptation.worker.wait_idle(120)
    state = adaptation.state()
    assert state.queued == 0 and state.objects == 1 and state.steps == 1


@pytest.mark.slow
def test_a_restarted_annotator_goes_on_with_what_was_learned_on_the_same_slide_and_model(annotator, tiny_model):
    slide = annotator.source.identity
    adaptation = SlideAdaptation(annotator.predictor, annotator.quiet, steps_per_object=1, slide=slide)
    annotator.adaptation = adaptation
    annotator.submit_click(130, 120, True).result(timeout=120)
    annotator.submit_accept().result(timeout=60)
    assert adaptation.worker.wait_idle(120) and adaptation.state().objects == 1

    again = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")  # a new Start, same choices
    assert adaptation.reusable_for(again, slide)
    assert not adaptation.reusable_for(again, "another-slide")
    assert not adaptation.reusable_for(Predictor(tiny_model, "modified", cache=EmbeddingCache(), precision="fp32",
                                                 allow_untrained=True), slide)
    quiet = []
    adaptation.rebind(again, lambda: quiet.append(1) or True).result(timeout=60)
    assert adaptation.adapter.base is again and adaptation.predictor() is again
    assert adaptation.state().objects == 1  # what was learned stays
    adaptation.worker.submit(lambda: adaptation.adapter.add_object(adaptation.adapter.examples[:1], "b"))
    assert adaptation.worker.wait_idle(120) and adaptation.worker.error is None
    assert quiet and adaptation.state().steps == 2  # the new annotator's may_run decides now
    with pytest.raises(ValueError):
        adaptation.rebind(Predictor(tiny_model, "modified", cache=EmbeddingCache(), precision="fp32",
                                    allow_untrained=True), lambda: True)
    adaptation.close()

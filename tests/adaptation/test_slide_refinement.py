"""The slide refiner learning from accepted objects (adaptation.slide_refinement): every object is
judged by the refiner fitted before it, then teaches it; offered only once it has needed fewer
clicks than the base decoder on ``MIN_JUDGED`` objects (tiny random SAM: its masks are poor, the
objects' colour is plain, so a refiner can only win by reading the colour)."""

import numpy as np
import pytest
import torch

from napari_sam_histo.adaptation.slide_refinement import SlideRefinement
from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.training.examples import AdaptationExample
from napari_sam_histo.training.reclick import click_example


def _object(seed, size=96):
    """A purple disc on pink (the object), at a place of its own."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(30, size - 30, 2)
    target = np.hypot(yy - cy, xx - cx) < rng.uniform(14, 22)
    image = np.where(target[..., None], [110, 50, 150], [235, 170, 210]) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), target


# The tiny SAM's masks are noise, so a refiner here wins by rewriting the whole mask from the
# colour, which the agreement rule (a refined mask must overlap SAM's) would refuse: off here.
NO_AGREEMENT = 0.0


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


def _examples(predictor, seeds):
    out = []
    for seed in seeds:
        image, target = _object(seed)
        out.append(AdaptationExample(predictor.embedding_for_array(image, f"disc-{seed}"), target, (), image))
    return out


def _learn(predictor, examples, **kwargs):
    refinement = SlideRefinement(seed=0, gate_max_clicks=5, snapshot_clicks=(2, 5), min_agreement=NO_AGREEMENT, **kwargs)
    for serial, example in enumerate(examples, start=1):
        refinement.add_object(serial, f"object-{serial}", [example])
        assert refinement.process_next(predictor) is True
    return refinement


def test_the_refiner_is_judged_before_it_teaches_and_offered_when_it_wins(predictor):
    examples = _examples(predictor, range(1, 6))
    base = [click_example(predictor, e.embedding, e.target, 5, 0.85)[0] for e in examples]
    assert np.mean([max(b) for b in base]) < 0.85  # the tiny SAM alone does not get there
    refinement = SlideRefinement(seed=0, gate_max_clicks=5, snapshot_clicks=(2, 5), min_agreement=NO_AGREEMENT)
    assert refinement.process_next(predictor) is False  # nothing queued
    offered = []
    for serial, example in enumerate(examples, start=1):
        refinement.add_object(serial, f"object-{serial}", [example])
        assert refinement.pending == 1 and refinement.process_next(predictor) is True
        offered.append(refinement.active() is not None)
        assert refinement.scores()[2] == serial - 1  # the first object only teaches
    assert refinement.refiner is not None
    base_noc, refined_noc, judged = refinement.scores()
    assert judged == 4 and refined_noc < base_noc
    assert offered == [False, False, False, True, True]  # three judged objects before it is offered
    assert refinement.remove_object("object-2") == 1  # an Accept undone: its score goes too
    assert refinement.scores()[2] == 3 and refinement.active() is not None
    refinement.remove_object("object-3")
    assert refinement.active() is None  # two judged objects are too few again


def test_it_is_deterministic_and_ignores_examples_without_pixels(predictor):
    examples = _examples(predictor, (7, 8))
    a, b = _learn(predictor, examples), _learn(predictor, examples)
    assert torch.equal(a.refiner.weight, b.refiner.weight) and a.scores() == b.scores()
    refinement = SlideRefinement(min_agreement=NO_AGREEMENT)
    no_pixels = AdaptationExample(examples[0].embedding, examples[0].target)
    refinement.add_object(1, "a", [no_pixels])
    assert refinement.pending == 0


def test_a_click_goes_first_and_an_unreadable_tile_teaches_nothing(predictor):
    examples = _examples(predictor, (9,))
    refinement = SlideRefinement(snapshot_clicks=(2,), min_agreement=NO_AGREEMENT)
    refinement.add_object(1, "a", examples)
    assert refinement.process_next(predictor, may_run=lambda: False) is None
    assert refinement.pending == 1 and refinement.refiner is None

    def gone():
        raise OSError("the slide was closed")

    unreadable = AdaptationExample(examples[0].embedding, examples[0].target, (), gone)
    refinement = SlideRefinement(snapshot_clicks=(2,), min_agreement=NO_AGREEMENT)
    refinement.add_object(1, "a", [unreadable])
    assert refinement.process_next(predictor) is True and refinement.refiner is None
    assert refinement.pending == 0

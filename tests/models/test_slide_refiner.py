"""The slide refiner: colour features, fitting, the border it moves, the per-object click evidence."""

import numpy as np
import pytest
import torch

from napari_sam_histo.models.slide_refiner import (
    FEATURES,
    SCALES,
    ClickEvidence,
    SlideRefiner,
    colour_features,
    fit_slide_refiner,
    pixel_features,
    refiner_samples,
)


def _tile(rng, size=96, radius=20, rim=6):
    """A dark rim of ``rim`` px around a pale disc on pink stroma; the object is disc + rim, and
    SAM's stand-in logits put the border at the disc's edge (the rim missed), as on RINGS glands."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2, xx - size / 2)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (230, 160, 200)  # stroma
    image[distance < radius + rim] = (90, 60, 150)  # epithelial rim
    image[distance < radius] = (245, 245, 245)  # lumen
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    target = distance < radius + rim
    logits = torch.as_tensor((radius - distance) / 2.0, dtype=torch.float32)  # > 0 inside the disc only
    return image, target, logits


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def test_colour_features_have_the_pixel_and_its_blurred_neighbourhoods():
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    colour = colour_features(image)
    assert colour.shape == (3 * len(SCALES), 40, 30)
    assert torch.allclose(colour[:3], torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255)
    assert float(colour[3:].std()) < float(colour[:3].std())  # blurred
    flat = np.full((16, 16, 3), 128, np.uint8)
    assert torch.allclose(colour_features(flat), torch.full((9, 16, 16), 128 / 255), atol=1e-6)  # edges replicated
    assert pixel_features(torch.zeros(40, 30), colour).shape == (FEATURES, 40, 30)


def test_the_fitted_refiner_moves_the_border_to_where_the_slide_puts_it():
    rng = np.random.default_rng(1)
    pixels = [refiner_samples([logits, logits + 3.0], colour_features(image), target, rng)
              for image, target, logits in (_tile(rng) for _ in range(3))]
    refiner = fit_slide_refiner(torch.cat([p[0] for p in pixels]), torch.cat([p[1] for p in pixels]))
    assert isinstance(refiner, SlideRefiner)
    image, target, logits = _tile(rng, size=128, radius=30)  # another object of the slide, larger
    sam = (logits > 0).numpy()
    refined = (refiner(logits, colour_features(image)) > 0).numpy()
    assert _iou(sam, target) < 0.75
    assert _iou(refined, target) > 0.9
    far = ~np.asarray(target) & (np.asarray(logits) < -15)  # stroma far from SAM's border stays out
    assert not refined[far].any()


def test_refiner_samples_draw_near_sams_border_too():
    rng = np.random.default_rng(2)
    image, target, logits = _tile(rng)
    features, labels = refiner_samples([logits], colour_features(image), target, rng, per_snapshot=100)
    assert features.shape == (200, FEATURES) and labels.shape == (200,)
    near = features[100:, 0].abs() * 10 < 10  # the logit feature is the clipped logit / 10
    assert bool(near.all())
    inside = torch.as_tensor(target)  # each label is the target at its pixel: found by its colour
    colour = colour_features(image)
    for feature, label in zip(features[:20], labels[:20]):
        pixel = (colour[0] == feature[1]) & (colour[3] == feature[4]) & (colour[6] == feature[7])
        assert bool((inside[pixel] == bool(label)).all()) and bool(pixel.any())
    with pytest.raises(ValueError, match="target of shape"):
        refiner_samples([logits], colour, target.reshape(-1, 48), rng)


def test_colour_features_take_grey_and_rgba_tiles():
    grey = np.random.default_rng(4).integers(0, 256, (12, 10), dtype=np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    assert torch.equal(colour_features(grey), colour_features(rgba))
    assert colour_features(grey).shape == (9, 12, 10)


def test_one_class_fits_nothing():
    assert fit_slide_refiner(torch.zeros(10, FEATURES), torch.ones(10)) is None
    assert fit_slide_refiner(torch.zeros(0, FEATURES), torch.zeros(0)) is None


def test_click_evidence_shows_whichever_mask_the_clicks_favour():
    sam = torch.tensor([[5.0, -5.0]])
    refined = torch.tensor([[-5.0, -5.0]])
    evidence = ClickEvidence(threshold=0.0, lead=0.0)
    assert evidence.use_refined  # the first mask: the refiner
    assert evidence.add_click(0, 0, True, None, None)  # nothing shown yet: nothing to score
    assert not evidence.add_click(0, 0, True, sam, refined)  # SAM was right there, the refiner wrong
    assert not evidence.add_click(0, 1, False, sam, refined)  # both right: SAM keeps its lead
    refined_right = torch.tensor([[-5.0, 8.0]])
    assert evidence.add_click(0, 1, True, sam, refined_right)  # SAM wrong, the refiner right and surer
    assert not evidence.add_click(0, 0, True, sam, refined_right)  # and back
    assert ClickEvidence(0.0, start="sam").use_refined is False
    lenient = ClickEvidence(0.0, lead=6.0)  # SAM must lead by 6 nats
    assert lenient.add_click(0, 0, True, sam, refined)  # it leads by 5: still the refiner
    assert not lenient.add_click(0, 0, True, sam, refined)  # by 10
    with pytest.raises(ValueError, match="start"):
        ClickEvidence(0.0, start="prior")


def test_the_per_tile_maps_give_the_refiner_of_all_features():
    rng = np.random.default_rng(3)
    colour = colour_features(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    refiner = SlideRefiner(torch.as_tensor(rng.normal(size=FEATURES), dtype=torch.float32), 0.3)
    logits = torch.as_tensor(rng.normal(0, 15, (20, 24)), dtype=torch.float32)
    full = torch.einsum("f,fhw->hw", refiner.weight, pixel_features(logits, colour)) + refiner.bias
    assert torch.allclose(refiner.apply(logits, refiner.on_tile(colour)), full, atol=1e-5)


def test_a_tile_refiner_makes_its_maps_once_from_the_pixels():
    """``on_image`` (a click's path: channels combined before the blurs) equals ``on_tile`` of the
    colour features; a ``TileRefiner`` reads its tile once, at its first call."""
    from napari_sam_histo.models.slide_refiner import TileRefiner

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)
    refiner = SlideRefiner(torch.as_tensor(rng.normal(size=FEATURES), dtype=torch.float32), -0.2)
    for a, b in zip(refiner.on_image(image), refiner.on_tile(colour_features(image))):
        assert torch.allclose(a, b, atol=1e-5)
    reads = []
    tile = TileRefiner(refiner, lambda: reads.append(1) or image)
    logits = torch.as_tensor(rng.normal(0, 10, (30, 26)), dtype=torch.float32)
    assert torch.allclose(tile(logits), refiner(logits, colour_features(image)), atol=1e-5)
    tile(logits)
    assert reads == [1]


def test_a_click_sessions_evidence_takes_its_tile_refiners_lead(tiny_model):
    """The lead a ``TileRefiner`` is given (the offline check sweeps it) is the one the session's
    click evidence weighs SAM's errors with."""
    from napari_sam_histo.engine.predictor import Predictor
    from napari_sam_histo.engine.session import ClickSession
    from napari_sam_histo.models.slide_refiner import REFINED_LEAD, TileRefiner
    from napari_sam_histo.slides.boxes import TileBox

    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor = Predictor(tiny_model, "sam", precision="fp32")
    embedding = predictor.embed(image)
    refiner = SlideRefiner(torch.zeros(FEATURES), 0.0)
    for lead in (REFINED_LEAD, 6.0):
        session = ClickSession(predictor, TileBox(0, 0, 0, 64, 64), embedding,
                               refine=TileRefiner(refiner, lambda: image, lead=lead))
        session.add_click(30, 30, True)
        assert session.evidence is not None and session.evidence.lead == lead

import math

import numpy as np
import pytest
import torch

from napari_sam_histo.engine.embedding_cache import EmbeddingCache
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.engine.session import ClickSession
from napari_sam_histo.engine.tiles import TileGrid
from napari_sam_histo.errors import InputError
from napari_sam_histo.models.slide_refiner import MIN_AGREEMENT, REFINED_LEAD
from napari_sam_histo.slides.boxes import TileBox
from napari_sam_histo.slides.reader import from_array


class Refine:
    """A refiner as the session takes one (``engine.protocols.TileRefinement``): SAM's logits in,
    refined logits out, and the IoU with SAM's mask below which the refined mask gives way
    (``models.slide_refiner.masks_agree``); the object's first mask refined, no evidence yet."""

    start = "refined"
    lead = REFINED_LEAD
    evidence = None

    def __init__(self, function, min_agreement: float = MIN_AGREEMENT) -> None:
        self.function = function
        self.min_agreement = min_agreement

    def __call__(self, logits):
        return self.function(logits)


@pytest.fixture(scope="module")
def setup(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1500, 1300, 3), dtype=np.uint8)
    source = from_array(image, "random.png")
    grid = TileGrid(0, 1300, 1500, 1024)
    predictor = Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")
    return source, grid, predictor


def test_encoder_runs_once_per_tile_over_20_clicks_and_a_revisit(setup):
    source, grid, predictor = setup
    start = predictor.encoder_calls
    box = grid.tile(0, 0)
    session = ClickSession.on_tile(predictor, source, box)
    rng = np.random.default_rng(1)
    for i in range(20):
        session.add_click(*rng.uniform(0, 1023, 2), positive=i % 2 == 0)
    assert predictor.encoder_calls - start == 1
    ClickSession.on_tile(predictor, source, grid.tile(1, 0))  # another tile: one more
    revisit = ClickSession.on_tile(predictor, source, box)
    revisit.add_click(5, 5)
    assert predictor.encoder_calls - start == 2


def test_clicks_pass_all_points_and_the_previous_logits(setup, monkeypatch):
    source, grid, predictor = setup
    session = ClickSession.on_tile(predictor, source, grid.tile(0, 0))
    seen = []
    real = predictor.decode

    def spy(embedding, points, labels, mask_input=None, multimask=False):
        seen.append((points.copy(), labels.copy(), None if mask_input is None else mask_input.clone(), multimask))
        return real(embedding, points, labels, mask_input, multimask)

    monkeypatch.setattr(predictor, "decode", spy)
    session.add_click(10, 20)
    first_logits = session.low_res_logits.clone()
    session.add_click(300, 400, positive=False)
    assert seen[0][3] is True and seen[0][2] is None  # first click: multimask, no mask prompt
    assert seen[1][3] is False and np.array_equal(seen[1][0], [[10, 20], [300, 400]])
    assert list(seen[1][1]) == [1, 0]
    assert np.allclose(seen[1][2].numpy(), first_logits.numpy())  # previous logits as mask prompt


def test_undo_redo_reset(setup):
    source, grid, predictor = setup
    session = ClickSession.on_tile(predictor, source, grid.tile(0, 0))
    assert not session.mask().any() and not session.can_undo
    session.add_click(100, 100)
    mask_one = session.mask()
    session.add_click(600, 600, positive=False)
    session.undo()
    assert len(session.clicks) == 1 and np.array_equal(session.mask(), mask_one)
    session.redo()
    assert len(session.clicks) == 2
    session.reset()
    assert session.clicks == () and not session.mask().any()
    session.undo()
    assert len(session.clicks) == 2
    session.undo()
    session.add_click(50, 50)  # a new click forgets the redo branch
    assert not session.can_redo


def test_result_is_in_tile_coordinates_with_level0_placement(setup):
    source, grid, predictor = setup
    box = grid.tile(1, 1)  # edge tile of a 1300 x 1500 image: shifted inward to (276, 476)
    result = ClickSession.on_tile(predictor, source, box).add_click(10, 10)
    assert result.mask.shape == (1024, 1024) and result.mask.dtype == bool
    assert result.box.tile_to_level0(10, 10) == (286, 486)


@pytest.mark.parametrize("x, y", [(-1, 5), (5, 1024), (math.nan, 3), ("a", 3)])
def test_bad_clicks_are_refused_and_change_nothing(setup, x, y):
    source, grid, predictor = setup
    session = ClickSession.on_tile(predictor, source, grid.tile(0, 0))
    with pytest.raises(InputError):
        session.add_click(x, y)
    assert session.clicks == ()


def test_small_images_are_resized_to_the_encoder_input(setup, tiny_model):
    predictor = setup[2]
    image = np.random.default_rng(3).integers(0, 255, (400, 300, 3), dtype=np.uint8)
    source = from_array(image, "patch")
    box = TileBox(0, 0, 0, 300, 400)
    session = ClickSession.on_tile(predictor, source, box)
    assert session.embedding.input_size == (1024, 768)
    assert session.add_click(150, 200).mask.shape == (400, 300)


def test_points_only_mode_sends_no_mask_prompt(setup, monkeypatch):
    source, grid, predictor = setup
    session = ClickSession(predictor, grid.tile(0, 0), predictor.embedding_for(source, grid.tile(0, 0)),
                           mask_prompt=False)
    seen = []
    real = predictor.decode
    monkeypatch.setattr(predictor, "decode", lambda e, p, labels, mask_input=None, multimask=False:
                        seen.append(mask_input) or real(e, p, labels, mask_input, multimask))
    session.add_click(10, 20)
    session.add_click(300, 400, positive=False)
    assert len(seen) >= 2 and all(m is None for m in seen) and session.low_res_logits is not None


def test_add_clicks_predicts_once_with_all_of_them_as_one_undo_step(setup, monkeypatch):
    source, grid, predictor = setup
    session = ClickSession.on_tile(predictor, source, grid.tile(0, 0))
    seen = []
    real = predictor.decode
    monkeypatch.setattr(predictor, "decode", lambda e, p, labels, mask_input=None, multimask=False:
                        seen.append((p.copy(), labels.copy(), multimask)) or real(e, p, labels, mask_input, multimask))
    session.add_clicks([(10, 20, True), (300, 400, False), (500, 500, True)])
    assert len(seen) == 1 and np.array_equal(seen[0][0], [[10, 20], [300, 400], [500, 500]])
    assert list(seen[0][1]) == [1, 0, 1] and seen[0][2] is False
    session.undo()
    assert session.clicks == ()
    with pytest.raises(InputError):
        session.add_clicks([(10, 20, True), (2000, 5, True)])
    assert session.clicks == ()


def test_the_first_mask_rule_can_refuse_a_candidate_that_floods_the_tile(setup, monkeypatch):
    import torch

    from napari_sam_histo.engine.predictor import Prediction

    source, _, predictor = setup
    box = TileBox(0, 0, 0, 256, 256)
    embedding = predictor.embedding_for(source, box)
    side = predictor.image_size // 4  # a square tile fills SAM's low-resolution frame
    flood, small, medium = torch.full((side, side), 5.0), torch.full((side, side), -5.0), torch.full((side, side), -5.0)
    small[:20, :20] = 5.0
    medium[:60, :60] = 5.0
    fake = Prediction(torch.stack([flood, small, medium]), torch.tensor([0.95, 0.60, 0.80]))
    monkeypatch.setattr(predictor, "decode", lambda *a, **k: fake)
    picks = {}
    for rule in ("iou", "unflooded"):
        session = ClickSession(predictor, box, embedding, first_mask=rule)
        session.add_click(10, 10)
        picks[rule] = float(session.mask().mean())
    assert picks["iou"] > 0.99 and picks["unflooded"] < 0.2  # the flood refused, the best-rated other kept
    with pytest.raises(InputError, match="first_mask"):
        ClickSession(predictor, box, embedding, first_mask="largest")


@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_a_refiner_is_shown_where_the_clicks_favour_it_and_sams_logits_stay_the_prompt(setup, threshold):
    """With ``refine`` the session shows the refined mask until SAM's masks have erred less at the
    object's clicks (each click scores the masks shown before it); SAM's own logits are what the
    next click's mask prompt and ``sam_logits`` hold, and undo brings the evidence back. (The
    agreement rule is off here: this refiner disagrees with SAM everywhere, to be recognised.)"""
    source, grid, predictor = setup
    box = grid.tile(0, 0)
    plain = ClickSession(predictor, box, predictor.embedding_for(source, box), threshold=threshold)
    refine = Refine(lambda z: -z, min_agreement=0.0)  # a refiner that disagrees with SAM everywhere
    refined = ClickSession(predictor, box, plain.embedding, threshold=threshold, refine=refine)
    clicks = [(500, 500, True), (100, 900, False), (700, 200, True), (300, 300, False)]
    loss = {"sam": 0.0, "refined": 0.0}
    for i, (x, y, positive) in enumerate(clicks):
        if i:  # score what each showed at this click, by hand
            sam = float(plain.logits[y, x])
            sign = 1.0 if positive else -1.0
            loss["sam"] += math.log1p(math.exp(-sign * (sam - threshold)))
            loss["refined"] += math.log1p(math.exp(sign * sam))
        plain.add_click(x, y, positive)
        refined.add_click(x, y, positive)
        assert torch.equal(refined.low_res_logits, plain.low_res_logits)  # SAM's prompt, whatever is shown
        assert torch.equal(refined.sam_logits, plain.logits)
        expect_refined = i == 0 or loss["refined"] < loss["sam"]
        assert refined.refined is expect_refined
        shown = -plain.logits + threshold if expect_refined else plain.logits
        assert np.array_equal(refined.mask(), (shown > threshold).numpy())
    assert loss["sam"] != loss["refined"]
    before = refined.refined
    refined.undo()
    refined.redo()
    assert refined.refined is before and refined._state.evidence.loss["sam"] == pytest.approx(loss["sam"])


def test_a_refined_mask_that_is_another_object_gives_way_to_sams(setup):
    """The refiner moves SAM's border: a refined mask that overlaps SAM's by less than
    ``MIN_AGREEMENT`` is shown as SAM's (and scored as SAM's at the next click); one that moves the
    border a little is shown as refined."""
    from napari_sam_histo.models.slide_refiner import MIN_AGREEMENT, masks_agree

    source, grid, predictor = setup
    box = grid.tile(0, 0)
    embedding = predictor.embedding_for(source, box)
    plain = ClickSession(predictor, box, embedding)
    plain.add_click(500, 500, True)
    sam = plain.logits
    assert 0 < int((sam > 0).sum()) < sam.numel()
    opposite = ClickSession(predictor, box, embedding, refine=Refine(lambda z: -z))
    opposite.add_click(500, 500, True)
    assert not opposite.refined and np.array_equal(opposite.mask(), plain.mask())  # SAM's is shown
    assert opposite.evidence.use_refined and opposite.sam_logits is opposite.logits
    opposite.add_click(100, 900, False)  # scored alike (the refined one stood aside): a tie keeps the choice
    assert opposite.evidence.loss["sam"] == pytest.approx(opposite.evidence.loss["refined"])
    assert opposite.evidence.use_refined
    wider = ClickSession(predictor, box, embedding, refine=Refine(lambda z: z + 0.5))
    wider.add_click(500, 500, True)
    grown = (sam > -0.5).numpy()
    assert wider.refined and np.array_equal(wider.mask(), grown) and grown.sum() > plain.mask().sum()
    # the rule alone: IoU just under and at the agreement
    a = torch.zeros(20, 10)
    a[:5] = 1.0  # SAM's mask: 50 px
    b = torch.where(a > 0, 1.0, -1.0)
    k = int(np.floor(50 / MIN_AGREEMENT - 50))
    b.view(-1)[50: 50 + k] = 1.0  # refined: SAM's and k px more
    assert masks_agree(b, a, 0.0)  # IoU 50 / (50 + k) >= MIN_AGREEMENT
    b.view(-1)[50 + k] = 1.0  # one more: under it
    assert not masks_agree(b, a, 0.0)
    assert masks_agree(-a, a - 2, 0.0)  # both empty: they agree
    assert not masks_agree(a, a - 2, 0.0)  # SAM's empty, the refined not: the refiner finds no object


def test_a_refiner_that_fails_leaves_the_tile_to_sam(setup):
    """A tile whose pixels cannot be read for the refiner still clicks: SAM's mask, no refiner."""
    source, grid, predictor = setup
    box = grid.tile(0, 0)

    def broken(logits):
        raise OSError("the slide was closed")

    session = ClickSession(predictor, box, predictor.embedding_for(source, box), refine=Refine(broken))
    session.add_click(500, 500, True)
    assert session.refine is None and not session.refined
    assert np.array_equal(session.mask(), (session.sam_logits > 0).numpy())


def _frame(side, *squares, inside=5.0):
    """A low-resolution logit frame: ``inside`` in each (row0, row1, col0, col1) square, -5 elsewhere."""
    frame = torch.full((side, side), -5.0)
    for r0, r1, c0, c1 in squares:
        frame[r0:r1, c0:c1] = inside
    return frame


class _ScriptedDecoder:
    """Stands in for ``Predictor.decode``: ``answer(mask_prompt_given, multimask)`` gives the
    (frames, predicted IoUs) to return; every call is recorded as (mask prompt or None, multimask)."""

    def __init__(self, answer):
        from napari_sam_histo.engine.predictor import Prediction

        self.answer, self.calls, self.prediction = answer, [], Prediction

    def __call__(self, embedding, points, labels, mask_input=None, multimask=False):
        self.calls.append((None if mask_input is None else mask_input.clone(), multimask))
        frames, ious = self.answer(mask_input is not None, multimask)
        return self.prediction(torch.stack(frames), torch.tensor(ious))


@pytest.fixture
def square_tile(setup):
    """A 256-px tile: it fills SAM's 256² low-resolution frame, so frame pixel = tile pixel."""
    source, _, predictor = setup
    box = TileBox(0, 0, 0, 256, 256)
    return predictor, box, predictor.embedding_for(source, box), predictor.image_size // 4


def test_a_decode_that_drops_the_object_gives_way_to_the_same_points_without_the_mask_prompt(square_tile,
                                                                                            monkeypatch):
    """The mask-prompted decode empties the mask (the first click, inside it before, is now
    outside): the alternatives are decoded in order and SAM's points-only mask is shown; its logits
    are the next mask prompt, undo and redo keep which decode was shown. Without the rule the
    object is lost."""
    predictor, box, embedding, side = square_tile
    good, empty = _frame(side, (40, 120, 40, 120)), _frame(side)

    def answer(prompted, multimask):
        if prompted:
            return [empty] * (3 if multimask else 1), [0.9] * (3 if multimask else 1)
        return ([good] * 3, [0.8, 0.5, 0.4]) if multimask else ([good], [0.7])

    shown = {}
    for honour in (True, False):
        decoder = _ScriptedDecoder(answer)
        monkeypatch.setattr(predictor, "decode", decoder)
        session = ClickSession(predictor, box, embedding, honour_clicks=honour)
        session.add_click(60, 60)
        session.add_click(100, 100)
        shown[honour] = session.mask()
        if not honour:
            assert session.fallback is None and len(decoder.calls) == 2
            continue
        assert [(prompt is not None, multimask) for prompt, multimask in decoder.calls] == [
            (False, True), (True, False), (True, True), (False, False), (False, True)]
        # all five points-only masks are alike: a tie goes to the higher predicted IoU ("points-candidate 0")
        assert session.fallback == "points-candidate 0" and session.fallbacks == 1
        assert torch.equal(session.low_res_logits, good)
        session.add_click(110, 110, positive=False)
        assert torch.equal(decoder.calls[5][0], good)  # the next decode starts from the fallback's logits
        session.undo()
        assert session.fallback == "points-candidate 0"
        session.undo()
        assert session.fallback is None and session.fallbacks == 0
        session.redo()
        assert session.fallback == "points-candidate 0"
    assert shown[True][60, 60] and shown[True][100, 100] and shown[True].sum() == 80 * 80
    assert not shown[False].any()  # SAM's usual decode lost the object


def test_a_decode_that_keeps_the_object_runs_no_alternative(square_tile, monkeypatch):
    """The usual decode keeps most of the mask (here it even drops the first click, at a border):
    one decoder run and one upscaling per click, as without the rule, and no fallback."""
    predictor, box, embedding, side = square_tile
    good, notched = _frame(side, (40, 120, 40, 120)), _frame(side, (70, 120, 40, 120))  # 5/8 of it kept
    decoder = _ScriptedDecoder(lambda prompted, multimask: ([notched if prompted else good] * (3 if multimask else 1),
                                                            [0.9] * (3 if multimask else 1)))
    monkeypatch.setattr(predictor, "decode", decoder)
    upscaled = []
    real_upscale = predictor.upscale
    monkeypatch.setattr(predictor, "upscale", lambda e, z: upscaled.append(z) or real_upscale(e, z))
    session = ClickSession(predictor, box, embedding)
    for x, y, positive in [(60, 60, True), (200, 200, False), (100, 100, True), (10, 250, False)]:
        session.add_click(x, y, positive)
    assert len(decoder.calls) == 4 and len(upscaled) == 4  # one decode and one upscaling per click
    assert session.fallback is None and session.fallbacks == 0
    assert not session.mask()[60, 60] and session.mask()[100, 100]


def test_the_candidate_breaking_fewest_clicks_wins_and_a_tie_keeps_the_object(square_tile, monkeypatch):
    """The usual decode loses the first click's mask: SAM's second candidate for the same prompt
    keeps it and honours both clicks (though rated lowest) and is shown. When the alternatives that
    keep the mask break as many clicks as the usual decode, the best rated of them is shown (a
    sliver that honours both clicks keeps too little of the mask to count); when they break more,
    the usual decode stays (the alternatives were decoded, none is recorded)."""
    predictor, box, embedding, side = square_tile
    first, second = (30, 70, 30, 70), (130, 170, 130, 170)
    dropped, around_both = _frame(side, second), _frame(side, first, second)
    sliver = _frame(side, (45, 55, 45, 55), second)  # honours both clicks, keeps 1/16 of the first mask

    def answer(usual, candidates):
        def reply(prompted, multimask):
            if not prompted:  # the first click, and the points-only alternatives
                return [_frame(side, first)] * (3 if multimask else 1), [0.9] * (3 if multimask else 1)
            if not multimask:
                return [usual], [0.95]
            return candidates, [0.9, 0.2, 0.5]
        return reply

    for usual, candidates, expected, shown in [
            (dropped, [_frame(side, first), around_both, _frame(side)], "candidate 1", around_both),
            (dropped, [_frame(side, first), _frame(side, first), _frame(side)], "candidate 0", _frame(side, first)),
            (dropped, [sliver, _frame(side, first), _frame(side)], "points", _frame(side, first)),
            (sliver, [_frame(side, first), _frame(side, first), _frame(side)], None, sliver)]:
        decoder = _ScriptedDecoder(answer(usual, candidates))
        monkeypatch.setattr(predictor, "decode", decoder)
        session = ClickSession(predictor, box, embedding)
        session.add_click(50, 50)
        session.add_click(150, 150)
        assert len(decoder.calls) == 5 and session.fallback == expected
        assert torch.equal(session.low_res_logits, shown)


def test_a_decode_that_keeps_little_of_the_mask_looks_for_alternatives(square_tile, monkeypatch):
    """A positive click outside the mask whose decode keeps the earlier click but little of the
    mask (and misses the new click): an alternative that keeps the mask and honours both is shown."""
    predictor, box, embedding, side = square_tile
    big, small = _frame(side, (20, 120, 20, 120)), _frame(side, (45, 55, 45, 55))
    grown = _frame(side, (20, 160, 20, 160))

    def answer(prompted, multimask):
        if not prompted:  # the first click, and the points-only alternatives (they miss the new click)
            return [big] * (3 if multimask else 1), [0.9] * (3 if multimask else 1)
        return ([grown] * 3, [0.6] * 3) if multimask else ([small], [0.9])

    decoder = _ScriptedDecoder(answer)
    monkeypatch.setattr(predictor, "decode", decoder)
    session = ClickSession(predictor, box, embedding)
    session.add_click(50, 50)
    session.add_click(140, 140)  # outside the first mask: no click it honoured is broken
    assert session.fallback == "candidate 0" and session.mask()[140, 140] and session.mask()[50, 50]


def test_a_tile_joining_late_checks_its_first_decode_against_the_mask_prompt_it_was_given(square_tile,
                                                                                         monkeypatch):
    """A tile's first decode, with the object's clicks there and its logits as mask prompt: when the
    decode drops clicks that the prompt honoured, the points-only decode is shown."""
    predictor, box, embedding, side = square_tile
    good = _frame(side, (40, 120, 40, 120))
    decoder = _ScriptedDecoder(lambda prompted, multimask: (
        ([_frame(side)] if prompted else [good]) * (3 if multimask else 1), [0.9] * (3 if multimask else 1)))
    monkeypatch.setattr(predictor, "decode", decoder)
    session = ClickSession(predictor, box, embedding)
    session.add_clicks([(60, 60, True), (100, 100, True)], mask_prompt=good)
    assert session.fallback == "points" and session.mask()[60, 60] and session.mask()[100, 100]

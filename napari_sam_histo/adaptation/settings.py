"""The decoder learns from the pathologist while they work: a per-slide copy of the active decoder,
fine-tuned in short bounded bursts on the objects they accept, used only when it is not worse.

An accepted object is a training example that costs no encoder call: the tile embedding the
annotator already holds, the accepted mask on that tile, and the user's own clicks. Each new
example owes ``steps_per_object`` optimisation steps, run with the training code's click
simulation (``click_simulation.simulated_click_loss``: a random first click, 0..3 rounds of error
clicks with the mask prompt fed back, the Normalized Focal Loss) on a copy of the decoder (the
base decoder is never changed).

The never-worse gate: every ``hold_out_every``-th accepted object is held out of training (all its tiles); after steps
the copy and the base decoder re-click the held-out examples with the benchmark's clicker (``reclick.reclick``), and the
copy is offered (``active_predictor``) only when at least ``MIN_HELD_OUT`` objects are held out and
its mean NoC@85 on them is strictly lower. Until then the base decoder stays in use.

Works with every decoder choice. SAM's own decoder (and SAM-kind checkpoints with all three
mask outputs) adapts through a zero-initialised correction added to its logits (the residual
decoder of ``models.residual_decoder`` over a frozen copy): the untrained copy (before any
example, so without a prior) is exactly the base decoder, the first click keeps SAM's three
candidates and their ranking, and a few steps can only move it as far as the examples pay for.
(Training SAM's token 0 instead, tried first, gave up those candidates and made RINGS objects need
more clicks.) ``md`` checkpoints (single-mask) train their token 0, as they were trained; the
modified decoder trains whole, the residual decoder its correction. On top of the copy a *slide
prior* (``models.slide_prior``: a logistic read-out of the embedding, fitted on the training
examples by ``prior.PriorFitter``, its logit added to the masks at weight ``prior_weight``) carries
what the accepted objects look like to the next object; the gate judges copy and prior together.
A *slide refiner* (``slide_refinement``: a pixel classifier over SAM's logit and the
tile's colour, shown per object where its clicks favour it) learns from every accepted object with
pixels, judged by a gate of its own (each object re-clicked with the refiner fitted before it); it
works over whichever decoder decodes the object. Deterministic under ``seed`` for the same examples
arriving between the same steps (the sequential benchmark; in the dock the user's pace decides
that).

The parts: this module holds the settings, what a UI shows (``AdaptationState``) and what the
others share (the gate's measure is ``training.reclick``); ``decoder_adapter.DecoderAdapter``
holds the copy, the examples, the steps and the gate, and no thread; ``worker.AdaptationWorker``
runs it in the background; ``slide_adaptation.SlideAdaptation`` connects it to the annotator;
``sequential_benchmark`` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

STEPS_PER_OBJECT = 16
BATCH_SIZE = 4
LEARNING_RATE = 1e-4  # a fifth of the offline recipe's: a few examples, many steps on each
# a correction that starts at zero has to grow from nothing: its rate is set apart
CORRECTION_LEARNING_RATE = 1e-3
HOLD_OUT_EVERY = 3  # examples 3, 6, 9, ... (counting from 1) judge the copy, never train it
MIN_HELD_OUT = 3  # two held-out objects were too few: on an EBHI-Seg case a copy that won on two
# (2.0 vs 2.5 clicks) then needed 9 clicks where SAM needed 7 on the next object
MAX_EXTRA_CLICKS = 3
MASK_PROMPT_PROB = 0.8
# a newly accepted object's first steps run for this long (at least one step) before the slide
# refiner re-clicks it, so the copy starts learning from it at once; the refiner then goes first
FIRST_SLICE_S = 1.0
TURN_TIMEOUT_S = 2.0  # ``AdaptationWorker.take_turn``: the longest another thread waits for a unit


@dataclass(frozen=True)
class AdaptationState:
    """What a UI shows."""

    examples: int
    held_out: int
    steps: int
    owed: int  # steps still to run for the examples so far
    in_use: bool  # the adapted copy decodes the next object's clicks
    base_noc: float | None  # mean NoC@85 on the held-out examples (None: none held out yet)
    adapted_noc: float | None
    enabled: bool = True
    held_out_objects: int = 0  # the gate judges only once ``MIN_HELD_OUT`` objects are held out
    refiner_in_use: bool = False  # the slide refiner refines the next object
    refiner_judged: int = 0  # objects its gate has judged it on
    refiner_base_noc: float | None = None  # their mean NoC@85 with the base decoder
    refiner_noc: float | None = None  # and with the refiner fitted before each
    refiner_pending: int = 0  # accepted objects it has still to learn from
    refiner_enabled: bool = True  # the user's switch for the refiner alone (it learns either way)
    objects: int = 0  # accepted objects whose examples are kept (training and held out)
    # what the worker is doing now: "" (nothing to do), "waiting" (work to do, but a click, action
    # or embedding is under way), "preparing" (an earlier object's tile), "refining" (the border
    # refiner re-clicks an accepted object), "training" (steps), "judging" (the gate)
    activity: str = ""
    queued: int = 0  # accepted objects handed over that the worker has not taken in yet
    resumed: int = 0  # objects from earlier work (resumed or imported) turned into examples
    resumed_pending: int = 0  # earlier objects still to be turned into examples
    resumed_too_large: int = 0  # earlier objects skipped: larger than a tile at their level
    resumed_too_small: int = 0  # earlier objects skipped: too few pixels at their level


def model_key(predictor) -> tuple:
    """What an adapter's learning depends on: the model (name, weights hash), the device and the
    decoder as chosen (kind, name, file hash, source). Two predictors with the same key give the
    same embeddings and the same base decoder."""
    model, decoder = predictor.model, predictor.decoder
    return (model.name, model.weights_hash, str(predictor.device), decoder.kind, decoder.name,
            decoder.weights_sha256, decoder.source)


@dataclass(frozen=True)
class GateScores:
    """The last judgement of the never-worse gate: mean NoC@``reclick.GATE_IOU`` on the held-out examples."""

    base_noc: float  # of the base decoder
    adapted_noc: float  # of the adapted copy (with the slide prior)

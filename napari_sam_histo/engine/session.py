"""One object being segmented on one tile: its clicks, the previous logits, undo and redo.

Every click re-runs the decoder with all clicks so far and the previous low-resolution logits as
the mask prompt (Kim et al. §2.2, Fig. 2a). The first click asks SAM for its three candidate masks
and keeps one of them (``FIRST_MASK_RULES``: by default the highest predicted IoU); later clicks ask
for a single mask, as SAM's authors recommend once the prompt is unambiguous.

With a slide refiner (``refine``: ``models.slide_refiner``) every decode is also
refined (unless the refined mask overlaps SAM's by less than the refiner's ``min_agreement``: then it is not a
border correction), and the object's clicks decide which of the two is shown (``ClickEvidence``); SAM's own
low-resolution logits stay the mask prompt, and the evidence is part of each undo step.

A click never lets the object collapse where SAM can avoid it (``honour_clicks``, on by default).
When the mask-prompted decode keeps less than ``SHRINK`` (half) of the mask it started from, or a
positive click leaves the mask empty, the alternatives are decoded in a fixed order
(``FALLBACKS``: SAM's three candidates for the same prompt, then the same points without the mask
prompt, one mask and three). Among the usual decode and the alternatives that keep at least
``SHRINK`` of that mask, the one violating the fewest of the tile's clicks is shown (a positive
click outside the mask or a negative one inside it is violated; a tie goes to an alternative, which
keeps the object, with the higher predicted IoU, then to the first); its low-resolution logits are
the next mask prompt, and ``fallback`` says which one was shown. A decode is not replaced merely
for breaking a click the previous mask
honoured: after a few dozen clicks SAM's low-resolution mask cannot honour every border click, and
a candidate that breaks one or two fewer is often a sliver of the object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..models.slide_refiner import ClickEvidence, masks_agree
from ..slides.boxes import TileBox
from ..slides.source import ImageSource
from .embedding_cache import Embedding
from .protocols import TilePredictor, TileRefinement

# How the first click's mask is chosen among SAM's three candidates:
# "iou": the highest predicted IoU (SAM's own choice); "unflooded": the same among candidates that
# cover less than FLOOD of the tile (the smallest when all do), so a click on a small object does
# not take the whole tile; "single": SAM's single-mask output instead of three candidates.
FIRST_MASK_RULES = ("iou", "unflooded", "single")
FLOOD = 0.9
# The alternatives to a decode that breaks the clicks, in the order they are tried: SAM's three
# candidates with the same prompt (points and previous logits), the same points without the mask
# prompt (SAM's single mask), and their three candidates. A session without the mask prompt has
# only the first kind (the others would be the same decode).
FALLBACKS = ("candidate", "points", "points-candidate")
SHRINK = 0.5  # a decode that keeps less than this fraction of the mask it started from looks for alternatives


def _above(logits: torch.Tensor, threshold: float):
    """The mask of ``logits`` as a bool array: numpy's for a CPU tensor (no copy), torch's elsewhere.
    Every click counts the pixels of two tile-sized masks; numpy does that about 10x faster than
    torch's sum over a bool tensor (0.7 against 7 ms for a 1024-px tile on 2 CPU cores), which was
    a tenth of a click."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64, torch.float16):
        return logits.detach().numpy() > threshold
    return logits > threshold


def _count(mask) -> int:
    return int(np.count_nonzero(mask)) if isinstance(mask, np.ndarray) else int(torch.count_nonzero(mask))


@dataclass(frozen=True)
class Click:
    """A click at pixel (x = column, y = row) of the tile; fractions are allowed."""

    x: float
    y: float
    positive: bool = True


@dataclass
class _State:
    clicks: tuple[Click, ...]
    low_res_logits: torch.Tensor | None
    logits: torch.Tensor | None  # at the tile's resolution: what is shown (SAM's, or refined + threshold)
    iou_prediction: float | None
    sam_logits: torch.Tensor | None = None  # SAM's own at the tile's resolution (None: ``logits`` are SAM's)
    evidence: ClickEvidence | None = None  # with a refiner: the scores after this step's clicks
    refined: bool = False  # what is shown is the refiner's mask (the evidence chose it and it agreed)
    # which alternative replaced SAM's usual decode because it broke the clicks (``FALLBACKS``, with
    # the candidate's number: "candidate 2", "points", "points-candidate 0"), or None
    fallback: str | None = None
    alternatives: int = 0  # decoder runs made to look for one (0: the usual decode honoured the clicks)


@dataclass
class SessionResult:
    mask: np.ndarray  # (H, W) bool, in tile coordinates
    clicks: tuple[Click, ...]
    iou_prediction: float | None
    box: TileBox  # where the tile sits; box.tile_to_level0 maps mask pixels to level 0


class ClickSession:
    """Clicks on one tile. ``embedding`` is computed by the predictor (once) when not given."""

    def __init__(self, predictor: TilePredictor, box: TileBox, embedding: Embedding, threshold: float = 0.0,
                 mask_prompt: bool = True, first_mask: str = "iou", refine: TileRefinement | None = None,
                 honour_clicks: bool = True) -> None:
        """``threshold`` is the logit above which a pixel is in the mask (SAM's 0.0; the benchmark
        uses RITM's probability 0.49). ``mask_prompt=False`` leaves out the previous logits (points
        only): zero-shot SAM is steadier that way, see docs/benchmarks.md.
        ``first_mask``: one of ``FIRST_MASK_RULES``. ``refine``: SAM's logits -> refined logits
        (positive inside; a ``models.slide_refiner.TileRefiner``), or None. ``honour_clicks=False``
        shows SAM's usual decode even where it breaks the clicks (see the module; for benchmarks)."""
        if first_mask not in FIRST_MASK_RULES:
            raise InputError(f"first_mask {first_mask!r}: choose one of {', '.join(FIRST_MASK_RULES)}.")
        self.first_mask = first_mask
        if tuple(embedding.original_size) != box.shape:
            raise InputError(f"The embedding is of a {embedding.original_size} image, not of tile {box.key()}.")
        self.predictor = predictor
        self.box = box
        self.embedding = embedding
        self.threshold = float(threshold)
        self.mask_prompt = bool(mask_prompt)
        self.refine = refine
        self.honour_clicks = bool(honour_clicks)
        self.last_decoder_s = 0.0  # the decoder's seconds in the last step (every decode it ran)
        self._history: list[_State] = [_State((), None, None, None)]
        self._redo: list[_State] = []

    @classmethod
    def on_tile(cls, predictor: TilePredictor, source: ImageSource, box: TileBox) -> ClickSession:
        return cls(predictor, box, predictor.embedding_for(source, box))

    # -- state --------------------------------------------------------------------------------
    @property
    def _state(self) -> _State:
        return self._history[-1]

    @property
    def clicks(self) -> tuple[Click, ...]:
        return self._state.clicks

    @property
    def low_res_logits(self) -> torch.Tensor | None:
        return self._state.low_res_logits

    @property
    def logits(self) -> torch.Tensor | None:
        """What is shown, at the tile's resolution (``mask`` is these above ``threshold``)."""
        return self._state.logits

    @property
    def sam_logits(self) -> torch.Tensor | None:
        """SAM's own logits (the same as ``logits`` unless the refined mask is shown)."""
        state = self._state
        return state.sam_logits if state.sam_logits is not None else state.logits

    @property
    def refined(self) -> bool:
        """Whether the refined mask is shown."""
        return self._state.refined

    @property
    def evidence(self) -> ClickEvidence | None:
        """The refiner's click evidence after the current step (None without a refiner)."""
        return self._state.evidence

    @property
    def fallback(self) -> str | None:
        """Which alternative the current step shows instead of SAM's usual decode, which broke the
        clicks (see the module), or None."""
        return self._state.fallback

    @property
    def fallbacks(self) -> int:
        """The steps so far (undone ones left out) that show an alternative decode."""
        return sum(state.fallback is not None for state in self._history)

    def mask(self) -> np.ndarray:
        """The current mask (logits > ``self.threshold``); empty before the first click."""
        if self._state.logits is None:
            return np.zeros(self.box.shape, dtype=bool)
        above = _above(self._state.logits, self.threshold)
        return above if isinstance(above, np.ndarray) else above.cpu().numpy()

    def result(self) -> SessionResult:
        return SessionResult(self.mask(), self.clicks, self._state.iou_prediction, self.box)

    @property
    def can_undo(self) -> bool:
        return len(self._history) > 1

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- actions ------------------------------------------------------------------------------
    def add_click(self, x: float, y: float, positive: bool = True) -> SessionResult:
        """Add a click at tile pixel (x, y) and re-predict."""
        return self.add_clicks([(x, y, positive)])

    def add_clicks(self, clicks, mask_prompt: torch.Tensor | None = None) -> SessionResult:
        """Add several clicks ``(x, y, positive)`` at once and predict once (one undo step): a tile
        that joins an object late starts from the object's earlier clicks that fall inside it, and
        ``mask_prompt`` (SAM's (256, 256) low-resolution frame), when given for a tile's first
        decode, from the object's logits there (a finer tile refining a coarser one). With a mask
        prompt the first decode asks for one mask: the prompt already says which object."""
        new = []
        for x, y, positive in clicks:
            self._check_click(x, y)
            new.append(Click(float(x), float(y), bool(positive)))
        if not new:
            return self.result()
        clicks = self.clicks + tuple(new)
        points = np.array([[c.x, c.y] for c in clicks], dtype=np.float32)
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int64)
        previous = self.low_res_logits if self.low_res_logits is not None else mask_prompt
        first = len(clicks) == 1 and (previous is None or not self.mask_prompt) and self.first_mask != "single"
        prompt = previous if self.mask_prompt else None
        prediction = self.predictor.decode(self.embedding, points, labels, mask_input=prompt, multimask=first)
        decoder_s = self.predictor.last_decoder_s
        evidence = None
        if self.refine is not None:
            try:
                evidence = self._scored(new)
            except Exception:  # noqa: BLE001 - the refiner cannot run on this tile: SAM's mask, as without one
                self.refine = None
        best = self._choose_first(prediction) if first else 0
        low_res, iou = prediction.low_res_logits[best], float(prediction.iou_predictions[best])
        logits = self.predictor.upscale(self.embedding, low_res)
        fallback, alternatives = None, 0
        before = self._started_from(previous) if self.honour_clicks and not first else None
        if before is not None and self._loses_object(new, before, logits):
            # Only here are alternatives decoded: three more decoder runs and seven upscalings,
            # 0.18 s on top of a usual click's 0.06 s (measured on 2 CPU cores, MobileSAM, a
            # 1024-px tile); a click that keeps the mask pays one overlap count over the tile.
            (low_res, logits, iou, fallback), alternatives, seconds = self._alternatives(
                points, labels, prompt, (low_res, logits, iou, None), clicks, before)
            decoder_s += seconds
        self.last_decoder_s = decoder_s
        shown, refined = logits, False
        if evidence is not None and evidence.use_refined:
            try:
                candidate, refined = self._refined(logits)
                if refined:
                    shown = candidate + self.threshold
            except Exception:  # noqa: BLE001 - the tile's pixels cannot be read (or the maps made): SAM's mask, as
                # without one
                self.refine, evidence = None, None
        self._history.append(_State(clicks, low_res, shown, iou, logits if shown is not logits else None,
                                    evidence, refined, fallback, alternatives))
        self._redo.clear()
        return self.result()

    def _started_from(self, previous: torch.Tensor | None) -> torch.Tensor | None:
        """SAM's logits (tile resolution) of the mask this step's decode starts from: the session's
        own, or a given mask prompt's for a tile's first decode; None when there is none."""
        if self.sam_logits is not None:
            return self.sam_logits
        if previous is None or not self.mask_prompt:
            return None
        return self.predictor.upscale(self.embedding, previous)

    def _honoured(self, clicks: tuple[Click, ...], logits: torch.Tensor) -> torch.Tensor:
        """Per click, whether the mask (``logits`` above the threshold) honours it: a positive click
        inside, a negative one outside; each click's pixel as ``_scored`` reads it."""
        height, width = self.box.shape
        rows = torch.tensor([min(int(c.y), height - 1) for c in clicks], device=logits.device)
        cols = torch.tensor([min(int(c.x), width - 1) for c in clicks], device=logits.device)
        positive = torch.tensor([c.positive for c in clicks], device=logits.device)
        return (logits[rows, cols] > self.threshold) == positive

    def _keeps(self, before: torch.Tensor, after: torch.Tensor) -> bool:
        """Whether the mask of ``after`` keeps at least ``SHRINK`` of the mask of ``before`` (any
        mask keeps an empty one)."""
        was = _above(before, self.threshold)
        return _count(was & _above(after, self.threshold)) >= SHRINK * _count(was)

    def _loses_object(self, new: list[Click], before: torch.Tensor, after: torch.Tensor) -> bool:
        """Whether the decode ``after`` loses most of the mask of ``before`` (or is empty after a
        positive click)."""
        if not self._keeps(before, after):
            return True
        return any(c.positive for c in new) and _count(_above(after, self.threshold)) == 0

    def _alternatives(self, points: np.ndarray, labels: np.ndarray, prompt: torch.Tensor | None,
                      usual: tuple, clicks: tuple[Click, ...], before: torch.Tensor) -> tuple[tuple, int, float]:
        """((low-res logits, logits, predicted IoU, fallback name) of the decode to show, the
        decoder runs made, their seconds): of ``usual`` and the ``FALLBACKS`` that keep at least
        ``SHRINK`` of ``before``'s mask, the one violating the fewest ``clicks`` (a tie goes to an
        alternative, which keeps the mask that ``usual`` lost, the higher predicted IoU first, then
        the first in order)."""
        runs = [("candidate", prompt, True)]
        if prompt is not None:
            runs += [("points", None, False), ("points-candidate", None, True)]
        candidates, seconds = [usual], 0.0
        for name, mask_input, multimask in runs:
            prediction = self.predictor.decode(self.embedding, points, labels, mask_input=mask_input,
                                               multimask=multimask)
            seconds += self.predictor.last_decoder_s
            for k, low_res in enumerate(prediction.low_res_logits):
                logits = self.predictor.upscale(self.embedding, low_res)
                if self._keeps(before, logits):  # one that loses the object too is no way out
                    candidates.append((low_res, logits, float(prediction.iou_predictions[k]),
                                       f"{name} {k}" if multimask else name))

        def rank(index: int):
            violated = int((~self._honoured(clicks, candidates[index][1])).sum())
            return violated, index == 0, -candidates[index][2], index

        return candidates[min(range(len(candidates)), key=rank)], len(runs), seconds

    def _scored(self, new: list[Click]) -> ClickEvidence:
        """The evidence after ``new`` clicks: each scores the masks shown before it (SAM's and the
        refined one) at its pixel."""
        state = self._state
        if state.evidence is not None:
            evidence = state.evidence.copy()
        elif self.refine is not None and self.refine.evidence is not None:  # the object's, from its other tiles
            evidence = self.refine.evidence.copy()
        else:
            evidence = ClickEvidence(self.threshold, *((self.refine.start, self.refine.lead) if self.refine is not None
                                                       else ("refined",)))
        sam = self.sam_logits
        if sam is None:
            return evidence
        refined = state.logits - self.threshold if state.refined else self._refined(sam)[0]
        height, width = self.box.shape
        for click in new:
            row, col = min(int(click.y), height - 1), min(int(click.x), width - 1)
            evidence.add_click(row, col, click.positive, sam, refined)
        return evidence

    def _refined(self, sam: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The refiner's logits for SAM's (positive inside) and True, or SAM's own shifted to that
        scale and False when the refined mask is not a correction of SAM's border (``masks_agree``)."""
        refined = self.refine(sam)
        if masks_agree(refined, sam, self.threshold, self.refine.min_agreement):
            return refined, True
        return sam - self.threshold, False

    def _choose_first(self, prediction) -> int:
        iou = prediction.iou_predictions
        if self.first_mask == "iou":
            return int(torch.argmax(iou))
        cover = (prediction.low_res_logits > self.threshold).float().flatten(1).mean(1)  # of the 256² frame
        inside = self.embedding.input_size[0] * self.embedding.input_size[1] / self.predictor.image_size ** 2
        fraction = cover / max(inside, 1e-6)  # of the tile (the frame also holds SAM's padding)
        unflooded = fraction < FLOOD
        if not bool(unflooded.any()):
            return int(torch.argmin(fraction))
        return int(torch.argmax(torch.where(unflooded, iou, torch.full_like(iou, -1.0))))

    def undo(self) -> SessionResult:
        if self.can_undo:
            self._redo.append(self._history.pop())
        return self.result()

    def redo(self) -> SessionResult:
        if self._redo:
            self._history.append(self._redo.pop())
        return self.result()

    def reset(self) -> SessionResult:
        """Forget all clicks (undoable)."""
        if self.clicks:
            self._history.append(_State((), None, None, None))
            self._redo.clear()
        return self.result()

    def _check_click(self, x: float, y: float) -> None:
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError) as err:
            raise InputError(f"Click ({x!r}, {y!r}) is not a pair of numbers.") from err
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"Click ({x}, {y}) is not a finite position.")
        height, width = self.box.shape
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"Click ({x:.1f}, {y:.1f}) is outside tile {self.box.key()} "
                f"(valid x 0..{width - 1}, y 0..{height - 1})."
            )

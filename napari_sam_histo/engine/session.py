"""One object being segmented on one tile: its clicks, the previous logits, undo and redo.

Every click re-runs the decoder with all clicks so far and the previous low-resolution logits as
the mask prompt (Kim et al. §2.2, Fig. 2a). The first click asks SAM for its three candidate masks
and keeps one of them (``FIRST_MASK_RULES``: by default the highest predicted IoU); later clicks ask
for a single mask, as SAM's authors recommend once the prompt is unambiguous.

With a slide refiner (``refine``: ``models.slide_refiner``) every decode is also
refined (unless the refined mask overlaps SAM's by less than ``MIN_AGREEMENT``: then it is not a
border correction), and the object's clicks decide which of the two is shown (``ClickEvidence``); SAM's own
low-resolution logits stay the mask prompt, and the evidence is part of each undo step.

A click never lets the object collapse where SAM can avoid it (``honour_clicks``, on by default).
When the mask-prompted decode keeps less than ``SHRINK`` (half) of the mask it started from (for a
step of positive clicks only, which add to an object, less than ``POSITIVE_SHRINK``), or a positive
click leaves the mask empty, alternatives are decoded in a fixed order (``FALLBACKS``: SAM's three
candidates for the same prompt, then the same points without the mask prompt, one mask and three),
and one more is made without the decoder: the *local* edit, the mask as it was with the decode
applied only within a disc around the new click (a positive click only adds there, a negative one
only takes away; the widest disc of ``LOCAL_RADII`` whose edit keeps enough of the mask, a negative
click's at most a quarter: ``LOCAL_SHRINK``). Keeping the object comes first: among the
alternatives that keep enough of the mask, the one violating the fewest of the tile's clicks is
shown (a positive click outside the mask or a negative one inside it is violated; a tie goes to
SAM's own before the local edit, the higher predicted IoU first, then the first), and the usual
decode only when none keeps the object; the logits shown are the next mask prompt, and
``fallback`` says which one was shown. A decode that keeps the object is not replaced merely for
breaking a click the previous mask honoured: after a few dozen clicks SAM's low-resolution mask
cannot honour every border click, and a candidate that breaks one or two fewer is often a sliver
of the object. The local edit is for tissue where SAM cannot tell the
object from its surroundings (tumour nests in stroma at a coarse level): there every SAM mask that
honours a corrective click may be a sliver, and the click is applied where it was made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..models.slide_refiner import REFINED_LEAD, ClickEvidence, masks_agree
from .embedding_cache import Embedding
from .predictor import Predictor
from .tiles import TileBox

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
# The discs, as fractions of the tile's longer side, within which the ``local`` alternative applies
# a click's decode (the widest one that keeps the object is taken).
LOCAL_RADII = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)
SHRINK = 0.5  # a decode that keeps less than this fraction of the mask it started from looks for alternatives
POSITIVE_SHRINK = 0.8  # the same for a step of positive clicks only: they add to the object
LOCAL_SHRINK = 0.75  # the local edit of a negative click takes away at most a quarter of the mask


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

    def __init__(self, predictor: Predictor, box: TileBox, embedding: Embedding, threshold: float = 0.0,
                 mask_prompt: bool = True, first_mask: str = "iou", refine=None, honour_clicks: bool = True) -> None:
        """``threshold`` is the logit above which a pixel is in the mask (SAM's 0.0; the benchmark
        uses RITM's probability 0.49). ``mask_prompt=False`` leaves out the previous logits (points
        only): zero-shot SAM is steadier that way, see the README's benchmark figures.
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
    def on_tile(cls, predictor: Predictor, source, box: TileBox) -> "ClickSession":
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
        return (self._state.logits > self.threshold).cpu().numpy()

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
            except Exception:  # the refiner cannot run on this tile: SAM's mask, as without one
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
                points, labels, prompt, (low_res, logits, iou, None), clicks, before, new, previous)
            decoder_s += seconds
        self.last_decoder_s = decoder_s
        shown, refined = logits, False
        if evidence is not None and evidence.use_refined:
            try:
                candidate, refined = self._refined(logits)
                if refined:
                    shown = candidate + self.threshold
            except Exception:  # the tile's pixels cannot be read (or the maps made): SAM's mask, as without one
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

    def _keeps(self, before: torch.Tensor, after: torch.Tensor, new: list[Click], local: bool = False) -> bool:
        """Whether the mask of ``after`` keeps enough of the mask of ``before`` for a step adding
        the ``new`` clicks: ``POSITIVE_SHRINK`` of it when they are all positive, else ``SHRINK``
        (``LOCAL_SHRINK`` for the local edit); any mask keeps an empty one."""
        fraction = POSITIVE_SHRINK if all(c.positive for c in new) else LOCAL_SHRINK if local else SHRINK
        was = before > self.threshold
        return int((was & (after > self.threshold)).sum()) >= fraction * int(was.sum())

    def _loses_object(self, new: list[Click], before: torch.Tensor, after: torch.Tensor) -> bool:
        """Whether the decode ``after`` loses most of the mask of ``before`` (or is empty after a
        positive click)."""
        if not self._keeps(before, after, new):
            return True
        return any(c.positive for c in new) and not bool((after > self.threshold).any())

    def _alternatives(self, points: np.ndarray, labels: np.ndarray, prompt: torch.Tensor | None,
                      usual: tuple, clicks: tuple[Click, ...], before: torch.Tensor, new: list[Click],
                      previous: torch.Tensor | None) -> tuple[tuple, int, float]:
        """((low-res logits, logits, predicted IoU, fallback name) of the decode to show, the
        decoder runs made, their seconds): ``usual`` lost the object, so of the ``FALLBACKS`` and
        the ``local`` edit that keep enough of ``before``'s mask, the one violating the fewest
        ``clicks`` (a tie goes to SAM's own before the local edit, the higher predicted IoU first,
        then the first in order); ``usual`` only when none keeps the object."""
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
                if self._keeps(before, logits, new):  # one that loses the object too is no way out
                    candidates.append((low_res, logits, float(prediction.iou_predictions[k]),
                                       f"{name} {k}" if multimask else name))
        if previous is not None:
            local = self._local(usual, before, previous, new)
            if local is not None:
                candidates.append(local)

        def rank(index: int):
            violated = int((~self._honoured(clicks, candidates[index][1])).sum())
            return index == 0, violated, candidates[index][3] == "local", -candidates[index][2], index

        return candidates[min(range(len(candidates)), key=rank)], len(runs), seconds

    def _local(self, usual: tuple, before: torch.Tensor, previous: torch.Tensor,
               new: list[Click]) -> tuple | None:
        """The mask it started from (``before``; ``previous`` at low resolution) with the ``usual``
        decode applied within a disc around each of the ``new`` clicks: positive clicks only add
        to the mask there (the larger logit), negative ones only take away (the smaller), mixed
        ones take the decode. The widest disc of ``LOCAL_RADII`` that keeps enough of that mask
        (``_keeps``), or None. Where SAM cannot tell the object from its surroundings (a tumour
        nest in stroma at a coarse level) every mask that honours a corrective click may be a
        sliver; this one applies the click where it was made, as a pathologist expects, and
        leaves the rest of the object as it was."""
        low_res, logits, iou, _ = usual
        height, width = self.box.shape
        scale_y = self.embedding.input_size[0] / self.embedding.original_size[0]
        scale_x = self.embedding.input_size[1] / self.embedding.original_size[1]
        low_side = previous.shape[-1] / self.predictor.image_size  # low-res pixels per model-input pixel
        rows = torch.arange(height, dtype=torch.float32)[:, None]
        cols = torch.arange(width, dtype=torch.float32)[None, :]
        low_rows = torch.arange(previous.shape[-2], dtype=torch.float32)[:, None] / (scale_y * low_side)
        low_cols = torch.arange(previous.shape[-1], dtype=torch.float32)[None, :] / (scale_x * low_side)
        previous = previous.reshape(low_res.shape).to(low_res.device)
        if all(c.positive for c in new):
            low_res, logits = torch.maximum(low_res, previous), torch.maximum(logits, before)
        elif not any(c.positive for c in new):
            low_res, logits = torch.minimum(low_res, previous), torch.minimum(logits, before)
        for fraction in LOCAL_RADII:
            radius = fraction * max(height, width)
            near = torch.zeros((height, width), dtype=torch.bool)
            near_low = torch.zeros(previous.shape[-2:], dtype=torch.bool)
            for click in new:
                near |= (rows - click.y) ** 2 + (cols - click.x) ** 2 <= radius ** 2
                near_low |= (low_rows - click.y) ** 2 + (low_cols - click.x) ** 2 <= radius ** 2
            near = near.to(logits.device)
            shown = torch.where(near, logits, before)
            if self._keeps(before, shown, new, local=True):
                return torch.where(near_low.to(low_res.device), low_res, previous), shown, iou, "local"
        return None

    def _scored(self, new: list[Click]) -> ClickEvidence:
        """The evidence after ``new`` clicks: each scores the masks shown before it (SAM's and the
        refined one) at its pixel."""
        state = self._state
        if state.evidence is not None:
            evidence = state.evidence.copy()
        elif getattr(self.refine, "evidence", None) is not None:  # the object's, from its other tiles
            evidence = self.refine.evidence.copy()
        else:
            evidence = ClickEvidence(self.threshold, getattr(self.refine, "start", "refined"),
                                     getattr(self.refine, "lead", REFINED_LEAD))
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
        if masks_agree(refined, sam, self.threshold):
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

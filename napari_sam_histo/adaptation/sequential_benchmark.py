"""The sequential benchmark: a simulated pathologist annotates the objects of one slide (or case)
in order, with and without the decoder adapting to the objects accepted so far.

For each group of objects (a ``case_id`` of the manifest, or the whole folder as one slide) the
objects are clicked in name order with RITM's clicker, as the patch benchmark clicks them. Object
k is clicked with the predictor the adapter offers after objects 1..k-1 (``adaptation.settings``:
the copy only when its never-worse gate passed, and the slide refiner only when its gate passed);
after it the object is "accepted" and the
adaptation owed for it runs to completion before object k+1, as it would while the user moves on.
The accepted mask is the final prediction when the clicks reached ``ACCEPT_IOU``; otherwise the
pathologist finishes the object by hand (painting, as the dock allows), so its accepted mask is the
true one (``accepted="clicked"``); with ``accepted="reference"`` every object is finished by hand
to the reference mask (a pathologist who corrects every border before accepting). The run without adaptation
clicks the same objects with the base decoder; both share the
embeddings (each image is encoded once).

Reported per run, over the objects after the first ``WARM_UP`` of every group: NoC@80/85/90,
NoF@85, mIoU per click, and the adaptation seconds per object on this machine; and NoC@85
against the object's index (mean over groups), drawn as a figure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_csv, write_png, write_text
from ..evaluation.metrics import DEFAULT_THRESHOLDS, miou_per_click, noc
from ..models.slide_refiner import MIN_AGREEMENT

WARM_UP = 5  # objects 6 and later are scored: the adapter has seen a few objects by then
ACCEPT_IOU = 0.85
ACCEPTED = ("clicked", "reference")  # what an object is accepted as (see the module)


@dataclass
class ObjectRun:
    group: str
    index: int  # 1-based position of the object in its group
    sample_id: str
    ious: list[float] = field(default_factory=list)
    adapted: bool = False  # clicked with the adapted copy
    refined: bool = False  # clicked with the slide refiner offered (shown where the clicks favour it)
    adapt_s: float = 0.0  # the adaptation run after this object was accepted


def group_samples(dataset: str | Path, group_by: str | None = "case_id", components: bool = False,
                  stride: int = 1, min_objects: int = WARM_UP + 1, max_objects: int | None = None,
                  max_groups: int | None = None) -> dict[str, list]:
    """group -> its samples in name order (groups with fewer than ``min_objects`` left out; every
    ``stride``-th group, the first ``max_objects`` of each). Without the column, one group."""
    from ..evaluation.dataset import Skipped, find_pairs, load_samples, manifest_column

    dataset = Path(dataset)
    groups_of = manifest_column(dataset, group_by)
    groups: dict[str, list] = {}
    for pair in find_pairs(dataset):
        group = groups_of.get(pair.stem, dataset.name)
        groups.setdefault(group, []).append(pair)
    chosen = [g for g in sorted(groups) if len(groups[g]) >= (1 if components else min_objects)][::max(stride, 1)]
    out = {}
    for group in chosen[:max_groups]:
        samples = [s for pair in groups[group] for s in load_samples(pair, components=components)
                   if not isinstance(s, Skipped)]
        if len(samples) >= min_objects:
            out[group] = samples[:max_objects]
    return out


def run_group(predictor, samples: list, adapt: bool, group: str = "", max_clicks: int = 20,
              stop_iou: float | None = max(DEFAULT_THRESHOLDS), steps_per_object: int | None = None,
              seed: int = 0, log=None, lr: float | None = None, prior_weight: float | None = None,
              gated: bool = True, refiner: bool = True, accepted: str = "clicked",
              min_agreement: float = MIN_AGREEMENT) -> list[ObjectRun]:
    """Click the objects of one group in order (see the module). ``gated=False`` (a diagnostic,
    never the dock's behaviour) clicks with the adapted copy and the slide refiner as soon as they
    have learnt from an object, whatever the gates say: what adaptation would do if they let it.
    ``refiner``: learn a slide refiner too, shown only where it overlaps SAM's by ``min_agreement``
    (IoU; 0: always, a diagnostic). ``accepted``: one of ``ACCEPTED``."""
    from ..evaluation.runner import SamClickModel, run_sample
    from ..models.slide_prior import PRIOR_WEIGHT
    from ..training.examples import AdaptationExample
    from .decoder_adapter import DecoderAdapter
    from .settings import STEPS_PER_OBJECT

    steps = STEPS_PER_OBJECT if steps_per_object is None else steps_per_object
    weight = PRIOR_WEIGHT if prior_weight is None else prior_weight
    adapter = (DecoderAdapter(predictor, steps, lr=lr, seed=seed, prior_weight=weight, refiner=refiner,
                              min_agreement=min_agreement) if adapt else None)
    runs = []
    for index, sample in enumerate(samples, start=1):
        active, refining = predictor, None
        if adapter is not None:
            active = adapter.active_predictor() if gated or not adapter.examples else adapter.snapshot_predictor()
            refining = adapter.active_refiner() if gated or adapter.refinement is None else adapter.refinement.refiner
        method = SamClickModel(active, "sequential", refiner=refining)
        result = run_sample(method, sample, max_clicks, stop_iou, keep_masks=True)
        run = ObjectRun(group, index, sample.sample_id, list(result.ious), active is not predictor,
                        refining is not None)
        if adapter is not None:
            started = time.perf_counter()
            reached = accepted == "clicked" and result.ious and result.ious[-1] >= ACCEPT_IOU
            mask = result.masks[-1] if reached else sample.target
            embedding = predictor.embedding_for_array(sample.image, sample.identity)
            clicks = tuple((c.col + 0.5, c.row + 0.5, c.positive) for c in result.clicks)
            adapter.add_example(AdaptationExample(embedding, np.asarray(mask, bool), clicks, sample.image))
            while adapter.update_refiner():
                pass
            while adapter.step() is not None:
                pass
            adapter.update_gate()
            run.adapt_s = time.perf_counter() - started
        runs.append(run)
        if log is not None:
            gate = ""
            st = adapter.state() if adapter is not None else None
            if st is not None and st.base_noc is not None:
                gate = f", gate: adapted {st.adapted_noc:.2f} vs base {st.base_noc:.2f} on {st.held_out} held out"
            if st is not None and st.refiner_judged:
                gate += (f", refiner gate: {st.refiner_noc:.2f} vs base {st.refiner_base_noc:.2f} on "
                         f"{st.refiner_judged} object(s)")
            used = (" (copy in use)" if run.adapted else "") + (" (refiner offered)" if run.refined else "")
            log(f"{group} #{index} {'adapted' if adapt else 'base'}{used}: "
                f"{len(run.ious)} clicks, IoU {run.ious[-1] if run.ious else 0:.3f}, adapt {run.adapt_s:.1f} s{gate}")
    return runs


def summarize(runs: list[ObjectRun], max_clicks: int, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Scores over the objects after the warm-up, and NoC@85 per object index."""
    scored = [r for r in runs if r.index > WARM_UP and r.ious]
    out = {"n_objects": len(scored), "n_groups": len({r.group for r in runs})}
    for t in thresholds:
        out[f"noc@{round(t * 100)}"] = float(np.mean([noc(r.ious, t, max_clicks) for r in scored])) if scored else None
    out["nof@85"] = int(sum(max(r.ious) < 0.85 for r in scored))
    out["miou_per_click"] = miou_per_click([r.ious for r in scored], max_clicks) if scored else []
    out["adapt_s_per_object"] = float(np.mean([r.adapt_s for r in runs])) if runs else 0.0
    out["adapted_share"] = float(np.mean([r.adapted for r in scored])) if scored else 0.0
    out["refined_share"] = float(np.mean([r.refined for r in scored])) if scored else 0.0
    by_index: dict[int, list[int]] = {}
    for r in runs:
        by_index.setdefault(r.index, []).append(noc(r.ious, 0.85, max_clicks))
    out["noc85_by_index"] = {i: float(np.mean(v)) for i, v in sorted(by_index.items())}
    return out


def format_table(source: str, base: dict, adapted: dict) -> str:
    lines = [("| source | run | groups | objects scored | NoC@80 | NoC@85 | NoC@90 | NoF@85 | mIoU@1 | mIoU@5 | "
              "adaptation s/object | copy in use | refiner offered |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in (("base", base), ("adapted", adapted)):
        curve = s["miou_per_click"]
        at = lambda k, curve=curve: f"{curve[k - 1]:.3f}" if len(curve) >= k else "–"  # noqa: E731
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {source} | {name} | {s['n_groups']} | {s['n_objects']} | {fmt(s['noc@80'])} | "
                     f"{fmt(s['noc@85'])} | {fmt(s['noc@90'])} | {s['nof@85']} | {at(1)} | {at(5)} | "
                     f"{s['adapt_s_per_object']:.1f} | {s['adapted_share']:.0%} | {s.get('refined_share', 0.0):.0%} |")
    return "\n".join(lines)


def write_figure(path: Path, source: str, base: dict, adapted: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, s, style in (("SAM decoder as shipped", base, "o-"), ("adapting to accepted objects", adapted, "s-")):
        xs = sorted(int(i) for i in s["noc85_by_index"])
        ax.plot(xs, [s["noc85_by_index"][i] for i in xs], style, label=name, markersize=3)
    ax.axvline(WARM_UP + 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("object index on the slide")
    ax.set_ylabel("NoC@85 (mean over slides)")
    ax.set_title(source, fontsize=9)
    ax.legend(fontsize=8)
    return write_png(path, fig)


def run_benchmark(dataset: str | Path, out_dir: str | Path, model="vit_t", decoder: str = "sam",
                  device: str = "cpu", group_by: str | None = "case_id", components: bool = False,
                  stride: int = 1, max_objects: int | None = None, max_groups: int | None = None,
                  max_clicks: int = 20, steps_per_object: int | None = None, seed: int = 0, log=print,
                  lr: float | None = None, embedding_store: str | Path | None = None,
                  prior_weight: float | None = None, gated: bool = True, refiner: bool = True,
                  accepted: str = "clicked", min_agreement: float = MIN_AGREEMENT) -> dict:
    """Both runs on every group; ``summary.json``, ``objects.csv``, ``table.md`` and
    ``noc-by-object.png`` in ``out_dir``; returns the summary."""
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..errors import InputError
    from ..models.registry import load_model
    from ..models.slide_prior import PRIOR_WEIGHT
    from .settings import STEPS_PER_OBJECT

    if accepted not in ACCEPTED:
        raise InputError(f"accepted {accepted!r}: choose one of {', '.join(ACCEPTED)}.")
    groups = group_samples(dataset, group_by, components, stride, max_objects=max_objects, max_groups=max_groups)
    if not groups:
        raise InputError(f"{dataset} has no slide or case with at least {WARM_UP + 1} objects to click in order.")
    loaded = load_model(model, device) if isinstance(model, str) else model
    # both runs share embeddings: in memory, and on disk with ``embedding_store`` (a rerun with
    # another recipe then skips the encoder)
    cache = EmbeddingCache(max_bytes=1 << 34, store_dir=embedding_store, store_dtype="float16",
                           max_disk_bytes=None)
    predictor = Predictor(loaded, decoder, cache=cache)
    runs = {"base": [], "adapted": []}
    for group, samples in groups.items():
        for name in runs:
            runs[name] += run_group(predictor, samples, name == "adapted", group, max_clicks,
                                    steps_per_object=steps_per_object, seed=seed, log=log, lr=lr,
                                    prior_weight=prior_weight, gated=gated, refiner=refiner, accepted=accepted,
                                    min_agreement=min_agreement)
    source = Path(dataset).name
    summary = {"source": str(dataset), "model": loaded.name, "decoder": decoder, "max_clicks": max_clicks,
               "warm_up": WARM_UP, "steps_per_object": STEPS_PER_OBJECT if steps_per_object is None else steps_per_object,
               "lr": lr, "prior_weight": PRIOR_WEIGHT if prior_weight is None else prior_weight, "gated": gated,
               "refiner": refiner, "accepted": accepted,
               **{name: summarize(r, max_clicks) for name, r in runs.items()}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_csv(out / "objects.csv", ["run", "group", "index", "sample", "clicks", "final_iou", "noc85", "copy_in_use",
                                    "refiner_offered", "adapt_s"],
              ([name, r.group, r.index, r.sample_id, len(r.ious), f"{r.ious[-1] if r.ious else 0:.4f}",
                noc(r.ious, 0.85, max_clicks), int(r.adapted), int(r.refined), f"{r.adapt_s:.2f}"]
               for name, rs in runs.items() for r in rs))
    table = format_table(source, summary["base"], summary["adapted"])
    write_text(out / "table.md", table + "\n")
    write_figure(out / "noc-by-object.png", source, summary["base"], summary["adapted"])
    return summary

"""The learning-curve benchmark: how many clicks a project decoder (a ``training.recipes``
recipe: ``decoder_finetune`` or ``tissue_training``) saves on cases it never saw, against how many
of the lab's objects it learnt from.

Per seed, the dataset's groups (a manifest column such as EBHI-Seg's ``case_id``, one slide or
case each; without the column every image is its own group) are split by a seeded hash
(``training.data.split_by_group``) into test groups (about ``test_fraction`` of the objects) and
training groups; no group is on both sides. The training objects are shuffled by the seed and
for each k the first k of them train a decoder (so the 10 objects are among the 25, ...); a k
larger than the training groups hold is skipped with a line saying so. Every decoder of a seed,
and zero-shot SAM, click the same test objects (``test_objects``: a seeded draw from the test
groups) with the benchmark's clicker (``evaluation.runner.run_sample``, RITM's rule, mask prompt
on, up to ``max_clicks`` clicks, stopping at IoU 0.9).

Reported per k (mean over seeds, and per seed): NoC@80/85/90, NoC@85 against zero-shot SAM's,
NoC@85 *as offered*, mIoU after 1, 5 and 10 clicks, the training wall time (clicking the training objects with SAM,
fitting, DAgger; embedding apart, as ``embed s``: what computing those objects' embeddings took).
Embeddings are computed once into a float16 store with ``embedding_store`` (keyed as the
``benchmark`` keys its store, so either reuses the other's), so a rerun costs only training and
clicking. Output: ``table.md``, ``summary.json``, ``objects.csv`` and ``noc85-vs-k.png``.

*As offered*: what a user with these k objects is offered. A project holds objects out and offers
its decoder as the default only when it needs fewer clicks than zero-shot SAM on them
(``held_out_check``), so for each k the objects such a project would hold out (``project_held_out``:
a quarter of the project, from training groups none of the k objects is in, else the same groups'
next objects; never a test object) judge the decoder trained on the k objects, and the test
objects' NoC@85 as offered is the decoder's when it passes and zero-shot SAM's when it does not.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..atomic import write_csv, write_png, write_text
from ..errors import InputError
from ..evaluation.metrics import DEFAULT_THRESHOLDS, noc, summarize
from .project_split import HELD_OUT_FRACTION

SHOTS = (10, 25, 50, 100)
TEST_FRACTION = 0.3
STOP_IOU = max(DEFAULT_THRESHOLDS)
SAM = "zero-shot SAM"
TABLE_COLUMNS = ("method", "k", "seeds", "test objects", "NoC@80", "NoC@85", "NoC@90", "NoC@85 vs SAM",
                 "NoC@85 per seed", "as offered", "offered per seed", "mIoU@1", "mIoU@5", "mIoU@10", "train s",
                 "embed s")
OFFERED_NAMES = {"decoder": "decoder", "sam": "SAM"}


def load_objects(dataset: str | Path, group_by: str | None, components: bool = False, min_object_px: int = 0,
                 stride: int = 1):
    """The dataset's objects as ``training.data.TrainingPatch`` (sample + group)."""
    from .data import load_patches

    patches, _ = load_patches(dataset, group_by=group_by, components=components, min_object_px=min_object_px,
                              stride=stride)
    return patches


def split(patches: list, seed: int, test_fraction: float = TEST_FRACTION, test_objects: int | None = None):
    """(training objects in the seed's order, test objects): whole groups on each side."""
    from .data import split_by_group

    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction {test_fraction!r} must lie strictly between 0 and 1.")
    train, test = split_by_group(patches, test_fraction, seed)
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    train = [train[int(i)] for i in order]
    if test_objects is not None and len(test) > test_objects:
        keep = sorted(np.random.default_rng([seed, 2]).choice(len(test), size=test_objects, replace=False))
        test = [test[int(i)] for i in keep]
    return train, test


def project_held_out(train: list, k: int, held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[list, str]:
    """(objects, how chosen): what a project whose training objects are ``train[:k]`` would hold out
    to judge its decoder, taken from ``train[k:]`` (never a test object): as many as make
    ``held_out_fraction`` of the project, from the groups none of the k objects is in ("other
    groups": held-out slides), else from those groups ("same groups": one slide's later objects);
    ([], "") when no training object is left."""
    wanted = math.ceil(k * held_out_fraction / (1 - held_out_fraction))
    used = {p.group for p in train[:k]}
    others = [p for p in train[k:] if p.group not in used]
    if others:
        return others[:wanted], "other groups"
    rest = train[k:wanted + k]
    return rest, "same groups" if rest else ""


def _scores(results: list, max_clicks: int) -> dict:
    s = summarize([r.ious for r in results], DEFAULT_THRESHOLDS, max_clicks)
    curve = s["miou_per_click"]
    return {"n": s["n_samples"], **{f"noc@{round(t * 100)}": s[f"noc@{round(t * 100)}"] for t in DEFAULT_THRESHOLDS},
            "nof@85": s["nof@85"], **{f"miou@{c}": curve[c - 1] if len(curve) >= c else None for c in (1, 5, 10)}}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def format_table(rows: list[dict]) -> str:
    """One line per method (zero-shot SAM, then each k), means over seeds."""
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "| --- | " + " | ".join("---:" for _ in TABLE_COLUMNS[1:]) + " |"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        offered = "" if r.get("offered_noc@85") is None else f"{r['offered_noc@85']:.2f} ({r['offered_ratio']:.2f}x)"
        lines.append(f"| {r['method']} | {r['k'] if r['k'] else '–'} | {r['seeds']} | {r['n']} | {fmt(r['noc@80'])} | "
                     f"{fmt(r['noc@85'])} | {fmt(r['noc@90'])} | {ratio} | "
                     f"{' / '.join(fmt(v) for v in r['noc85_per_seed'])} | {offered} | "
                     f"{' / '.join(r.get('offered_per_seed') or [])} | {fmt(r['miou@1'], 3)} | "
                     f"{fmt(r['miou@5'], 3)} | {fmt(r['miou@10'], 3)} | {fmt(r['train_s'], 0)} | {fmt(r['embed_s'], 0)} |")
    return "\n".join(lines)


def table_rows(per_seed: dict, method: str = "tissue decoder") -> list[dict]:
    """Rows of ``format_table`` from ``summary["seeds"]`` (seed -> {"sam": scores, "k": {k: scores}});
    ``method`` names the trained decoders."""
    seeds = sorted(per_seed, key=int)
    rows = []

    def row(method, k, entries, against_sam=True):
        sam = [per_seed[s]["sam"]["noc@85"] for s, e in zip(seeds, entries) if e is not None]
        entries = [e for e in entries if e is not None]
        out = {"method": method, "k": k, "seeds": len(entries), "n": sum(e["n"] for e in entries) // max(len(entries), 1)}
        for key in ("noc@80", "noc@85", "noc@90", "miou@1", "miou@5", "miou@10"):
            out[key] = _mean(e[key] for e in entries)
        out["noc85_per_seed"] = [e["noc@85"] for e in entries]
        sam_mean = _mean(sam) if against_sam else None
        out["ratio"] = out["noc@85"] / sam_mean if sam_mean else None
        offered = [e.get("offered_noc@85") for e in entries]
        complete = bool(sam_mean and entries and None not in offered)
        out["offered_noc@85"] = _mean(offered) if complete else None
        out["offered_ratio"] = out["offered_noc@85"] / sam_mean if complete else None
        out["offered_per_seed"] = [OFFERED_NAMES.get(e.get("offered"), "–") for e in entries] if complete else []
        out["train_s"] = _mean(e.get("train_s") for e in entries)
        out["embed_s"] = _mean(e.get("embed_s") for e in entries)
        return out

    rows.append(row(SAM, None, [per_seed[s]["sam"] for s in seeds], against_sam=False))
    bases = [per_seed[s].get("base") for s in seeds]
    if any(bases):  # the decoder the fine-tuning started from, as shipped (trained on none of the objects)
        rows.append(row(base_label(next(b for b in bases if b)["name"]), None, bases))
    shots = sorted({int(k) for s in seeds for k in per_seed[s]["k"]})
    for k in shots:
        entries = [per_seed[s]["k"].get(str(k)) for s in seeds]
        rows.append(row(method, k, entries))
    return rows


def _shipped_start(model, recipe):
    """The shipped decoder a fine-tuning recipe may start from (its base; for ``auto`` the shipped
    one among its bases, where the model has one), or None (SAM's, or another recipe)."""
    from .decoder_finetune import FinetuneRecipe, candidate_bases

    if not isinstance(recipe, FinetuneRecipe) or recipe.base == "sam":
        return None
    return next((choice for choice in candidate_bases(model, recipe) if choice.name != "sam"), None)


def base_label(base: str) -> str:
    """The table's name for the shipped decoder a fine-tuning started from, untrained on the lab's objects."""
    return f"{base} decoder as shipped"


def write_figure(path: Path, source: str, per_seed: dict, method: str = "tissue decoder") -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    seeds = sorted(per_seed, key=int)
    means: dict[int, list] = {}
    offered: dict[int, list] = {}
    for index, seed in enumerate(seeds):
        ks = sorted(int(k) for k in per_seed[seed]["k"])
        values = [per_seed[seed]["k"][str(k)]["noc@85"] for k in ks]
        for k, v in zip(ks, values):
            means.setdefault(k, []).append(v)
            offered.setdefault(k, []).append(per_seed[seed]["k"][str(k)].get("offered_noc@85"))
        ax.plot(ks, values, "o-", color=f"C{index}", alpha=0.45, markersize=3, label=f"{method}, seed {seed}")
        ax.axhline(per_seed[seed]["sam"]["noc@85"], color=f"C{index}", linestyle="--", linewidth=1, alpha=0.6,
                   label=f"zero-shot SAM, seed {seed}")
    if means:
        ks = sorted(means)
        ax.plot(ks, [np.mean(means[k]) for k in ks], "s-", color="black", markersize=4, label=f"{method}, mean")
        shown = [k for k in ks if None not in offered[k]]
        if shown:
            ax.plot(shown, [np.mean(offered[k]) for k in shown], "^:", color="black", markersize=4,
                    label="as offered, mean")
        ax.axhline(np.mean([per_seed[seed]["sam"]["noc@85"] for seed in seeds]), color="black", linestyle="--",
                   linewidth=1, label="zero-shot SAM, mean")
    ax.set_xscale("log")
    ax.set_xticks(sorted(means) or [1])
    ax.set_xticklabels([str(k) for k in sorted(means)] or ["1"])
    ax.set_xlabel("training objects (k)")
    ax.set_ylabel("NoC@85 on held-out cases")
    ax.set_title(source, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, never over them
    fig.tight_layout()
    return write_png(path, fig)


def run_learning_curve(dataset: str | Path, out_dir: str | Path, group_by: str | None = "case_id",
                       shots=SHOTS, seeds: int = 2, components: bool = False, min_object_px: int = 0,
                       max_clicks: int = 20, test_objects: int | None = None, test_fraction: float = TEST_FRACTION,
                       embedding_store: str | Path | None = None, model="vit_t", device: str = "cpu",
                       precision: str = "auto", recipe=None, save_decoders: bool = False, stride: int = 1,
                       first_seed: int = 0, log=print) -> dict:
    """The benchmark (see the module) for seeds ``first_seed`` .. ``first_seed + seeds - 1``; returns
    the summary written to ``out_dir/summary.json``. The report is rewritten after every k (marked
    ``partial`` until the last), so a run stopped early keeps what it measured."""
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..evaluation.runner import SamClickModel, run_sample
    from ..evaluation.runtime import device_name
    from ..models.registry import load_model
    from .examples import AdaptationExample
    from .held_out_check import check_held_out
    from .tissue_training import TissueRecipe, prepare, simulate, train_tissue_head

    log = log or (lambda line: None)
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 1:
        raise InputError(f"--shots {shots}: every k must be a whole number >= 1.")
    if seeds < 1:
        raise InputError(f"--seeds {seeds} must be >= 1.")
    if max_clicks < 1:
        raise InputError(f"--max-clicks {max_clicks} must be >= 1.")
    if test_objects is not None and test_objects < 1:
        raise InputError(f"--test-objects {test_objects} must be >= 1.")
    recipe = recipe or TissueRecipe()
    patches = load_objects(dataset, group_by, components, min_object_px, stride)
    if len({p.group for p in patches}) < 2:
        raise InputError(f"{dataset}: all its objects are in one group (by {group_by or 'image'}); a learning "
                         f"curve needs groups to hold out. Give --group-by a column that tells cases apart.")
    loaded = load_model(model, device) if isinstance(model, str) else model
    cache = EmbeddingCache(max_bytes=1 << 32, store_dir=embedding_store, store_dtype="float16", max_disk_bytes=None)
    # keyed as ``benchmark --embedding-store`` keys its float16 store: the two share entries
    key_tag = f"|benchmark:{loaded.device.type}:{device_name(loaded.device)}:float16" if embedding_store else ""
    sam = Predictor(loaded, "sam", cache=cache, precision=precision)
    image_size = int(loaded.sam.image_encoder.img_size)
    zero_shot: dict[str, tuple] = {}  # sample id -> (states, seconds): the same for every k and seed
    embed_s: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[str, dict] = {}
    object_rows = []
    skipped = []
    started = time.perf_counter()

    def embedding(sample):
        e = sam.embedding_for_array(sample.image, sample.identity + key_tag)
        embed_s[sample.identity] = e.encode_s
        return e

    def example(patch):
        return AdaptationExample(embedding(patch.sample), np.asarray(patch.sample.target, bool))

    def click(predictor, name, test):
        method = SamClickModel(predictor, name, key_tag=key_tag)
        return [run_sample(method, p.sample, max_clicks, STOP_IOU) for p in test]

    def report(partial: bool) -> dict:
        from ..evaluation.runtime import predictor_runtime

        summary = {"source": str(dataset), "group_by": group_by, "components": components, "shots": shots,
                   "seeds": sorted(int(s) for s in per_seed), "max_clicks": max_clicks, "stop_iou": STOP_IOU,
                   "test_fraction": test_fraction, "test_objects": test_objects, "model": loaded.name,
                   "recipe": recipe.as_dict(), "method": recipe.label, "runtime": predictor_runtime(sam), "skipped": skipped,
                   "wall_s": time.perf_counter() - started, "partial": partial, "seeds_detail": per_seed}
        write_report(out, summary, object_rows)
        return summary

    for seed in range(first_seed, first_seed + seeds):
        train, test = split(patches, seed, test_fraction, test_objects)
        train_groups, test_groups = {p.group for p in train}, {p.group for p in test}
        assert not train_groups & test_groups
        log(f"seed {seed}: {len(train)} training objects in {len(train_groups)} groups, {len(test)} test objects "
            f"in {len(test_groups)} groups")
        for p in test:
            embedding(p.sample)
        results = click(sam, SAM, test)
        entry = {"train_groups": sorted(train_groups), "test_groups": sorted(test_groups),
                 "test_objects": [p.sample.sample_id for p in test], "sam": _scores(results, max_clicks), "k": {}}
        per_seed[str(seed)] = entry
        object_rows += [[seed, "", SAM, p.sample.sample_id, p.group, noc(r.ious, 0.85, max_clicks),
                         f"{r.ious[-1] if r.ious else 0:.4f}", len(r.ious)] for p, r in zip(test, results)]
        log(f"seed {seed}: {SAM}: NoC@85 {entry['sam']['noc@85']:.2f} on {len(test)} objects")
        shipped = _shipped_start(loaded, recipe)
        if shipped is not None:
            start = Predictor(loaded, shipped, cache=cache, precision=precision)
            label = base_label(shipped.name)
            results = click(start, label, test)
            entry["base"] = {"name": shipped.name, **_scores(results, max_clicks)}
            object_rows += [[seed, "", label, p.sample.sample_id, p.group, noc(r.ious, 0.85, max_clicks),
                             f"{r.ious[-1] if r.ious else 0:.4f}", len(r.ious)] for p, r in zip(test, results)]
            log(f"seed {seed}: {label}: NoC@85 {entry['base']['noc@85']:.2f}")
        for k in shots:
            if k > len(train):
                line = (f"seed {seed}: k={k} skipped: the training groups hold {len(train)} objects "
                        f"(fewer than {k})")
                log(line)
                skipped.append(line)
                continue
            chosen = train[:k]
            examples = [example(p) for p in chosen]
            if isinstance(recipe, TissueRecipe):  # its zero-shot states serve every k: clicked once
                missing = [i for i, p in enumerate(chosen) if p.sample.sample_id not in zero_shot]
                if missing:
                    states, seconds = simulate(sam, [prepare(examples[i], image_size) for i in missing], None, recipe)
                    for i, s, t in zip(missing, states, seconds):
                        zero_shot[chosen[i].sample.sample_id] = (s, t)
                trained = train_tissue_head(sam, examples, recipe,
                                            zero_shot_states=[zero_shot[p.sample.sample_id][0] for p in chosen],
                                            zero_shot_seconds=[zero_shot[p.sample.sample_id][1] for p in chosen],
                                            log=log)
            else:
                trained = recipe.train(sam, examples, log=log)
            predictor = Predictor(loaded, trained.choice, cache=cache, precision=precision)
            results = click(predictor, f"{recipe.name} k={k}", test)
            scores = _scores(results, max_clicks)
            scores["train_s"] = trained.report["train_s"]
            scores["embed_s"] = float(sum(embed_s.get(i, 0.0) for i in {p.sample.identity for p in chosen}))
            scores["report"] = trained.report
            held, held_by = project_held_out(train, k)
            if held:  # what a project of these k objects would offer (see the module)
                check = check_held_out(sam, predictor, [example(p) for p in held])
                scores["held_out"] = {**check.figures(), "by": held_by, "better": check.better}
                scores["offered"] = "decoder" if check.better else "sam"
                scores["offered_noc@85"] = scores["noc@85"] if check.better else entry["sam"]["noc@85"]
                log(f"seed {seed}: k={k}: held out as a project would ({check.objects} objects, {held_by}): "
                    f"NoC@85 SAM {check.sam_noc:.2f}, this decoder {check.decoder_noc:.2f} -> offered: "
                    f"{OFFERED_NAMES[scores['offered']]}")
            entry["k"][str(k)] = scores
            object_rows += [[seed, k, recipe.label, p.sample.sample_id, p.group, noc(r.ious, 0.85, max_clicks),
                             f"{r.ious[-1] if r.ious else 0:.4f}", len(r.ious)] for p, r in zip(test, results)]
            started_from = trained.report.get("base")  # a fine-tuning's start (its report's)
            log(f"seed {seed}: k={k}: NoC@85 {scores['noc@85']:.2f} (SAM {entry['sam']['noc@85']:.2f}"
                + (f"; started from {started_from}" if started_from else "") + "), "
                f"mIoU@1 {scores['miou@1']:.3f} (SAM {entry['sam']['miou@1']:.3f}), trained in "
                f"{scores['train_s']:.0f} s")
            if save_decoders:
                trained.save(out / f"{recipe.name}-seed{seed}-k{k}.pt", loaded,
                             metrics={"noc@85": scores["noc@85"], "sam_noc@85": entry["sam"]["noc@85"]},
                             config=recipe.as_dict(),
                             provenance={"dataset": str(dataset), "objects": k, "seed": seed})
            report(partial=True)
    return report(partial=False)


OBJECT_COLUMNS = ["seed", "k", "method", "sample", "group", "noc85", "final_iou", "clicks"]


def write_report(out: Path, summary: dict, object_rows: list) -> None:
    """``summary.json`` (with the table's rows), ``objects.csv``, ``table.md``, ``noc85-vs-k.png``."""
    summary["rows"] = table_rows(summary["seeds_detail"], summary.get("method", "tissue decoder"))
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_csv(out / "objects.csv", OBJECT_COLUMNS, object_rows)
    write_text(out / "table.md", format_table(summary["rows"]) + "\n")
    write_figure(out / "noc85-vs-k.png", Path(summary["source"]).name, summary["seeds_detail"],
                 summary.get("method", "tissue decoder"))


def _recipe_settings(summary: dict) -> dict | None:
    """A report's recipe with the settings added to it since filled in as they were when it ran
    (by the recipe whose decoders the report names: ``DecoderRecipe.completed``)."""
    from .decoder_finetune import FinetuneRecipe
    from .tissue_training import TissueRecipe

    recipe = summary.get("recipe")
    for kind in (FinetuneRecipe, TissueRecipe):
        if recipe and summary.get("method") == kind.label:
            return kind.completed(recipe)
    return recipe


def join_reports(folders: list, out_dir: str | Path) -> dict:
    """One report from the reports of runs on other seeds of the same dataset and settings (e.g.
    seeds run side by side: ``--first-seed``), or of other k on the same seed and split (e.g. k=100
    run after k=10 and 25); ``InputError`` when they differ, split a seed otherwise or repeat a k."""
    import copy
    import csv

    summaries, rows = [], []
    for folder in folders:
        path = Path(folder) / "summary.json"
        try:
            summaries.append(json.loads(path.read_text()))
            with open(Path(folder) / "objects.csv", newline="") as stream:
                rows += [[r[c] for c in OBJECT_COLUMNS] for r in csv.DictReader(stream)]
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{folder}: not a learning-curve report that can be read ({err}).") from err
    same = ("source", "group_by", "components", "max_clicks", "test_fraction", "test_objects", "model", "recipe")
    for summary in summaries:
        summary["recipe"] = _recipe_settings(summary)
    for summary, folder in zip(summaries[1:], folders[1:]):
        differ = [key for key in same if summary.get(key) != summaries[0].get(key)]
        if differ:
            raise InputError(f"{folder} was run with other {', '.join(differ)} than {folders[0]}; only runs of "
                             f"the same settings on other seeds are joined.")
    joined = dict(summaries[0])
    detail: dict = {}
    split = ("train_groups", "test_groups", "test_objects")
    for summary, folder in zip(summaries, folders):
        for seed, part in summary["seeds_detail"].items():
            if seed not in detail:
                detail[seed] = copy.deepcopy(part)
                continue
            mine = detail[seed]
            if any(mine.get(key) != part.get(key) for key in split):
                raise InputError(f"{folder} repeats seed {seed} with another split; join runs of other seeds.")
            repeated = set(mine["k"]) & set(part["k"])
            if repeated:
                raise InputError(f"{folder} repeats seed {seed} at k={', '.join(sorted(repeated, key=int))}; join "
                                 f"runs of other seeds or other k.")
            mine["k"].update(part["k"])
    unique: dict = {}
    for row in rows:  # a seed's zero-shot rows are in each of its runs: once each
        unique.setdefault(tuple(row[:4]), row)
    rows = list(unique.values())
    joined.update(seeds_detail=detail, seeds=sorted(int(s) for s in detail),
                  skipped=[line for s in summaries for line in s["skipped"]],
                  partial=any(s.get("partial") for s in summaries), wall_s=sum(s["wall_s"] for s in summaries),
                  shots=sorted({k for s in summaries for k in s["shots"]}), joined_from=[str(f) for f in folders])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, joined, rows)
    return joined

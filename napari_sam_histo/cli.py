"""The ``napari-sam-histo`` command: demo, weights, perf, prepare, benchmark, train, slide-memory, embed,
slide-benchmark, sequential-benchmark, learning-curve, project, gui-stalls.

Thin: parse arguments, call the core, print. A ``SamHistoError`` (bad file, bad value, missing
weights) is printed as one line and exits with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def _quiet_third_party_warnings() -> None:
    # timm/mobile_sam print deprecation and registry warnings at import; they are not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
    warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)


def _cmd_weights(args: argparse.Namespace) -> int:
    from .models.registry import get_spec, list_models
    from .models.weights import candidate_paths, fetch_weights, find_weights, models_dir

    if args.action == "list":
        print(f"{'model':24} {'arch':6} {'on disk':8} {'where (or where fetch puts it)':64} description")
        for spec in list_models():
            path = next((p for p in candidate_paths(spec.weights) if p.is_file()), None)
            where = path or models_dir() / spec.weights.filename
            print(f"{spec.name:24} {spec.arch:6} {'yes' if path else 'no':8} {str(where):64} {spec.description}")
        return 0
    spec = get_spec(args.name)
    if args.action == "path":
        path = find_weights(spec.weights)
        if path is None:
            print(f"{spec.name}: not on disk (fetch with `napari-sam-histo weights fetch {spec.name}`)")
            return 1
        print(path)
        return 0
    path = fetch_weights(spec.weights)
    print(f"{spec.name}: {path} (verified {spec.weights.expected_hash or 'sha256 recorded'})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(headless=args.headless, out_dir=args.out, model=args.model, device=args.device)


def _cmd_perf(args: argparse.Namespace) -> int:
    from .perf import format_report, run_perf

    report = run_perf(model=args.model, device=args.device, clicks=args.clicks,
                      random_weights=args.random_weights, encoder_runs=args.encoder_runs)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _first_masks(text: str) -> list[str]:
    from .engine.session import FIRST_MASK_RULES
    from .errors import InputError

    rules = [r.strip() for r in text.split(",") if r.strip()]
    if not rules or any(r not in FIRST_MASK_RULES for r in rules):
        raise InputError(f"--first-mask {text!r}: choose from {', '.join(FIRST_MASK_RULES)} (comma-separated).")
    return rules


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .evaluation.benchmark import run_benchmark
    from .evaluation.benchmark_config import BenchmarkConfig
    from .evaluation.report import format_skipped, format_table

    config = BenchmarkConfig(
        dataset=args.dataset, out_dir=args.out, models=args.model or ["vit_t"], decoders=args.decoder or ["sam"],
        thresholds=tuple(args.iou), max_clicks=args.max_clicks, full_curve=args.full_curve,
        ritm_nof=args.ritm_nof, instances=args.instances, components=args.components,
        ignore_value=args.ignore_value,
        mask_suffix=args.mask_suffix, limit=args.limit, stride=args.stride, device=args.device,
        mask_prompts={"on": (True,), "off": (False,), "both": (True, False)}[args.mask_prompt],
        first_masks=tuple(_first_masks(args.first_mask)),
        precision=args.precision, embedding_store=args.embedding_store,
        embedding_store_dtype=args.embedding_store_dtype,
        scheduler=args.scheduler, workers=args.workers,
    )
    existing = "resume" if args.resume else "overwrite" if args.overwrite else "refuse"
    bar = tqdm(total=None, unit="image", desc="benchmark", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    from .evaluation.distributed_benchmark import BenchmarkWorkerError

    try:
        summary = run_benchmark(config, progress=progress, existing=existing)
    except BenchmarkWorkerError as err:  # names the image and the partial report
        bar.close()
        print(f"napari-sam-histo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()  # before the message, so the bar does not overwrite it
        print(f"interrupted: a partial report is in {args.out}; continue it with --resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(format_table(summary))  # its first line: the precision, device and versions that ran
    store = summary.get("config", {}).get("embedding_store")
    if store:
        loaded = sum(m.get("embeddings_from_store") or 0 for m in summary["methods"].values())
        print(f"embedding store {store}: {loaded} embedding{'s' if loaded != 1 else ''} read from it "
              f"(SPCe2e charges each at the encoder seconds recorded when it was computed)")
    skipped = format_skipped(summary)
    if skipped:
        print(skipped)
    print(f"report: {args.out} (samples.csv, summary.json, table.txt, miou.png)")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .cohort.embed import run_embed
    from .errors import InputError

    level = args.level
    if level != "auto":
        try:
            level = int(level)
        except ValueError:
            raise InputError(f"--level {args.level!r}: give 'auto' or a pyramid level number.") from None
    summary = run_embed(args.slides, out=args.out, model=args.model, device=args.device, level=level,
                        magnification=args.magnification, tissue_only=args.tissue_only, tile_size=args.tile_size,
                        scheduler=args.scheduler, workers=args.workers, batch_size=args.batch_size,
                        random_weights=args.random_weights, progress=not args.quiet)
    print(summary.text())
    for error in summary.errors[:20]:
        print(f"  {error}", file=sys.stderr)
    if len(summary.errors) > 20:
        print(f"  ... and {len(summary.errors) - 20} more", file=sys.stderr)
    return 130 if summary.interrupted else 0 if summary.ok else 1


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .annotations.readers import read_polygons
    from .evaluation.prepare import prepare_patches
    from .slides.reader import open_image

    polygons = read_polygons(args.annotations, args.classes)
    source = open_image(args.slide)
    bar = tqdm(total=None, unit="row", desc="prepare", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = prepare_patches(source, polygons, args.out, args.magnification, args.patch_size,
                                 args.min_fraction, args.max_fraction, args.base_magnification, progress)
    finally:
        bar.close()
        source.close()
    print(f"prepare: {result.kept} patches kept of {result.candidates} touching the annotation "
          f"(tumor fraction {args.min_fraction}-{args.max_fraction}) -> {result.out_dir}/manifest.csv")
    return 0


def _cmd_slide_memory(args: argparse.Namespace) -> int:
    from ._napari.memory_benchmark import format_report, run_slide_memory

    report = run_slide_memory(size=args.size, tile=args.tile, out_dir=args.out, keep=args.keep)
    print(format_report(report))
    return 0


def _cmd_slide_benchmark(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .evaluation.slide_benchmark import (
        DEFAULT_MODES,
        MODES,
        format_small_table,
        format_table,
        run_benchmark,
        run_small_objects,
    )

    if args.small_objects and args.modes is not None:
        raise InputError("--modes does not apply to --small-objects (its objects are clicked at auto, growth off "
                         "and on).")
    if args.per_slide < 1:
        raise InputError(f"--per-slide {args.per_slide}: compose at least one region per slide.")
    modes = [m.strip() for m in (args.modes or ",".join(DEFAULT_MODES)).split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise InputError(f"--modes {args.modes!r}: choose from {', '.join(MODES)} (comma-separated).")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.small_objects:
        summary = run_small_objects(args.regions, args.out, model=args.model, decoder=args.decoder,
                                    device=args.device, per_slide=args.per_slide, max_clicks=args.max_clicks,
                                    tile_size=args.tile_size, limit=args.limit, stride=args.stride,
                                    upscale=args.upscale, log=lambda line: print(line, flush=True),
                                    honour_clicks=not args.no_fallback)
        print(format_small_table(summary["settings"]))
        print(f"-> {args.out}/summary.json, objects.csv, table.md")
        return 0
    summary = run_benchmark(args.regions, args.out, model=args.model, decoder=args.decoder, device=args.device,
                            modes=modes, max_clicks=args.max_clicks, tile_size=args.tile_size, limit=args.limit,
                            stride=args.stride, upscale=args.upscale, log=lambda line: print(line, flush=True),
                            honour_clicks=not args.no_fallback)
    print(format_table(summary["modes"]))
    print(f"-> {args.out}/summary.json, runs.csv, table.md")
    return 0


def _cmd_sequential_benchmark(args: argparse.Namespace) -> int:
    from .models.slide_refiner import MIN_AGREEMENT
    from .training.sequential_benchmark import format_table, run_benchmark

    if args.prior_weight is not None and not (0 <= args.prior_weight < float("inf")):
        print(f"--prior-weight {args.prior_weight} must be a finite number >= 0 (0: no slide prior).", file=sys.stderr)
        return 2
    if args.steps_per_object is not None and args.steps_per_object < 0:
        print(f"--steps-per-object {args.steps_per_object} must be >= 0.", file=sys.stderr)
        return 2
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        print(f"--min-agreement {args.min_agreement} must lie in [0, 1] (0: no agreement rule).", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = run_benchmark(args.dataset, args.out, model=args.model, decoder=args.decoder, device=args.device,
                            group_by=None if args.group_by == "none" else args.group_by,
                            components=args.components, stride=args.stride, max_objects=args.max_objects,
                            max_groups=args.max_groups, max_clicks=args.max_clicks,
                            steps_per_object=args.steps_per_object, lr=args.lr, seed=args.seed,
                            prior_weight=args.prior_weight, gated=not args.no_gate,
                            refiner=not args.no_refiner, accepted=args.accepted, embedding_store=args.embedding_store,
                            min_agreement=MIN_AGREEMENT if args.min_agreement is None else args.min_agreement,
                            log=None if args.quiet else (lambda line: print(line, flush=True)))
    print(format_table(summary["source"], summary["base"], summary["adapted"]))
    print(f"-> {args.out}/summary.json, objects.csv, table.md, noc-by-object.png")
    return 0


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    from .training.learning_curve import format_table, join_reports, run_learning_curve
    from .training.tissue_training import TissueRecipe

    if args.join:
        summary = join_reports(args.join, args.out)
        print(format_table(summary["rows"]))
        print(f"-> {args.out}/table.md, summary.json, objects.csv, noc85-vs-k.png")
        return 0
    if args.dataset is None:
        print("learning-curve needs a DATASET (or --join REPORT ...).", file=sys.stderr)
        return 2

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recipe = TissueRecipe(steps=args.steps, dagger_rounds=args.dagger_rounds, dagger_steps=args.dagger_steps,
                          lr=args.lr, batch_size=args.batch_size, seed=args.recipe_seed,
                          corrected_clicks=None if args.corrected_clicks < 0 else args.corrected_clicks)
    summary = run_learning_curve(args.dataset, args.out, group_by=None if args.group_by == "none" else args.group_by,
                                 shots=args.shots, seeds=args.seeds, components=args.components,
                                 min_object_px=args.min_object_px, max_clicks=args.max_clicks,
                                 test_objects=args.test_objects, test_fraction=args.test_fraction,
                                 embedding_store=args.embedding_store, model=args.model, device=args.device,
                                 precision=args.precision, recipe=recipe, save_decoders=args.save_decoders,
                                 stride=args.stride, first_seed=args.first_seed,
                                 log=None if args.quiet else (lambda line: print(line, flush=True)))

    print(format_table(summary["rows"]))
    for line in summary["skipped"]:
        print(line)
    print(f"-> {args.out}/table.md, summary.json, objects.csv, noc85-vs-k.png")
    return 0


def _cmd_gui_stalls(args: argparse.Namespace) -> int:
    import os

    from .errors import InputError

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("gui-stalls opens a real napari window and needs a display; on a server run it "
                         "under Xvfb: xvfb-run -a -s '-screen 0 1920x1080x24' napari-sam-histo gui-stalls")
    from ._napari.stall_benchmark import format_table, run

    results = run(slide=args.slide, model=args.model, device=args.device, repeat=args.mosaic, explain=args.explain,
                  level=args.level, adapt=args.adapt or args.refiner_offered, refiner_offered=args.refiner_offered)
    print(format_table(results))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .training.synthetic import run_from_args

    return run_from_args(args)


def _cmd_train_from_project(args: argparse.Namespace) -> int:
    from .engine.embedding_cache import EmbeddingCache
    from .engine.predictor import Predictor
    from .errors import InputError
    from .models.registry import load_model
    from .training.project_training import train_from_project
    from .training.tissue_training import TissueRecipe

    if args.dataset:
        raise InputError("train --from-project trains on the project's objects: give no dataset folders with it.")
    out = Path(args.out)
    if out.suffix != ".pt":
        raise InputError(f"train --from-project writes one decoder file: --out {args.out} must end in .pt.")
    predictor = Predictor(load_model(args.model, args.device), "sam", cache=EmbeddingCache(max_bytes=1 << 28))
    result = train_from_project(args.from_project, out, predictor, TissueRecipe(seed=args.seed),
                                held_out_fraction=args.held_out_fraction, name=args.name,
                                log=None if args.quiet else print)
    print(f"{result.path}: {result.verdict} (NoC@85 on {result.held_out['objects']} held-out objects: "
          f"SAM {result.held_out['sam_noc']:.2f}, this decoder {result.held_out['decoder_noc']:.2f})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train

    if args.from_project is not None:
        return _cmd_train_from_project(args)
    if not args.dataset:
        from .errors import InputError

        raise InputError("train: give dataset folder(s), or --from-project PROJECT.")
    config = TrainConfig(
        datasets=args.dataset, out_dir=args.out, scenario=args.scenario, model=args.model,
        extra_train=args.extra_train or [], components=args.components or [], val=args.val or [],
        val_fraction=args.val_fraction, hold_out=args.hold_out, stride=args.stride,
        min_object_px=args.min_object_px, embedding_store=args.embedding_store,
        validate_start=args.validate_start,
        group_by=args.group_by or None, epochs=args.epochs, lr=args.lr, lr_milestones=tuple(args.lr_milestones),
        lr_gamma=args.lr_gamma, batch_size=args.batch_size, max_extra_clicks=args.max_extra_clicks,
        mask_prompt_prob=args.mask_prompt_prob, nfl_alpha=args.nfl_alpha, nfl_gamma=args.nfl_gamma,
        val_iou=args.val_iou, val_max_clicks=args.val_max_clicks, val_limit=args.val_limit, limit=args.limit,
        seed=args.seed, device=args.device, amp=args.amp, allow_cpu=args.allow_cpu, resume=args.resume,
    )
    try:
        result = train(config, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the last finished epoch is saved in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"best: {json.dumps(result.best)}")
    print(f"weights: {result.best_path} (history.json, training-state.pt, train/val manifests in {result.out_dir})")
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .training.project_store import ProjectStore

    store = ProjectStore(args.project)
    if args.action == "import":
        from .engine.embedding_cache import EmbeddingCache
        from .engine.predictor import Predictor
        from .models.registry import load_model
        from .training.project_import import import_annotations

        predictor = Predictor(load_model(args.model, args.device), "sam", cache=EmbeddingCache(max_bytes=1 << 28))
        for annotations in args.annotations:
            print(import_annotations(store, args.slide, annotations, predictor, args.tile_size, args.classes).text())
    elif args.action == "remove":
        if (args.slide is None) == (args.object is None):
            raise InputError("project remove: give --slide NAME or --object ID (one of them).")
        gone = store.remove_slide(args.slide) if args.slide is not None else store.remove_object(args.object)
        if not gone:
            raise InputError(f"{args.project}: no object of {args.slide!r} in the project." if args.slide is not None
                             else f"{args.project}: no object with id {args.object!r} in the project.")
        print(f"{gone} object(s) removed from {args.project}.")
    print(store.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam-histo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    weights = sub.add_parser("weights", help="list models, show where weights are, fetch weights")
    wsub = weights.add_subparsers(dest="action", required=True)
    wsub.add_parser("list", help="every known model, and whether its weights are on disk")
    for action, text in (("fetch", "download (or extract) and verify a model's weights"),
                         ("path", "print the verified local path of a model's weights")):
        p = wsub.add_parser(action, help=text)
        p.add_argument("name", nargs="?", default="vit_t")
    weights.set_defaults(func=_cmd_weights)

    demo = sub.add_parser("demo", help="open the CC0 H&E sample in napari, or (--headless) click on it")
    demo.add_argument("--headless", action="store_true", help="no window: scripted clicks, mask PNG, summary")
    demo.add_argument("--out", default="out/demo", help="folder for the headless demo's files")
    demo.add_argument("--model", default="vit_t")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("benchmark", help="automatic click evaluation (NoC/NoF/SPC) on a dataset")
    bench.add_argument("dataset", help="folder with images/ and masks/, a flat folder (--mask-suffix), or a CSV manifest")
    bench.add_argument("--model", action="append", help="model name or checkpoint (repeatable; default vit_t)")
    bench.add_argument("--decoder", action="append", help="sam, md, modified or a decoder checkpoint path (repeatable)")
    bench.add_argument("--iou", type=float, nargs="+", default=[0.80, 0.85, 0.90], help="target IoUs")
    bench.add_argument("--max-clicks", type=int, default=20)
    bench.add_argument("--full-curve", action="store_true", help="always click --max-clicks times")
    bench.add_argument("--ritm-nof", action="store_true", help="count NoF as RITM's code does (NoC == max clicks)")
    bench.add_argument("--instances", action="store_true", help="masks are label images: one sample per label")
    bench.add_argument("--components", action="store_true",
                       help="binary masks: each connected region is one sample (e.g. one gland)")
    bench.add_argument("--ignore-value", type=int, default=None, help="mask value to ignore in clicks and IoU")
    bench.add_argument("--mask-suffix", default=None, help="flat folder: the mask of X.png is X<suffix>.png")
    bench.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    bench.add_argument("--first-mask", default="iou",
                       help="how the first click's mask is chosen among SAM's three: iou (SAM's highest predicted "
                            "IoU), unflooded (the same among masks under 90%% of the tile), single (SAM's single "
                            "output); comma-separated to compare")
    bench.add_argument("--mask-prompt", choices=("on", "off", "both"), default="on",
                       help="feed the previous logits back as SAM's mask prompt (on), points only (off), or both")
    bench.add_argument("--stride", type=int, default=1, help="only every K-th image (sorted by name)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="the decoder's: auto is bf16 where it is native (Ampere+ GPUs, CPUs with "
                            "AVX512-BF16/AMX), fp32 elsewhere; the report records what ran")
    bench.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                       help="run the images on dask.distributed: 'local' starts a LocalCluster (one 1-thread "
                            "process per core, or one GPU worker); an address (tcp://host:8786) uses a running "
                            "scheduler, whose workers must see the dataset at the same path")
    bench.add_argument("--workers", type=int, default=None,
                       help="processes of the local cluster (default: one per core; one when there is a GPU); "
                            "with --scheduler local")
    bench.add_argument("--embedding-store", default=None, metavar="DIR",
                       help="keep the image embeddings in DIR, so later runs on the same images (same model "
                            "and device) encode nothing again; SPCe2e still charges the recorded encoder time")
    bench.add_argument("--embedding-store-dtype", choices=("float32", "float16"), default="float32",
                       help="float16 halves the store, at slightly different masks (default float32: exact)")
    bench.add_argument("--out", required=True, help="report folder")
    existing = bench.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the report in --out: samples already in its samples.csv are not run again")
    existing.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_cmd_benchmark)

    emb = sub.add_parser("embed", help="precompute the embeddings of slides (files or folders) on a dask cluster, "
                                       "into the store the annotator reads")
    emb.add_argument("slides", nargs="+", metavar="SLIDE_OR_FOLDER", help="slide files, or folders searched for them")
    emb.add_argument("--model", default="vit_t", help="model name or checkpoint (the annotator's)")
    where = emb.add_mutually_exclusive_group()
    where.add_argument("--level", default="auto",
                       help="auto (every working level the annotator's auto level can pick; default) or a pyramid level")
    where.add_argument("--magnification", type=float, default=None,
                       help="the working level nearest this magnification (the slide must state its pixel size)")
    emb.add_argument("--tissue-only", action="store_true",
                     help="skip tiles of glass (Otsu on the saturation of an overview; <5%% tissue is skipped)")
    emb.add_argument("--out", default=None, metavar="STORE",
                     help="store root (default: $NAPARI_SAM_HISTO_EMBEDDINGS, else the cache's embeddings folder, "
                          "which the annotator dock reads)")
    emb.add_argument("--scheduler", default="local",
                     help="local (a LocalCluster on this machine) or a running scheduler's address, tcp://host:8786")
    emb.add_argument("--workers", type=int, default=None,
                     help="LocalCluster processes (default: one per core; one when there is a GPU)")
    emb.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda tasks ask for the worker resource GPU=1)")
    emb.add_argument("--tile-size", type=int, default=1024, help="the annotator's tile size (default 1024)")
    emb.add_argument("--batch-size", type=int, default=None, help="tiles per task (default 4 on CPU, 16 on GPU)")
    emb.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)  # tests and timing only
    emb.add_argument("--quiet", action="store_true", help="no progress bar")
    emb.set_defaults(func=_cmd_embed)

    prep = sub.add_parser("prepare", help="cut benchmark patches from a WSI and its tumor annotation")
    prep.add_argument("slide", help="the WSI (.svs, .ndpi, .mrxs, .tif, ...)")
    prep.add_argument("--annotations", required=True, help="GeoJSON (QuPath, level-0 pixels) or ASAP XML")
    prep.add_argument("--classes", nargs="+", default=None, help="keep only these classes/groups (default: all)")
    prep.add_argument("--magnification", type=float, required=True, help="working magnification, e.g. 5 or 10")
    prep.add_argument("--base-magnification", type=float, default=None,
                      help="the scan's magnification when the slide does not state it")
    prep.add_argument("--patch-size", type=int, default=400)
    prep.add_argument("--min-fraction", type=float, default=0.2)
    prep.add_argument("--max-fraction", type=float, default=0.8)
    prep.add_argument("--out", required=True, help="dataset folder (images/, masks/, manifest.csv)")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=_cmd_prepare)

    perf = sub.add_parser("perf", help="encoder and per-click timings for a model on a device")
    perf.add_argument("--model", default="vit_t")
    perf.add_argument("--device", default="auto")
    perf.add_argument("--clicks", type=int, default=24, help="clicks timed per decoder (at least 20)")
    perf.add_argument("--encoder-runs", type=int, default=3)
    perf.add_argument("--random-weights", action="store_true", help="random-init weights of the model's architecture")
    perf.add_argument("--json", action="store_true", help="print one JSON object")
    perf.set_defaults(func=_cmd_perf)

    mem = sub.add_parser("slide-memory", help="peak memory of opening a synthetic 100k² pyramidal OME-TIFF lazily")
    mem.add_argument("--size", type=int, default=100_000, help="side of the synthetic slide in pixels")
    mem.add_argument("--tile", type=int, default=512, help="TIFF tile side (a multiple of 16)")
    mem.add_argument("--out", default=None, help="folder for the synthetic slide (default: a temporary folder)")
    mem.add_argument("--keep", action="store_true", help="keep the synthetic slide afterwards")
    mem.set_defaults(func=_cmd_slide_memory)
    sb = sub.add_parser("slide-benchmark", help="whole regions at slide scale through the Annotator: level 0 vs "
                                                "auto level vs auto + refinement (NoC, mIoU per click, seams)")
    sb.add_argument("regions", help="a region dataset (images/ + masks/, or a manifest), e.g. bcss-breast-40x")
    sb.add_argument("--out", required=True, help="report folder (pyramids under slides/)")
    sb.add_argument("--modes", default=None,
                    help="comma-separated: level0, auto, refine, level0+grow (default: level0,auto,refine)")
    sb.add_argument("--small-objects", action="store_true",
                    help="small objects next to each other: regions composed side by side into slides, each "
                         "connected component of a mask clicked on its own at auto, growth off and on (NoC, "
                         "mIoU, spills into neighbours)")
    sb.add_argument("--per-slide", type=int, default=9, help="with --small-objects: regions per composed slide")
    sb.add_argument("--max-clicks", type=int, default=50)
    sb.add_argument("--upscale", type=float, default=1.0,
                    help="enlarge each region this many times (a composed region spanning many tiles)")
    sb.add_argument("--stride", type=int, default=1, help="every N-th region")
    sb.add_argument("--limit", type=int, default=None)
    sb.add_argument("--tile-size", type=int, default=1024)
    sb.add_argument("--model", default="vit_t")
    sb.add_argument("--decoder", default="sam")
    sb.add_argument("--device", default="cpu")
    sb.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sb.add_argument("--no-fallback", action="store_true",
                    help="show SAM's usual decode even where it loses the object (to measure without the fallback)")
    sb.set_defaults(func=_cmd_slide_benchmark)
    seq = sub.add_parser("sequential-benchmark", help="one case's objects clicked in order, with the decoder "
                                                      "adapting to the accepted ones and without (NoC after the fifth)")
    seq.add_argument("dataset", help="image/mask pairs with a manifest column that groups them by slide or case")
    seq.add_argument("--out", required=True, help="report folder")
    seq.add_argument("--group-by", default="case_id", help="manifest column of the slide/case ('none': one group)")
    seq.add_argument("--components", action="store_true", help="each connected region of a mask is an object")
    seq.add_argument("--stride", type=int, default=1, help="every N-th group")
    seq.add_argument("--max-groups", type=int, default=None)
    seq.add_argument("--max-objects", type=int, default=None, help="the first N objects of each group")
    seq.add_argument("--max-clicks", type=int, default=20)
    seq.add_argument("--steps-per-object", type=int, default=None,
                     help="adaptation steps per accepted object (default 16; 0: the slide prior alone)")
    seq.add_argument("--prior-weight", type=float, default=None,
                     help="weight of the slide prior added to the decoder's logits (default 0.25; 0: none)")
    seq.add_argument("--no-gate", action="store_true",
                     help="diagnostic: click with the adapted copy and the slide refiner whatever the "
                          "never-worse gates say")
    seq.add_argument("--no-refiner", action="store_true", help="adapt without the slide refiner")
    seq.add_argument("--min-agreement", type=float, default=None,
                     help="a diagnostic: the IoU with SAM's mask below which a refined mask gives way to SAM's "
                          "(default 0.5, the product's; 0: no such rule)")
    seq.add_argument("--accepted", choices=("clicked", "reference"), default="clicked",
                     help="an object is accepted as its last mask once the clicks reach 0.85 IoU, else "
                          "finished by hand to the reference (clicked), or always finished to the reference")
    seq.add_argument("--lr", type=float, default=None,
                     help="adaptation learning rate (default: 1e-3 for a correction, 1e-4 for a whole decoder)")
    seq.add_argument("--embedding-store", default=None,
                     help="folder that keeps every image's embedding (float16) so later runs skip the encoder")
    seq.add_argument("--seed", type=int, default=0)
    seq.add_argument("--model", default="vit_t")
    seq.add_argument("--decoder", default="sam")
    seq.add_argument("--device", default="cpu")
    seq.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    seq.add_argument("--quiet", action="store_true")
    seq.set_defaults(func=_cmd_sequential_benchmark)
    lc = sub.add_parser("learning-curve", help="train project decoders on k objects of some cases, click other "
                                               "cases: NoC against k, next to zero-shot SAM")
    lc.add_argument("dataset", nargs="?", default=None,
                    help="image/mask pairs (folder or manifest) whose manifest column tells cases apart")
    lc.add_argument("--out", required=True, help="report folder")
    lc.add_argument("--group-by", default="case_id",
                    help="manifest column of the slide/case ('none': every image is its own group)")
    lc.add_argument("--shots", type=int, nargs="+", default=[10, 25, 50, 100], help="training objects per decoder")
    lc.add_argument("--seeds", type=int, default=2, help="seeded splits of the groups into training and test")
    lc.add_argument("--first-seed", type=int, default=0, help="the seeds run are FIRST .. FIRST + SEEDS - 1")
    lc.add_argument("--join", nargs="+", default=None, metavar="REPORT",
                    help="instead of running: join the reports of runs on other seeds (same settings) into --out")
    lc.add_argument("--components", action="store_true", help="each connected region of a mask is an object")
    lc.add_argument("--min-object-px", type=int, default=0, help="with --components: smallest region kept")
    lc.add_argument("--stride", type=int, default=1, help="every N-th image pair")
    lc.add_argument("--max-clicks", type=int, default=20)
    lc.add_argument("--test-objects", type=int, default=None, help="at most N test objects per seed (a seeded draw)")
    lc.add_argument("--test-fraction", type=float, default=0.3, help="share of the objects whose groups are tested")
    lc.add_argument("--embedding-store", default=None,
                    help="folder that keeps every image's embedding (float16) so reruns cost only training")
    lc.add_argument("--steps", type=int, default=800, help="the tissue head's training steps")
    lc.add_argument("--dagger-rounds", type=int, default=0,
                    help="rounds of re-clicking the training objects with the head, then training on")
    lc.add_argument("--dagger-steps", type=int, default=500, help="training steps after each DAgger round")
    lc.add_argument("--lr", type=float, default=1e-3)
    lc.add_argument("--corrected-clicks", type=int, default=1,
                    help="the head corrects an object's masks up to this many clicks; SAM alone answers later "
                         "clicks (-1: every click)")
    lc.add_argument("--batch-size", type=int, default=8)
    lc.add_argument("--recipe-seed", type=int, default=0, help="seed of the head's initialisation and batches")
    lc.add_argument("--save-decoders", action="store_true", help="write each trained decoder into --out")
    lc.add_argument("--model", default="vit_t")
    lc.add_argument("--device", default="cpu")
    lc.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the decoder's precision")
    lc.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    lc.add_argument("--quiet", action="store_true")
    lc.set_defaults(func=_cmd_learning_curve)
    project = sub.add_parser("project", help="a project's training set: the objects accepted or imported on its "
                                             "slides (list, import annotations, remove)")
    psub = project.add_subparsers(dest="action", required=True)
    listing = psub.add_parser("list", help="objects per slide and class")
    listing.add_argument("project", help="the project folder (e.g. the slides' folder)")
    imp = psub.add_parser("import", help="a slide's QuPath GeoJSON or label image (our export) as training objects")
    imp.add_argument("project", help="the project folder")
    imp.add_argument("slide", help="the slide the annotations were made on")
    imp.add_argument("annotations", nargs="+", help="GeoJSON (ours or QuPath's) or label TIFF (ours) of that slide")
    imp.add_argument("--classes", nargs="+", default=None, help="import only these classes")
    imp.add_argument("--model", default="vit_t", help="the annotator's model (its embeddings are stored)")
    imp.add_argument("--device", default="auto")
    imp.add_argument("--tile-size", type=int, default=1024, help="the annotator's tile size (default 1024)")
    rm = psub.add_parser("remove", help="remove one object (--object ID) or every object of a slide (--slide NAME)")
    rm.add_argument("project", help="the project folder")
    rm.add_argument("--slide", default=None, help="a slide's name (or identity)")
    rm.add_argument("--object", default=None, help="an object's id (as in the GeoJSON export)")
    project.set_defaults(func=_cmd_project)
    stalls = sub.add_parser("gui-stalls", help="longest napari GUI-thread stall per Annotator action (scripted, real viewer)")
    stalls.add_argument("--slide", default=None, help="slide to annotate (default: the CC0 sample)")
    stalls.add_argument("--mosaic", type=int, default=1,
                        help="without --slide: the sample repeated N x N times as a pyramidal TIFF (a larger slide)")
    stalls.add_argument("--model", default="vit_t")
    stalls.add_argument("--device", default="cpu")
    stalls.add_argument("--level", default="auto", help="the dock's working level: auto (default) or a pyramid level")
    stalls.add_argument("--adapt", action="store_true",
                        help="'Learn from this slide' on: the second object is clicked while adaptation runs")
    stalls.add_argument("--refiner-offered", action="store_true",
                        help="with --adapt: the border refiner learnt from the first object refines the second "
                             "(as if its gate had passed): its first click includes making the tile's maps")
    stalls.add_argument("--explain", action="store_true",
                        help="also say where each longest stall went (the GUI thread's stack, sampled every 5 ms)")
    stalls.set_defaults(func=_cmd_gui_stalls)
    from .training.synthetic import add_arguments as add_synth_arguments

    synth = sub.add_parser("synth", help="write synthetic training pairs (texture composites, random crops)")
    add_synth_arguments(synth)
    synth.set_defaults(func=_cmd_synth)
    tr = sub.add_parser("train", help="fine-tune a decoder (or SAM) with simulated clicks (Kim et al. scenarios)")
    tr.add_argument("dataset", nargs="*", help="dataset folder(s) or manifest(s), split into train/val by --group-by")
    tr.add_argument("--out", required=True, help="run folder: best weights, resumable state, history, manifests "
                                                 "(with --from-project: the decoder file, NAME.pt)")
    tr.add_argument("--from-project", metavar="PROJECT", default=None,
                    help="train a decoder for your tissue on a project's accepted and imported objects, judged on "
                         "the slides accepted last (held out) against zero-shot SAM")
    tr.add_argument("--name", default=None, help="with --from-project: the decoder's name (default: the file's)")
    tr.add_argument("--held-out-fraction", type=float, default=0.25,
                    help="with --from-project: at least this share of the objects is held out, by whole slides")
    tr.add_argument("--scenario", choices=("md", "ie_md", "whole", "modified", "residual"), default="modified",
                    help="md: SAM's decoder; ie_md: image encoder + decoder; whole: all; modified: Kim et al.'s "
                         "decoder; residual: SAM's decoder frozen + a trained correction (untrained = SAM)")
    tr.add_argument("--model", default="vit_t", help="base model name or checkpoint")
    tr.add_argument("--extra-train", action="append", help="dataset used for training only (repeatable)")
    tr.add_argument("--components", action="append",
                    help="dataset for training only whose connected regions are separate objects (repeatable)")
    tr.add_argument("--min-object-px", type=int, default=64, help="smallest region of a --components dataset")
    tr.add_argument("--stride", type=int, default=1,
                    help="every N-th pair of each dataset, before the --val-fraction/--hold-out splits")
    tr.add_argument("--val", action="append",
                    help="validation dataset (repeatable), e.g. sources left out of training; default: split the datasets")
    tr.add_argument("--hold-out", type=float, default=0.0,
                    help="fraction of the datasets' groups kept out of training and validation (holdout_manifest.csv)")
    tr.add_argument("--validate-start", action="store_true",
                    help="validate the starting weights as epoch 0, a candidate like any epoch")
    tr.add_argument("--embedding-store", default=None,
                    help="folder of float16 embeddings reused across runs (computed once per image)")
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--group-by", default="case_id",
                    help="manifest.csv column keeping one slide's patches on one side of the split ('' for none)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--lr-milestones", type=int, nargs="*", default=[20, 25])
    tr.add_argument("--lr-gamma", type=float, default=0.1)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--max-extra-clicks", type=int, default=3, help="simulated clicks after the first: 0..N")
    tr.add_argument("--mask-prompt-prob", type=float, default=0.8, help="chance of feeding the previous mask")
    tr.add_argument("--nfl-alpha", type=float, default=0.5)
    tr.add_argument("--nfl-gamma", type=float, default=2.0)
    tr.add_argument("--val-iou", type=float, default=0.85, help="validation target IoU (NoC@85)")
    tr.add_argument("--val-max-clicks", type=int, default=20)
    tr.add_argument("--val-limit", type=int, default=None, help="validate on the first N patches each epoch")
    tr.add_argument("--limit", type=int, default=None, help="only the first N pairs of each dataset")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--amp", choices=("auto", "off"), default="auto", help="bf16 autocast on CUDA")
    tr.add_argument("--allow-cpu", action="store_true", help="let ie_md/whole run without a GPU (slow)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party_warnings()
    from .errors import SamHistoError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SamHistoError as err:
        print(f"napari-sam-histo: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `napari-sam-histo weights list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("napari-sam-histo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

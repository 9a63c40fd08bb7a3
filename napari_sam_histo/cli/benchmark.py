"""``napari-sam-histo prepare`` and ``benchmark``: cut benchmark patches from a slide, then the
automatic click evaluation (NoC/NoF/SPC) of models and decoders on a dataset."""

from __future__ import annotations

import argparse
import sys

from .options import add_precision_argument


def _first_masks(text: str) -> list[str]:
    from ..engine.session import FIRST_MASK_RULES
    from ..errors import InputError

    rules = [r.strip() for r in text.split(",") if r.strip()]
    if not rules or any(r not in FIRST_MASK_RULES for r in rules):
        raise InputError(f"--first-mask {text!r}: choose from {', '.join(FIRST_MASK_RULES)} (comma-separated).")
    return rules


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluation.benchmark import run_benchmark
    from ..evaluation.benchmark_config import BenchmarkConfig
    from ..evaluation.report import format_skipped, format_table

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

    from ..evaluation.distributed_benchmark import BenchmarkWorkerError

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


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..annotations.readers import read_polygons
    from ..evaluation.prepare import prepare_patches
    from ..slides.reader import open_image

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


def add_benchmark(sub: argparse._SubParsersAction) -> None:
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
    add_precision_argument(bench, "the decoder's: auto is bf16 where it is native (Ampere+ GPUs, CPUs with "
                                  "AVX512-BF16/AMX), fp32 elsewhere, and int8 for the convolutions of a decoder "
                                  "shipped with int8 calibration on a CPU; the report records what ran")
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


def add_prepare(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prepare", help="cut benchmark patches from a WSI and its tumor annotation")
    prep.add_argument("slide", help="the WSI (.svs, .ndpi, .mrxs, .tif, ...)")
    prep.add_argument("--annotations", required=True,
                      help="GeoJSON (QuPath, level-0 pixels), ASAP XML, or a binary mask image of the slide's size")
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

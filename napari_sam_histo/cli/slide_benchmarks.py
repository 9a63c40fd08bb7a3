"""``napari-sam-histo slide-benchmark`` (whole regions at slide scale through the Annotator) and
``sequential-benchmark`` (one case's objects in order, with the decoder adapting and without)."""

from __future__ import annotations

import argparse
import sys

from .options import add_model_options
from .threads import use_threads


def _cmd_slide_benchmark(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..evaluation.slide_benchmark import DEFAULT_MODES, MODES, format_table, run_benchmark
    from ..evaluation.slide_small_objects import format_small_table, run_small_objects

    if args.small_objects and args.modes is not None:
        raise InputError("--modes does not apply to --small-objects (its objects are clicked at auto, growth off "
                         "and on).")
    if args.per_slide < 1:
        raise InputError(f"--per-slide {args.per_slide}: compose at least one region per slide.")
    modes = [m.strip() for m in (args.modes or ",".join(DEFAULT_MODES)).split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise InputError(f"--modes {args.modes!r}: choose from {', '.join(MODES)} (comma-separated).")
    use_threads(args.threads)
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
    from ..adaptation.sequential_benchmark import format_table, run_benchmark
    from ..models.slide_refiner import MIN_AGREEMENT

    if args.prior_weight is not None and not (0 <= args.prior_weight < float("inf")):
        print(f"--prior-weight {args.prior_weight} must be a finite number >= 0 (0: no slide prior).", file=sys.stderr)
        return 2
    if args.steps_per_object is not None and args.steps_per_object < 0:
        print(f"--steps-per-object {args.steps_per_object} must be >= 0.", file=sys.stderr)
        return 2
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        print(f"--min-agreement {args.min_agreement} must lie in [0, 1] (0: no agreement rule).", file=sys.stderr)
        return 2
    use_threads(args.threads)
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


def add_slide_benchmark(sub: argparse._SubParsersAction) -> None:
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
    add_model_options(sb, decoder=True)
    sb.add_argument("--no-fallback", action="store_true",
                    help="show SAM's usual decode even where it loses the object (to measure without the fallback)")
    sb.set_defaults(func=_cmd_slide_benchmark)


def add_sequential_benchmark(sub: argparse._SubParsersAction) -> None:
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
    add_model_options(seq, decoder=True)
    seq.add_argument("--quiet", action="store_true")
    seq.set_defaults(func=_cmd_sequential_benchmark)

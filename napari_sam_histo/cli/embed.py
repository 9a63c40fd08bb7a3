"""``napari-sam-histo embed``: the embeddings of slides computed ahead, on a dask cluster, into the
store the annotator reads."""

from __future__ import annotations

import argparse
import sys


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..cohort.embed import run_embed
    from ..errors import InputError

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


def add_embed(sub: argparse._SubParsersAction) -> None:
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

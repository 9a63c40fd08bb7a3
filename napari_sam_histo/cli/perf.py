"""The app's own measurements: ``perf`` (encoder and per-click timings), ``slide-memory`` (opening a
huge slide lazily) and ``gui-stalls`` (the napari GUI thread's longest stall per Annotator action)."""

from __future__ import annotations

import argparse
import json

from .options import add_precision_argument


def _cmd_perf(args: argparse.Namespace) -> int:
    from ..perf import format_report, run_perf

    report = run_perf(model=args.model, device=args.device, clicks=args.clicks,
                      random_weights=args.random_weights, encoder_runs=args.encoder_runs, precision=args.precision,
                      pause_s=args.pause)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _cmd_slide_memory(args: argparse.Namespace) -> int:
    from .._napari.memory_benchmark import format_report, run_slide_memory

    report = run_slide_memory(size=args.size, tile=args.tile, out_dir=args.out, keep=args.keep)
    print(format_report(report))
    return 0


def _cmd_gui_stalls(args: argparse.Namespace) -> int:
    import os

    from ..errors import InputError

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("gui-stalls opens a real napari window and needs a display; on a server run it "
                         "under Xvfb: xvfb-run -a -s '-screen 0 1920x1080x24' napari-sam-histo gui-stalls")
    from .._napari.stall_benchmark import format_table, run

    results = run(slide=args.slide, model=args.model, device=args.device, repeat=args.mosaic, explain=args.explain,
                  level=args.level, adapt=args.adapt or args.refiner_offered, refiner_offered=args.refiner_offered)
    print(format_table(results))
    return 0


def add_perf(sub: argparse._SubParsersAction) -> None:
    perf = sub.add_parser("perf", help="encoder and per-click timings for a model on a device")
    perf.add_argument("--model", default="vit_t")
    perf.add_argument("--device", default="auto")
    perf.add_argument("--clicks", type=int, default=24, help="clicks timed per decoder (at least 20)")
    perf.add_argument("--encoder-runs", type=int, default=3)
    perf.add_argument("--pause", type=float, default=None, metavar="SECONDS",
                      help="time each call this long after the one before, as a user's clicks are (default 0.1)")
    add_precision_argument(perf, "the decoders' (auto: the product's default; bf16 runs the CPU runtime's bfloat16 "
                                 "networks, int8 those with a calibrated decoder's convolutions in int8)")
    perf.add_argument("--random-weights", action="store_true", help="random-init weights of the model's architecture")
    perf.add_argument("--json", action="store_true", help="print one JSON object")
    perf.set_defaults(func=_cmd_perf)


def add_slide_memory(sub: argparse._SubParsersAction) -> None:
    mem = sub.add_parser("slide-memory", help="peak memory of opening a synthetic 100k² pyramidal OME-TIFF lazily")
    mem.add_argument("--size", type=int, default=100_000, help="side of the synthetic slide in pixels")
    mem.add_argument("--tile", type=int, default=512, help="TIFF tile side (a multiple of 16)")
    mem.add_argument("--out", default=None, help="folder for the synthetic slide (default: a temporary folder)")
    mem.add_argument("--keep", action="store_true", help="keep the synthetic slide afterwards")
    mem.set_defaults(func=_cmd_slide_memory)


def add_gui_stalls(sub: argparse._SubParsersAction) -> None:
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

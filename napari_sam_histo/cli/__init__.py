"""The ``napari-sam-histo`` command: demo, weights, perf, prepare, benchmark, train, slide-memory, embed,
slide-benchmark, sequential-benchmark, learning-curve, project, gui-stalls.

Thin: parse arguments, call the core, print. A ``SamHistoError`` (bad file, bad value, missing
weights) is printed as one line and exits with status 2, never as a traceback. Each module of this
package holds one job or group of jobs (its subcommands' arguments and what they run); this one
assembles the parser and runs the chosen subcommand.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import benchmark, demo, embed, perf, project, slide_benchmarks, training, weights


def _quiet_third_party_warnings() -> None:
    # timm/mobile_sam print deprecation and registry warnings at import; they are not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
    warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam-histo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (weights.add_weights, demo.add_demo, benchmark.add_benchmark, embed.add_embed, benchmark.add_prepare,
                perf.add_perf, perf.add_slide_memory, slide_benchmarks.add_slide_benchmark,
                slide_benchmarks.add_sequential_benchmark, training.add_learning_curve, project.add_project,
                perf.add_gui_stalls, training.add_synth, training.add_train):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party_warnings()
    from ..errors import SamHistoError

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

"""``napari-sam-histo demo``: the CC0 sample in napari, or scripted clicks on it without a window."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(headless=args.headless, out_dir=args.out, model=args.model, device=args.device)


def add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="open the CC0 H&E sample in napari, or (--headless) click on it")
    demo.add_argument("--headless", action="store_true", help="no window: scripted clicks, mask PNG, summary")
    demo.add_argument("--out", default="out/demo", help="folder for the headless demo's files")
    demo.add_argument("--model", default="vit_t")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_cmd_demo)

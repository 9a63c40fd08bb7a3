"""Options several commands share: the model a command runs, on which device, and the decoder's
precision."""

from __future__ import annotations

import argparse

from .threads import add_threads_argument

# engine.predictor.DECODER_PRECISIONS (not imported from there: building the parser loads no torch)
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def add_precision_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--precision`` (``PRECISIONS``, default auto) of the decoder; ``help_text`` says what auto means there."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=help_text)


def add_model_options(parser: argparse.ArgumentParser, device: str = "cpu", decoder: bool = False,
                      precision_help: str | None = None) -> None:
    """``--model`` (default vit_t), ``--decoder`` (default sam) when ``decoder``, ``--device``
    (default ``device``), ``--precision`` when ``precision_help`` is given, and ``--threads``."""
    parser.add_argument("--model", default="vit_t")
    if decoder:
        parser.add_argument("--decoder", default="sam")
    parser.add_argument("--device", default=device)
    if precision_help is not None:
        add_precision_argument(parser, precision_help)
    add_threads_argument(parser)

"""The ``--threads`` option of the commands that compute on the CPU: how many threads torch uses."""

from __future__ import annotations

import argparse


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def use_threads(threads: int) -> None:
    """torch computes with ``threads`` CPU threads (0: torch's default, left as it is)."""
    if threads:
        import torch

        torch.set_num_threads(threads)

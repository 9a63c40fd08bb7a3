"""Counts as a user reads them: "1 click", "2 clicks"."""

from __future__ import annotations


def count(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and ``word``, in the plural (``plural``, else ``word + "s"``) unless ``n`` is one."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"

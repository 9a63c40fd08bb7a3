"""The clicks and actions the dock has handed the annotator and not yet seen the result of. The
annotator runs them in order on its worker; each result comes back on the GUI thread, unless the
dock was started again with another annotator meanwhile (its results are dropped)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future


class ClickQueue:
    def __init__(self, threads, current: Callable[[], object], before: Callable[[], None]) -> None:
        """``current()``: the running annotator, or None; ``before()``: runs as each action is
        queued (prefetching waits)."""
        self.threads, self.current, self.before = threads, current, before
        self.pending = 0  # queued and not yet come back

    def submit(self, action: Callable[[object], Future], done: Callable[[object], None],
               failed: Callable[[Exception], None]) -> None:
        """Queue ``action(annotator)`` (one of its ``submit_*``); ``done(result)`` or
        ``failed(error)`` when it has run. Nothing is queued before a Start."""
        annotator = self.current()
        if annotator is None:
            return
        self.before()
        self.pending += 1

        def back(handler, value) -> None:
            if self.current() is annotator:  # else restarted since: dropped
                self.pending = max(self.pending - 1, 0)
                handler(value)

        self.threads.relay(action(annotator), lambda result: back(done, result), lambda err: back(failed, err))

    def reset(self) -> None:
        """A new annotator (or none): what the old one had queued is dropped."""
        self.pending = 0

"""Training in a background thread yields the CPU to the user's clicks."""

from __future__ import annotations

import threading


def lower_priority(niceness: int = 19) -> bool:
    """Give the calling thread the lowest CPU priority (Linux: threads have their own nice value,
    and the OpenMP threads torch starts for this thread inherit it). A step that is under way when
    a click comes then gets the CPU only when the click leaves it idle, so the click runs at full
    speed instead of sharing the cores with it. False where the system does not allow it."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
        return True
    except (AttributeError, OSError):  # not on Linux, or not permitted
        return False

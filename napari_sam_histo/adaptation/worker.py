"""The online adaptation's background thread: it runs a ``DecoderAdapter``'s work (queued
examples, earlier objects' examples, steps, the slide refiner, the gate) at the lowest CPU
priority, yielding to every click (the design: ``adaptation.settings``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

from ..training.examples import AdaptationExample
from ..training.thread_priority import lower_priority
from .decoder_adapter import DecoderAdapter
from .settings import FIRST_SLICE_S, TURN_TIMEOUT_S, AdaptationState


class AdaptationWorker:
    """Runs a ``DecoderAdapter`` on a background thread at the lowest priority: before every step
    (and between the gate's examples) it waits until ``may_run()`` says no click or embedding is
    running, and a step already under way yields the CPU to a click (``lower_priority``). Work from
    other threads (examples, reset, save) is queued and done by this thread between steps, so no
    UI or click thread ever waits for the adapter's lock. The gate judges the copy after every
    ``steps_per_object`` steps and when the owed steps are done. ``on_change(state)`` is called
    from the thread after every step and gate and whenever what it is doing (``activity``) changes.

    Order of the work: queued tasks first, then background jobs (``add_job``: earlier objects'
    examples), then for a newly accepted object ``FIRST_SLICE_S`` of the copy's steps (at least
    one: the copy starts learning at once), then the slide refiner's objects (seconds, and what
    helps most), then the remaining steps. Another thread that keeps ``may_run()`` false with
    background work of its own (a prefetcher computing embeddings one after another) lets a step
    run between its units by calling ``take_turn``."""

    def __init__(self, adapter: DecoderAdapter, may_run: Callable[[], bool],
                 on_change: Callable[[AdaptationState], None] | None = None, low_priority: bool = True) -> None:
        """``low_priority``: the thread runs at the lowest CPU priority (``lower_priority``)."""
        self.adapter = adapter
        self.low_priority = low_priority
        self.may_run = may_run
        self.on_change = on_change
        self.error: str | None = None  # the last failure (cleared by the next step that succeeds)
        self.activity = ""  # what the thread is doing now (``AdaptationState.activity``)
        self._tasks: deque = deque()
        self._jobs: deque = deque()
        self._wake = threading.Event()
        self._stop = self._release = False
        self._idle = threading.Event()
        self._idle.set()
        self._turn_wanted = threading.Event()  # ``take_turn``: a thread waits for one unit of work
        self._turn_done = threading.Event()
        self._first_slice = False  # an object was added: its first steps come before the refiner
        self._sliced = 0.0  # seconds of steps run in that first slice
        self._state_lock = threading.Lock()  # _wake, _idle and _tasks change together (no lost wake-up)
        self._thread = threading.Thread(target=self._run, name="napari-sam-histo-adaptation", daemon=True)
        self._thread.start()

    def add_example(self, example: AdaptationExample) -> Future:
        """Queue an example (returns at once; the worker adds it between steps, then the future
        is done)."""
        return self.submit(lambda: self.adapter.add_example(example))

    def submit(self, function: Callable) -> Future:
        """``function()`` on the worker thread between steps; its result or exception in the
        future (cancelled at once when the worker has stopped)."""
        future: Future = Future()
        with self._state_lock:
            if self._stop:
                future.cancel()
                return future
            self._tasks.append((function, future))
            self._idle.clear()
            self._wake.set()
        return future

    def add_job(self, job: Callable[[Callable[[], bool]], bool | None]) -> None:
        """Background work in units, done by the thread while adaptation is on, before the steps:
        ``job(may_run)`` does one unit and returns True (more may follow), False (it has nothing
        left: it is dropped) or None (``may_run`` said no: asked again later)."""
        with self._state_lock:
            if self._stop:
                return
            self._jobs.append(job)
            self._idle.clear()
            self._wake.set()

    def state_nowait(self) -> AdaptationState:
        """The adapter's state (no lock) with what the thread is doing."""
        return replace(self.adapter.state_nowait(), activity=self.activity)

    @property
    def stopped(self) -> bool:
        return self._stop

    def has_work(self) -> bool:
        """Whether the thread has something to do once ``may_run()`` lets it."""
        adapter = self.adapter
        return adapter.enabled and bool(adapter.owed > 0 or adapter.refiner_pending() or self._jobs)

    def take_turn(self, timeout: float = TURN_TIMEOUT_S) -> bool:
        """Called by a thread between units of its own background work (a prefetcher between two
        embeddings), which ``may_run()`` waits for: when there is work, that thread pauses until
        one unit of it (a step, a refiner's object, an earlier object's tile) is done, at most
        ``timeout`` seconds; True when one was. A click still goes first (``may_run``)."""
        if self._stop or not self.has_work() or threading.current_thread() is self._thread:
            return False
        self._turn_done.clear()
        self._turn_wanted.set()
        self.wake()
        try:
            return self._turn_done.wait(timeout)
        finally:
            self._turn_wanted.clear()

    def _unit_done(self) -> None:
        if self._turn_wanted.is_set():
            self._turn_done.set()

    def _run_tasks(self) -> None:
        """Do the queued work; tell ``on_change`` when there was some (an example just added shows)."""
        ran = False
        while True:
            with self._state_lock:
                if not self._tasks:
                    if ran:
                        self._changed()
                    return
                function, future = self._tasks.popleft()
            ran = True
            owed = self.adapter.owed
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except Exception as err:  # noqa: BLE001 - the job's caller gets it from its future
                future.set_exception(err)
            if self.adapter.owed > owed:  # an object to train on: its first steps come soon
                self._first_slice = True

    def wake(self) -> None:
        """Run what is owed (after switching adaptation back on)."""
        with self._state_lock:
            self._idle.clear()
            self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queued work, the owed steps (unless adaptation is switched off) and the
        gate are done, or the worker has stopped (a UI closing, tests)."""
        return self._idle.wait(timeout)

    def stop(self, wait: bool = True, release: bool = False) -> None:
        """Stop after the step under way (``wait``: until then, at most 10 s); queued work is
        cancelled. ``release``: the adapter's examples (tile embeddings) are dropped when the
        thread ends (the annotator is gone; its memory need not wait for the next one)."""
        with self._state_lock:
            self._stop = True
            self._release = release
            tasks = list(self._tasks)
            self._tasks.clear()
            self._jobs.clear()
            self._wake.set()
        for _, future in tasks:
            future.cancel()
        self._turn_done.set()  # a thread waiting for a turn goes on
        if wait:
            self._thread.join(timeout=10)

    def _changed(self) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):  # a UI's failure must not stop the adaptation
                self.on_change(replace(self.adapter.state(), activity=self.activity))

    def _doing(self, activity: str) -> None:
        """What the thread does now; ``on_change`` hears when that changes."""
        if activity != self.activity:
            self.activity = activity
            self._changed()

    def _may_run(self) -> bool:
        """``may_run()``, and the activity says "waiting" while it says no."""
        if self.may_run():
            return True
        self._doing("waiting")
        return False

    def _judge(self) -> None:
        """The gate, yielding to clicks: a click that comes first makes it try again after it
        (queued work is done meanwhile, so a Reset never waits for a long gate)."""
        while not self._stop and self.adapter.enabled:
            self._run_tasks()
            if not self._may_run():
                time.sleep(0.02)
                continue
            self._doing("judging")
            if self.adapter.update_gate(self.may_run) is not None:
                self._unit_done()
                return
            time.sleep(0.02)

    def _prepare(self) -> None:
        """The background jobs' units, one after another, yielding to clicks."""
        while not self._stop and self.adapter.enabled and self._jobs:
            self._run_tasks()
            if not self._may_run():
                time.sleep(0.02)
                continue
            job = self._jobs[0]
            self._doing("preparing")
            done = job(self.may_run)
            if done is None:
                time.sleep(0.02)
                continue
            if not done:
                with self._state_lock:
                    if self._jobs and self._jobs[0] is job:
                        self._jobs.popleft()
            self._unit_done()
            self._changed()

    def _refine(self) -> None:
        """The slide refiner's queued objects, oldest first, yielding to clicks."""
        while not self._stop and self.adapter.enabled and self.adapter.refiner_pending():
            self._run_tasks()
            if self._first_slice and self.adapter.owed > 0:
                return  # a newly accepted object's first steps come first
            if not self._may_run():
                time.sleep(0.02)
                continue
            self._doing("refining")
            if self.adapter.update_refiner(self.may_run) is None:
                time.sleep(0.02)
                continue
            self._unit_done()
            self._changed()

    def _step(self) -> None:
        """One step, when ``may_run()`` lets it."""
        if not self._may_run():
            time.sleep(0.02)
            return
        self._doing("training")
        started = time.perf_counter()
        if self.adapter.step() is not None:
            self.error = None
        self._sliced += time.perf_counter() - started
        self._unit_done()
        self._changed()
        if self.adapter.steps % self.adapter.steps_per_object == 0 and self.adapter.owed > 0:
            self._judge()  # a user faster than the steps still gets a judged copy
            self._changed()

    def _run(self) -> None:
        if self.low_priority:
            lower_priority()
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            try:
                self._run_tasks()
                self._prepare()
                self._sliced = 0.0
                while not self._stop and self.adapter.enabled and (self.adapter.owed > 0
                                                                   or self.adapter.refiner_pending() or self._jobs):
                    self._run_tasks()
                    self._prepare()
                    if self._first_slice:  # a new object: FIRST_SLICE_S of steps (at least one) first
                        if self.adapter.owed <= 0 or self._sliced >= FIRST_SLICE_S:
                            self._first_slice, self._sliced = False, 0.0
                        elif not self._stop and self.adapter.enabled:
                            self._step()
                            continue
                    self._refine()
                    if self._first_slice:
                        continue
                    if not self._stop and self.adapter.enabled and self.adapter.owed > 0:
                        self._step()
                self._judge()
                self._run_tasks()
                self._refine()
            except Exception as err:  # noqa: BLE001 - adaptation is a bonus: it never takes the annotator down
                self.error = f"{type(err).__name__}: {err}"
            self._unit_done()
            self.activity = ""
            self._changed()
            with self._state_lock:
                if self._stop or (not self._wake.is_set() and not self._tasks):
                    self._idle.set()
                elif not self._wake.is_set():
                    self._wake.set()
        if self._release:
            self.adapter.release()
        self._idle.set()

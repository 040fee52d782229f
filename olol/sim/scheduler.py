"""Model residency and request slots, modelled on Ollama's scheduler.

* Each loaded model (a "runner") has ``parallel`` request slots (OLLAMA_NUM_PARALLEL).
* At most ``max_loaded`` runners are resident; loading another evicts the least recently
  used idle runner, or waits until one becomes idle.
* A request that cannot get a slot at once waits; at most ``max_queue`` requests wait,
  beyond that :class:`Busy` (HTTP 503) is raised immediately.
* When a runner's last request finishes, its keep_alive timer starts; 0 unloads now,
  ``FOREVER`` never expires.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from olol.sim.spec import FOREVER, ModelSpec

DEFAULT_KEEP_ALIVE = 300.0
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Busy(Exception):
    """The wait queue is full (Ollama's ErrMaxQueue)."""


class Aborted(Exception):
    """The client went away or the simulator is stopping."""


class Waiter:
    """Sleeps that end early when the simulator stops or the client disconnects.

    :param stop: the simulator's stop event.
    :param gone: returns True once the client has gone away (checked between slices).
    """

    SLICE = 0.05

    def __init__(self, stop: threading.Event, gone: Callable[[], bool] | None = None):
        self.stop = stop
        self.gone = gone or (lambda: False)

    def aborted(self) -> bool:
        return self.stop.is_set() or self.gone()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raises :class:`Aborted` if interrupted."""
        if seconds <= 0:
            if self.aborted():
                raise Aborted()
            return
        remaining = seconds
        while remaining > 0:
            step = min(remaining, self.SLICE)
            if self.stop.wait(step) or self.gone():
                raise Aborted()
            remaining -= step


@dataclass
class Stats:
    """Counters shown by ``Simulator.stats()`` and ``GET /_sim/stats``."""

    requests_total: int = 0
    generations_started: int = 0
    generations_completed: int = 0
    generations_cancelled: int = 0
    active_generations: int = 0
    model_loads: int = 0
    model_unloads: int = 0
    queued: int = 0
    rejected_busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, delta: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if k != "lock"}


@dataclass
class Runner:
    spec: ModelSpec
    loading: bool = True
    busy: int = 0
    keep_alive: float = DEFAULT_KEEP_ALIVE
    last_used: float = 0.0
    expires_at: float | None = None  # clock time; None while busy or loading
    loaded_at: float = 0.0


class Lease:
    """A slot on a runner; ``release()`` exactly once (idempotent)."""

    def __init__(self, scheduler: Scheduler, runner: Runner, load_duration: float):
        self._scheduler = scheduler
        self.runner = runner
        self.load_duration = load_duration
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self.runner)


class Scheduler:
    """Thread-safe runner table. All times come from ``clock``."""

    def __init__(
        self,
        *,
        parallel: int,
        max_loaded: int,
        max_queue: int,
        load_time: float,
        stats: Stats,
        stop: threading.Event,
        clock: Callable[[], float],
    ):
        self.parallel = max(1, parallel)
        self.max_loaded = max(1, max_loaded)
        self.max_queue = max(0, max_queue)
        self.load_time = load_time
        self.stats = stats
        self.clock = clock
        self._stop = stop
        self._cond = threading.Condition()
        self._runners: dict[str, Runner] = {}
        self._waiting = 0

    # -- acquiring -------------------------------------------------------------------

    def acquire(self, spec: ModelSpec, keep_alive: float | None, waiter: Waiter) -> Lease:
        """Get a slot on ``spec``'s runner, loading it (and evicting another) if needed.

        Raises :class:`Busy` when ``max_queue`` requests already wait, :class:`Aborted` when
        the client goes away or the simulator stops while waiting.
        """
        key = spec.name.lower()
        start = self.clock()
        waiting = False
        load_runner: Runner | None = None
        try:
            with self._cond:
                while True:
                    if waiter.aborted():
                        raise Aborted()
                    self._expire_locked()
                    runner = self._runners.get(key)
                    if runner is not None and not runner.loading and runner.busy < self.parallel:
                        self._take_locked(runner, keep_alive)
                        return Lease(self, runner, self.clock() - start)
                    if runner is None and self._make_room_locked():
                        runner = Runner(spec=spec, loading=True, busy=1)
                        runner.keep_alive = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
                        self._runners[key] = runner
                        load_runner = runner
                        break
                    if not waiting:
                        if self._waiting >= self.max_queue:
                            self.stats.add("rejected_busy")
                            raise Busy(BUSY_MESSAGE)
                        waiting = True
                        self._waiting += 1
                        self.stats.add("queued")
                    self._cond.wait(timeout=Waiter.SLICE)
        finally:
            if waiting:
                with self._cond:
                    self._waiting -= 1
                self.stats.add("queued", -1)
        return self._load(load_runner, waiter, start)

    def _load(self, runner: Runner, waiter: Waiter, start: float) -> Lease:
        load_time = runner.spec.load_time if runner.spec.load_time is not None else self.load_time
        try:
            # A load is not cancelled by the client going away (Ollama finishes loading
            # the runner), only by the simulator stopping.
            Waiter(self._stop).sleep(load_time)
        except Aborted:
            with self._cond:
                self._runners.pop(runner.spec.name.lower(), None)
                self._cond.notify_all()
            raise
        with self._cond:
            runner.loading = False
            runner.loaded_at = runner.last_used = self.clock()
            self.stats.add("model_loads")
            self._cond.notify_all()
        return Lease(self, runner, self.clock() - start)

    def _take_locked(self, runner: Runner, keep_alive: float | None) -> None:
        runner.busy += 1
        runner.expires_at = None
        runner.last_used = self.clock()
        if keep_alive is not None:
            runner.keep_alive = keep_alive

    def _make_room_locked(self) -> bool:
        if len(self._runners) < self.max_loaded:
            return True
        idle = [r for r in self._runners.values() if not r.loading and r.busy == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda r: r.last_used)
        self._unload_locked(victim)
        return True

    def _release(self, runner: Runner) -> None:
        with self._cond:
            runner.busy -= 1
            runner.last_used = self.clock()
            if runner.busy == 0:
                if runner.keep_alive <= 0:
                    self._unload_locked(runner)
                else:
                    runner.expires_at = runner.last_used + runner.keep_alive
            self._cond.notify_all()

    # -- unloading -------------------------------------------------------------------

    def _unload_locked(self, runner: Runner) -> None:
        if self._runners.get(runner.spec.name.lower()) is runner:
            del self._runners[runner.spec.name.lower()]
            self.stats.add("model_unloads")
            self._cond.notify_all()

    def _expire_locked(self) -> None:
        now = self.clock()
        for runner in list(self._runners.values()):
            if runner.busy == 0 and runner.expires_at is not None and runner.expires_at <= now:
                self._unload_locked(runner)

    def expire(self) -> None:
        """Unload runners whose keep_alive ran out (called by the reaper thread)."""
        with self._cond:
            self._expire_locked()

    def unload(self, name: str) -> None:
        """keep_alive 0 on an empty prompt: unload now, or as soon as its requests finish."""
        with self._cond:
            runner = self._runners.get(name.lower())
            if runner is None:
                return
            runner.keep_alive = 0.0
            if runner.busy == 0 and not runner.loading:
                self._unload_locked(runner)

    def forget(self, name: str) -> None:
        """A deleted model: drop its runner if idle (a busy one unloads when done)."""
        self.unload(name)

    def loaded(self) -> list[tuple[ModelSpec, float]]:
        """``(spec, expires_at)`` for every resident runner, longest remaining first."""
        with self._cond:
            self._expire_locked()
            now = self.clock()
            rows = []
            for r in self._runners.values():
                if r.expires_at is not None:
                    exp = r.expires_at
                elif r.keep_alive >= FOREVER:
                    exp = now + FOREVER
                else:
                    exp = now + r.keep_alive
                if r.keep_alive >= FOREVER:
                    exp = now + FOREVER
                rows.append((r.spec, exp))
        rows.sort(key=lambda row: -row[1])
        return rows

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

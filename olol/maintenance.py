"""Maintenance jobs: periodic work of the proxy on one APScheduler scheduler.

``MaintenanceJobs`` wraps a scheduler (APScheduler 3 ``BackgroundScheduler``, or None
for tests that drive jobs with :meth:`MaintenanceJobs.run_now`). Every job runs at most
once at a time and missed runs are coalesced; each run is timed with the injected clock
and its outcome recorded (``ok`` or the error message), with run and failure counts. A
failing job is logged and counted; it never stops the scheduler or the other jobs.

:func:`install_proxy_jobs` adds the proxy's jobs: health polling, queue cleanup,
registry consistency (model synchronization and expired leases), stats roll-ups,
store checkpoints, and — only when the operator turns ``auto_optimize`` on — applying
the model distribution plan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olol.context import ProxyConfig
    from olol.health import HealthMonitor
    from olol.interfaces import JobScheduler, Queue, Store
    from olol.registry import ModelRegistry
    from olol.stats import RequestStats

log = logging.getLogger(__name__)

#: Default interval of each proxy job, in seconds (``ProxyConfig.job_intervals``
#: overrides any of them; ``health-poll`` defaults to ``health_interval_s``).
DEFAULT_JOB_INTERVALS: dict[str, float] = {
    "health-poll": 5.0,
    "queue-cleanup": 300.0,
    "registry-sync": 30.0,
    "queue-leases": 5.0,
    "stats-rollup": 60.0,
    "store-checkpoint": 600.0,
    "model-optimize": 3600.0,
}

MAX_MESSAGE_CHARS = 300
MIN_INTERVAL_S = 0.01


class UnknownJobError(KeyError):
    """No job has that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown job"


@dataclass
class _Job:
    name: str
    fn: Callable[[], Any]
    interval_s: float
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    last_start: float | None = None
    last_end: float | None = None
    last_outcome: str | None = None  # "ok" | "error"
    last_error: str | None = None
    last_result: Any = None
    running: threading.Lock = field(default_factory=threading.Lock)


def _summary(value: Any) -> Any:
    """A short JSON-friendly view of what a job returned."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_MESSAGE_CHARS]


def _timestamp(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class MaintenanceJobs:
    """Named periodic jobs with recorded outcomes.

    :param scheduler: an APScheduler 3 scheduler (started or not; its owner starts and
        shuts it down), or None: jobs then only run through :meth:`run_now`.
    :param clock: returns the time (seconds since the epoch) used for run records.
    """

    def __init__(self, scheduler: JobScheduler | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # -- registration --------------------------------------------------------------------
    def add(self, name: str, fn: Callable[[], Any], interval_s: float, *,
            start_now: bool = False) -> None:
        """Run ``fn`` every ``interval_s`` seconds (first run after one interval, or at
        once with ``start_now``). Re-adding a name replaces the job."""
        if not name or not isinstance(name, str):
            raise ValueError("a job needs a name")
        interval = float(interval_s)
        if interval < MIN_INTERVAL_S:
            raise ValueError(f"job {name!r}: interval must be at least {MIN_INTERVAL_S} s")
        job = _Job(name=name, fn=fn, interval_s=interval)
        with self._lock:
            self._jobs[name] = job
        if self.scheduler is not None:
            kw: dict[str, Any] = {}
            if start_now:
                kw["next_run_time"] = datetime.now(UTC)
            self.scheduler.add_job(
                self._scheduled, "interval", args=[name], seconds=interval, id=name,
                name=name, max_instances=1, coalesce=True,
                misfire_grace_time=max(1, int(interval)), replace_existing=True, **kw,
            )

    def set_interval(self, name: str, interval_s: float) -> None:
        """Run job ``name`` every ``interval_s`` seconds from now on (a run-time setting).

        :raises KeyError: no such job. :raises ValueError: a bad interval.
        """
        interval = float(interval_s)
        if interval < MIN_INTERVAL_S:
            raise ValueError(f"job {name!r}: interval must be at least {MIN_INTERVAL_S} s")
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                raise KeyError(name)
            if job.interval_s == interval:
                return
            job.interval_s = interval  # its run history stays
        if self.scheduler is not None:
            self.scheduler.reschedule_job(name, trigger="interval", seconds=interval)

    def remove(self, name: str) -> bool:
        with self._lock:
            job = self._jobs.pop(name, None)
        if job is None:
            return False
        if self.scheduler is not None:
            try:
                self.scheduler.remove_job(name)
            except Exception:  # noqa: BLE001 - already gone (scheduler shut down)
                log.debug("job %s already removed from the scheduler", name, exc_info=True)
        return True

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    # -- running -------------------------------------------------------------------------
    def _scheduled(self, name: str) -> None:
        try:
            self._execute(name)
        except UnknownJobError:
            log.debug("job %s ran after removal", name)

    def run_now(self, name: str) -> dict[str, Any]:
        """Run the job on the calling thread (skipped when a run is already in
        progress) and return its status entry. Never raises for a failing job.

        :raises UnknownJobError: no such job.
        """
        self._execute(name)
        return self._entry(self._get(name))

    def _get(self, name: str) -> _Job:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise UnknownJobError(f"no maintenance job named {name!r}")
        return job

    def _execute(self, name: str) -> None:
        job = self._get(name)
        if not job.running.acquire(blocking=False):
            with self._lock:
                job.skipped += 1
            return
        try:
            start = self.clock()
            with self._lock:
                job.last_start = start
            try:
                result = job.fn()
            except Exception as exc:  # counted, logged; never propagates to the scheduler
                log.exception("maintenance job %s failed", name)
                message = (str(exc) or type(exc).__name__)[:MAX_MESSAGE_CHARS]
                with self._lock:
                    job.runs += 1
                    job.failures += 1
                    job.last_end = self.clock()
                    job.last_outcome = "error"
                    job.last_error = message
                    job.last_result = None
                return
            with self._lock:
                job.runs += 1
                job.last_end = self.clock()
                job.last_outcome = "ok"
                job.last_result = _summary(result)
        finally:
            job.running.release()

    # -- reporting -----------------------------------------------------------------------
    def _next_run(self, name: str) -> float | None:
        if self.scheduler is None:
            return None
        try:
            sched_job = self.scheduler.get_job(name)
        except Exception:  # noqa: BLE001 - a shut-down scheduler has no jobs to report
            return None
        if sched_job is None:
            return None
        next_time = getattr(sched_job, "next_run_time", None)
        if next_time is None:
            # a scheduler that has not started yet computes the first run at start
            trigger = getattr(sched_job, "trigger", None)
            if trigger is not None and not getattr(self.scheduler, "running", True):
                try:
                    now = datetime.now(UTC)
                    next_time = trigger.get_next_fire_time(None, now)
                except Exception:  # noqa: BLE001
                    next_time = None
        return _timestamp(next_time)

    def _entry(self, job: _Job) -> dict[str, Any]:
        with self._lock:
            entry = {
                "id": job.name,
                "interval_s": job.interval_s,
                "runs": job.runs,
                "failures": job.failures,
                "skipped": job.skipped,
                "running": job.running.locked(),
                "last_start": job.last_start,
                "last_end": job.last_end,
                "last_run": _iso(job.last_start),
                "duration_s": (job.last_end - job.last_start
                               if job.last_end is not None and job.last_start is not None
                               and job.last_end >= job.last_start else None),
                "outcome": job.last_outcome,
                "error": job.last_error if job.last_outcome == "error" else None,
                "last_error": job.last_error,
                "result": job.last_result,
            }
        next_ts = self._next_run(job.name)
        entry["next_run_ts"] = next_ts
        entry["next_run"] = _iso(next_ts)
        return entry

    def status(self) -> list[dict[str, Any]]:
        """One entry per job, by name: ``id``, ``interval_s``, ``runs``, ``failures``,
        ``skipped``, ``running``, ``last_start``/``last_end`` (clock time),
        ``last_run`` (ISO), ``duration_s``, ``outcome`` (None before the first run,
        ``ok`` or ``error``), ``error`` (message of a failed last run), ``last_error``,
        ``result`` (a short view of what the last good run returned), ``next_run``
        (ISO) and ``next_run_ts``."""
        with self._lock:
            jobs = [self._jobs[name] for name in sorted(self._jobs)]
        return [self._entry(job) for job in jobs]

    def status_of(self, name: str) -> dict[str, Any]:
        return self._entry(self._get(name))


# -- the proxy's jobs --------------------------------------------------------------------


def job_intervals(config: Any) -> dict[str, float]:
    """The interval of every proxy job: defaults, ``health_interval_s``, then
    ``config.job_intervals``.

    :raises ValueError: an unknown job name or a bad interval in the configuration.
    """
    intervals = dict(DEFAULT_JOB_INTERVALS)
    health = getattr(config, "health_interval_s", None)
    if health:
        intervals["health-poll"] = float(health)
    for name, value in (getattr(config, "job_intervals", None) or {}).items():
        if name not in DEFAULT_JOB_INTERVALS:
            raise ValueError(f"unknown maintenance job {name!r} in job_intervals; "
                             f"known: {', '.join(sorted(DEFAULT_JOB_INTERVALS))}")
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"job_intervals[{name!r}] must be a number of seconds") from None
        if seconds < MIN_INTERVAL_S:
            raise ValueError(f"job_intervals[{name!r}] must be at least {MIN_INTERVAL_S} s")
        intervals[name] = seconds
    return intervals


def _health_job(health: HealthMonitor) -> Callable[[], Any]:
    def run() -> Any:
        before = getattr(health, "job_errors", 0)
        results = health.run_once() if hasattr(health, "run_once") else health.poll_all()
        if getattr(health, "job_errors", 0) > before:
            raise RuntimeError("health sweep failed (see the log)")
        return f"{len(results or {})} nodes polled"
    return run


def _registry_job(queue: Queue | None, registry: ModelRegistry | None) -> Callable[[], Any]:
    def run() -> Any:
        # leases first: a failing synchronization must not keep work stuck
        returned = queue.return_expired_leases() if queue is not None else 0
        summary = registry.synchronize_models() if registry is not None else None
        return {"leases_returned": returned, "models": summary}
    return run


def _optimize_job(registry: ModelRegistry) -> Callable[[], Any]:
    def run() -> Any:
        plan = registry.optimize_model_distribution()
        if not plan.get("actions"):
            return "nothing to do"
        return registry.apply(plan)
    return run


def install_proxy_jobs(jobs: MaintenanceJobs, *, config: ProxyConfig, queue: Queue | None = None,
                       registry: ModelRegistry | None = None, stats: RequestStats | None = None,
                       db: Store | None = None, health: HealthMonitor | None = None
                       ) -> list[str]:
    """Add the proxy's jobs for the parts given; returns the names added.

    ``health-poll`` (``health.run_once``; do not also call ``health.start``),
    ``queue-cleanup`` (``queue.clean_old_requests()``, the queue's retention_hours),
    ``registry-sync`` (``queue.return_expired_leases`` + ``registry.synchronize_models``),
    ``queue-leases`` (``queue.return_expired_leases``, on a shared store only: the claims
    and sync requests of stopped proxies),
    ``stats-rollup`` (``stats.maintain``), ``store-checkpoint`` (``db.checkpoint``, durable
    stores only), ``model-optimize`` (plan + apply; only when ``config.auto_optimize``).
    """
    intervals = job_intervals(config)
    added: list[str] = []

    def add(name: str, fn: Callable[[], Any], start_now: bool = False) -> None:
        jobs.add(name, fn, intervals[name], start_now=start_now)
        added.append(name)

    if health is not None:
        add("health-poll", _health_job(health), start_now=True)
    if queue is not None:
        # the queue's own retention_hours (config at start-up, changed live by settings)
        add("queue-cleanup", lambda: queue.clean_old_requests())
    if queue is not None or registry is not None:
        add("registry-sync", _registry_job(queue, registry))
    if queue is not None and getattr(queue, "shared", False):
        # several proxies on one store: what a stopped proxy held goes back quickly
        add("queue-leases", lambda: {"returned": queue.return_expired_leases()})
    if stats is not None:
        add("stats-rollup", getattr(stats, "maintain", None) or stats.roll_up)
    if db is not None and getattr(db, "durable", False):
        add("store-checkpoint", db.checkpoint)
    if registry is not None and getattr(config, "auto_optimize", False):
        add("model-optimize", _optimize_job(registry))
    return added


__all__ = [
    "DEFAULT_JOB_INTERVALS", "MaintenanceJobs", "UnknownJobError", "install_proxy_jobs",
    "job_intervals",
]

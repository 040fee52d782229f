"""``HealthMonitor``: polls every node's complete status and keeps health records.

One sweep polls all nodes at once: each poll is a gRPC future carrying the poll's
deadline (no thread waits on a node; a client without futures runs on a bounded,
named thread pool), at most ``max_in_flight`` at a time, and the sweep waits at
most a little longer than the deadline, so one hung or dead node never stalls or
fails the others, and a sweep of 256 nodes takes about one poll's time. A node that fails
``failure_threshold`` polls in a row becomes unhealthy and its circuit opens:
it is skipped for ``open_s`` seconds, then probed once per sweep until a probe
succeeds (which makes it healthy again).

Each sweep writes the nodes' ``servers`` rows and ``server_stats`` samples
(types ``health`` 1/0, ``load`` 0..1 (CPU), ``latency`` ms, ``slots`` busy of
``total``, and with GPUs ``gpu_util`` % and ``gpu_memory`` bytes used of ``total``:
:func:`capacity_samples`) in one transaction.
Samples are written at most every ``stats_interval_s`` per node, and on every
health change, which bounds the table's growth; rows older than the retention
are pruned by the same job (``retention_hours``, a run-time setting: a changed value
prunes at the next sweep).

Every change of a node's state (healthy, suspect, unhealthy) is logged once, with
its reason in plain words ("token rejected", "TLS: certificate signed by unknown
authority", "connection refused", "Ollama not reachable: ..."), and so is its
recovery (:class:`NodeTransitions`). States are read before and after each sweep,
so a node marked suspect by a failed dispatch between two sweeps is seen too. An
optional :class:`PollObserver` (the proxy's metrics) hears of every poll and every
state change.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from olol.cluster import ClusterManager, describe_error, status_problem
from olol.node_state import NodeState, reason_hint
from olol.store.database import iso_utc

log = logging.getLogger(__name__)

JOB_ID = "olol-health"
# Extra seconds the sweep waits for a future beyond the poll's own deadline
# (the gRPC deadline normally fires first; this only guards a misbehaving client).
_GRACE_S = 0.5

HEALTHY, SUSPECT, UNHEALTHY, UNKNOWN = "healthy", "suspect", "unhealthy", "unknown"
#: Every state :func:`node_state_of` returns (``unknown``: not polled yet).
NODE_STATES = (HEALTHY, SUSPECT, UNHEALTHY, UNKNOWN)


class PollObserver(Protocol):
    """Hears what the health monitor learns (the proxy's metrics implement it)."""

    def node_polled(self, node: NodeState) -> None:
        """A poll of ``node`` ended (its state after the poll, good or bad)."""

    def node_state_changed(self, address: str, old: str | None, new: str,
                           reason: str | None) -> None:
        """The node's state changed (``old`` None: first seen)."""

    def node_removed(self, address: str) -> None:
        """The node left the cluster."""


def node_state_of(node: NodeState, now: float) -> tuple[str, str | None]:
    """``(state, reason)`` of a node snapshot: ``unknown`` until its first poll,
    ``unhealthy`` (failed ``failure_threshold`` polls, or never polled well),
    ``suspect`` (healthy, but a call or poll failed since its last good poll) or
    ``healthy``; the reason is in plain words."""
    if node.last_check is None and not node.last_error:
        return UNKNOWN, None
    if not node.healthy or node.circuit_open(now):
        return UNHEALTHY, node.reason() or "not healthy"
    if node.suspect:
        return SUSPECT, node.reason()
    return HEALTHY, None


@dataclass(frozen=True)
class _Failed:
    """A poll that could not even start (its reason)."""

    error: str


@dataclass
class _Seen:
    state: str
    reason: str | None
    since: float


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class NodeTransitions:
    """Logs each node's state changes once, with the reason in plain words, and its
    recovery; tells an optional observer. Not thread-safe: one health sweep at a time
    calls :meth:`observe` (APScheduler runs the job with ``max_instances=1``).

    :param clock: seconds (how long a node was down, told on its recovery).
    :param observer: hears every state change (may be None).
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 observer: PollObserver | None = None, logger: logging.Logger = log) -> None:
        self.clock = clock
        self.observer = observer
        self.log = logger
        self._seen: dict[str, _Seen] = {}

    def state(self, address: str) -> tuple[str, str | None] | None:
        seen = self._seen.get(address)
        return (seen.state, seen.reason) if seen else None

    def observe(self, nodes: Iterable[NodeState], *, complete: bool = True) -> None:
        """Compare ``nodes`` with what was seen last; log and tell what changed.
        ``complete``: ``nodes`` is the whole membership (others were removed)."""
        now = self.clock()
        present = set()
        for node in nodes:
            present.add(node.address)
            state, reason = node_state_of(node, now)
            if state == UNKNOWN:
                continue
            seen = self._seen.get(node.address)
            if seen is not None and seen.state == state:
                if state != HEALTHY and reason != seen.reason:
                    self.log.warning("node %s still %s, now: %s%s", node.address, state, reason,
                                     self._hint(node))
                    seen.reason = reason
                continue
            self._seen[node.address] = _Seen(state, reason, now)
            if state == HEALTHY:
                if seen is None:
                    self.log.info("node %s is healthy (%d slots, %d models)", node.address,
                                  node.parallel, len(node.available_models))
                else:
                    self.log.info("node %s recovered: healthy again after %s %s (%s)",
                                  node.address, _ago(now - seen.since), seen.state,
                                  seen.reason)
            else:
                self.log.warning("node %s is %s: %s%s", node.address, state, reason,
                                 self._hint(node))
            if self.observer is not None:
                try:
                    self.observer.node_state_changed(node.address,
                                                     seen.state if seen else None, state, reason)
                except Exception:  # noqa: BLE001 - an observer must not stop the sweep
                    log.exception("node state observer failed")
        if complete:
            for gone in [a for a in self._seen if a not in present]:
                del self._seen[gone]
                if self.observer is not None:
                    try:
                        self.observer.node_removed(gone)
                    except Exception:  # noqa: BLE001
                        log.exception("node state observer failed")

    @staticmethod
    def _hint(node: NodeState) -> str:
        error = node.last_error if (not node.healthy or node.consecutive_failures) \
            else node.suspect_reason
        hint = reason_hint(error)
        return f" ({hint})" if hint else ""


def capacity_samples(status: Any, address: str, stamp: str) -> list[dict]:
    """The ``server_stats`` samples of a node's status reply that say how busy it is:
    ``slots`` (requests running on the agent, ``total``: its parallel slots) and, when
    the node reports GPUs, ``gpu_util`` (mean utilisation in percent) and ``gpu_memory``
    (bytes used, ``total``: bytes in all; ``gpus``: how many)."""
    if not isinstance(status, dict):
        return []
    out = []
    agent = status.get("agent") or {}
    if isinstance(agent, dict) and agent.get("parallel"):
        out.append({"server": address, "timestamp": stamp, "type": "slots",
                    "value": int(agent.get("in_flight_total") or 0),
                    "total": int(agent["parallel"])})
    gpus = [g for g in ((status.get("gpu") or {}).get("gpus") or []) if isinstance(g, dict)]
    util = [float(g["gpu_utilization_percent"]) for g in gpus
            if isinstance(g.get("gpu_utilization_percent"), int | float)]
    if util:
        out.append({"server": address, "timestamp": stamp, "type": "gpu_util",
                    "value": round(sum(util) / len(util), 1), "gpus": len(util)})
    memory = [g for g in gpus if isinstance(g.get("memory_used_bytes"), int)
              and isinstance(g.get("memory_total_bytes"), int)]
    if memory:
        out.append({"server": address, "timestamp": stamp, "type": "gpu_memory",
                    "value": sum(g["memory_used_bytes"] for g in memory),
                    "total": sum(g["memory_total_bytes"] for g in memory),
                    "gpus": len(memory)})
    return out


class HealthMonitor:
    """Periodic health polling with a per-node circuit breaker.

    :param cluster: the :class:`ClusterManager` whose nodes are polled.
    :param db: the store (``servers``, ``server_stats``).
    :param clock: seconds since the epoch (circuit timers, sample timestamps).
    :param interval_s: seconds between sweeps.
    :param timeout_s: deadline of each status poll.
    :param failure_threshold: consecutive failures that make a node unhealthy.
    :param open_s: how long an open circuit skips the node before the next probe.
    :param max_workers: size of the polling thread pool (for clients without
        ``status_future``; a :class:`~olol.rpc.client.NodeClient` polls with no thread).
    :param max_in_flight: polls in flight at once at most (a larger cluster is swept in
        rounds of this many).
    :param retention_hours: ``server_stats`` rows older than this are pruned.
    :param stats_interval_s: minimum seconds between samples of one node (0: every sweep).
    :param observer: hears every poll and state change (the proxy's metrics); optional.
    """

    def __init__(self, cluster: ClusterManager, db: Any, *,
                 clock: Callable[[], float] = time.time, interval_s: float = 5.0,
                 timeout_s: float = 2.0, failure_threshold: int = 3, open_s: float = 15.0,
                 max_workers: int = 16, retention_hours: float = 24.0,
                 stats_interval_s: float = 60.0, prune_interval_s: float = 600.0,
                 observer: PollObserver | None = None, max_in_flight: int = 1024) -> None:
        if interval_s <= 0 or timeout_s <= 0 or failure_threshold < 1 or max_workers < 1 \
                or max_in_flight < 1:
            raise ValueError("interval_s and timeout_s must be > 0, failure_threshold, "
                             "max_workers and max_in_flight >= 1")
        self.max_in_flight = int(max_in_flight)
        self.cluster, self.db, self.clock = cluster, db, clock
        self.interval_s, self.timeout_s = float(interval_s), float(timeout_s)
        self.failure_threshold, self.open_s = int(failure_threshold), float(open_s)
        self.retention_hours = float(retention_hours)
        self.stats_interval_s, self.prune_interval_s = stats_interval_s, prune_interval_s
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers,
                                           thread_name_prefix="olol-health")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # polls still running from an earlier sweep
        self._last_sample: dict[str, float] = {}
        self._last_health: dict[str, bool] = {}
        self._last_prune: float | None = None
        self._pruned_with: float | None = None  # the retention of the last prune
        self._scheduler: Any = None
        self._own_scheduler = False
        self._closed = False
        self.sweeps = 0
        self.job_errors = 0
        self.observer = observer
        self.transitions = NodeTransitions(clock, observer)

    # -- one sweep --------------------------------------------------------------------

    def _poll_one(self, address: str) -> tuple[dict | None, float, str | None]:
        start = time.monotonic()
        try:
            status = self.cluster.client(address).status(timeout=self.timeout_s)
            problem = status_problem(status)
            return (None if problem else status), (time.monotonic() - start) * 1000.0, problem
        except Exception as exc:  # noqa: BLE001 - every failure is one failed poll
            return None, (time.monotonic() - start) * 1000.0, describe_error(exc)
        finally:
            with self._lock:
                self._in_flight.discard(address)

    def _start(self, address: str) -> Any:
        """Start one poll: a gRPC future when the client has one (no thread held while
        the node answers), else a task on the bounded pool."""
        try:
            client = self.cluster.client(address)
            start_future = getattr(client, "status_future", None)
            if start_future is not None:
                return start_future(timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the node left, or the call failed to start
            return _Failed(describe_error(exc))
        return self._pool.submit(self._poll_one, address)

    def _finish(self, address: str, poll: Any, deadline: float
                ) -> tuple[dict | None, float | None, str | None]:
        """Wait (until ``deadline`` at most) for a poll started by :meth:`_start`."""
        left = max(0.0, deadline - time.monotonic())
        if isinstance(poll, cf.Future):  # the pool: it discards the in-flight mark itself
            try:
                return poll.result(timeout=left)
            except cf.TimeoutError:
                return None, None, f"no answer within {self.timeout_s}s"
        try:
            if isinstance(poll, _Failed):
                return None, 0.0, poll.error
            try:
                status = poll.result(timeout=left)
            except TimeoutError:
                poll.cancel()
                return None, None, f"no answer within {self.timeout_s}s"
            except Exception as exc:  # noqa: BLE001 - every failure is one failed poll
                return None, poll.latency_ms, describe_error(exc)
            problem = status_problem(status)
            return (None if problem else status), poll.latency_ms, problem
        finally:
            with self._lock:
                self._in_flight.discard(address)

    def poll_all(self) -> dict[str, dict]:
        """Poll every due node concurrently and record the outcome.

        All polls are in flight at once (gRPC futures: no thread waits on a node; a
        client without futures uses the bounded pool), at most ``max_in_flight`` at a
        time, each with the poll's deadline: a sweep of N nodes takes about one poll's
        time, not N of them, and a hung node never delays or fails the others.

        Nodes whose circuit is open are skipped (``{"skipped": "circuit open"}``), as are
        nodes whose previous poll is still running. Returns, per address, ``ok``,
        ``healthy``, ``latency_ms`` and ``error``.
        """
        if self._closed:
            raise RuntimeError("health monitor is stopped")
        now = self.clock()
        results: dict[str, dict] = {}
        due: list[str] = []
        before = self.cluster.list_nodes()
        # what changed since the last sweep (a dispatch that made a node suspect)
        self.transitions.observe(before)
        for node in before:
            if node.circuit_open(now):
                results[node.address] = {"skipped": "circuit open", "healthy": False}
                continue
            with self._lock:
                if node.address in self._in_flight:
                    results[node.address] = {"skipped": "previous poll still running",
                                             "healthy": node.healthy}
                    continue
                self._in_flight.add(node.address)
            due.append(node.address)
        for first in range(0, len(due), self.max_in_flight):
            chunk = due[first:first + self.max_in_flight]
            polls = {address: self._start(address) for address in chunk}
            deadline = time.monotonic() + self.timeout_s + _GRACE_S
            for address, poll in polls.items():
                status, latency_ms, error = self._finish(address, poll, deadline)
                self._record(address, status, latency_ms, error, results)
        self._write(results)
        self.transitions.observe(self.cluster.list_nodes())
        self.sweeps += 1
        return results

    def _record(self, address: str, status: dict | None, latency_ms: float | None,
                error: str | None, results: dict[str, dict]) -> None:
        if status is not None:
            state = self.cluster.record_poll(address, status, latency_ms or 0.0)
        else:
            state = self.cluster.record_poll_failure(
                address, error or "poll failed", failure_threshold=self.failure_threshold,
                open_s=self.open_s)
        if state is None:  # removed while we polled
            return
        results[address] = {"ok": status is not None, "healthy": state.healthy,
                            "latency_ms": latency_ms if status is not None else None,
                            "error": error if status is None else None}
        if self.observer is not None:
            try:
                self.observer.node_polled(state)
            except Exception:  # noqa: BLE001 - an observer must not stop the sweep
                log.exception("poll observer failed for %s", address)

    def _write(self, results: dict[str, dict]) -> None:
        now = self.clock()
        stamp = iso_utc(now)
        # Read the cluster's rows before taking the store's lock: the cluster writes to
        # the store while holding its own lock, so the order is always cluster -> store.
        rows = {a: self.cluster.server_row(a) for a, o in results.items() if "skipped" not in o}
        members = {n.address for n in self.cluster.list_nodes()}
        for gone in [a for a in self._last_sample if a not in members]:
            self._last_sample.pop(gone, None)
            self._last_health.pop(gone, None)
        sync = getattr(self.cluster, "sync_manager", None)
        # The servers rows go through the cluster's RAM view of the store (SyncManager),
        # the samples straight to the store, all in one transaction.
        txn = sync.transaction(("servers",)) if sync is not None else self.db.transaction()
        with txn:
            for address, row in rows.items():
                if row is None:
                    continue
                outcome = results[address]
                if sync is not None:
                    sync.update_and_sync("servers", row, {"address": address})
                else:
                    self.db.update("servers", row, {"address": address})
                healthy = bool(outcome["healthy"])
                changed = self._last_health.get(address) is not healthy
                last = self._last_sample.get(address)
                if not changed and last is not None and now - last < self.stats_interval_s:
                    continue
                self._last_health[address] = healthy
                self._last_sample[address] = now
                samples: list[dict[str, Any]] = [
                    {"server": address, "timestamp": stamp, "type": "health",
                     "value": 1 if outcome["ok"] else 0}]
                if outcome["ok"]:
                    samples.append({"server": address, "timestamp": stamp, "type": "load",
                                    "value": float(row["load"] or 0.0)})
                    samples.append({"server": address, "timestamp": stamp, "type": "latency",
                                    "value": round(float(outcome["latency_ms"]), 3)})
                    samples.extend(capacity_samples(row.get("hardware_info"), address, stamp))
                self.db.insert_many("server_stats", samples)

    def prune_stats(self, max_age_hours: float | None = None) -> int:
        """Remove ``server_stats`` rows older than ``max_age_hours`` (default: the
        retention); returns how many were removed."""
        hours = self.retention_hours if max_age_hours is None else float(max_age_hours)
        cutoff = datetime.fromtimestamp(self.clock() - hours * 3600.0, UTC)

        def old(doc: dict) -> bool:
            try:
                return datetime.fromisoformat(doc["timestamp"]) < cutoff
            except (KeyError, TypeError, ValueError):
                return False

        removed = len(self.db.remove("server_stats", old))
        self._last_prune = self.clock()
        if max_age_hours is None:
            self._pruned_with = hours
        return removed

    def run_once(self) -> dict[str, dict]:
        """The scheduled job: one sweep, plus a prune when one is due. Never raises."""
        try:
            results = self.poll_all()
            if self._last_prune is None or self._pruned_with != self.retention_hours or \
                    self.clock() - self._last_prune >= self.prune_interval_s:
                self.prune_stats()
            return results
        except Exception:  # a failing sweep must not kill the periodic job
            self.job_errors += 1
            log.exception("health sweep failed")
            return {}

    # -- scheduling -------------------------------------------------------------------

    def start(self, scheduler: Any = None) -> None:
        """Run :meth:`run_once` every ``interval_s`` on an APScheduler 3 scheduler.

        With no ``scheduler`` the monitor creates, starts and later shuts down its own
        ``BackgroundScheduler``; a shared one is left running by :meth:`stop`. The first
        sweep runs at once.
        """
        if self._scheduler is not None:
            raise RuntimeError("health monitor already started")
        if scheduler is None:
            from apscheduler.schedulers.background import BackgroundScheduler

            scheduler = BackgroundScheduler(timezone=UTC)
            self._own_scheduler = True
        scheduler.add_job(
            self.run_once, "interval", seconds=self.interval_s, id=JOB_ID, name=JOB_ID,
            max_instances=1, coalesce=True, misfire_grace_time=max(1, int(self.interval_s)),
            next_run_time=datetime.now(UTC), replace_existing=True,
        )
        if self._own_scheduler:
            scheduler.start()
        self._scheduler = scheduler

    def stop(self, wait: bool = True) -> None:
        """Stop the job (and the own scheduler) and the polling pool; idempotent."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            if self._own_scheduler:
                scheduler.shutdown(wait=wait)
            else:
                try:
                    scheduler.remove_job(JOB_ID)
                except Exception:  # noqa: BLE001 - already gone (scheduler shut down)
                    log.debug("health job already removed", exc_info=True)
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)

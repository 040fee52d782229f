"""``RequestStats``: per-request counters in RAM, rolled up into ``request_stats`` rows.

The dispatcher calls :meth:`RequestStats.record` for every finished request;
that only bumps counters under a lock. :meth:`RequestStats.roll_up` (a
maintenance job) adds what was counted since the last roll-up into one
``hourly`` row per hour and one ``daily`` row per UTC day. Counts are bucketed
by the hour the request finished in, so a roll-up that runs after a boundary
still credits the right period, and rows accumulate across restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from olol.store.database import iso_utc

log = logging.getLogger(__name__)

JOB_ID = "olol-stats-rollup"
ENDPOINTS = ("generate", "chat", "embed", "embeddings")
# Bound on distinct unflushed hours kept in RAM (a roll-up normally runs every minute).
MAX_PENDING_HOURS = 24 * 7


@dataclass
class _Counts:
    total: int = 0
    failed: int = 0
    generate: int = 0
    chat: int = 0
    embedding: int = 0
    latency_sum_ms: float = 0.0

    def add(self, endpoint: str, latency_ms: float, ok: bool) -> None:
        self.total += 1
        self.failed += 0 if ok else 1
        if endpoint == "generate":
            self.generate += 1
        elif endpoint == "chat":
            self.chat += 1
        elif endpoint in ("embed", "embeddings"):
            self.embedding += 1
        self.latency_sum_ms += latency_ms

    def merge(self, other: _Counts) -> None:
        self.total += other.total
        self.failed += other.failed
        self.generate += other.generate
        self.chat += other.chat
        self.embedding += other.embedding
        self.latency_sum_ms += other.latency_sum_ms


def hour_start(ts: float) -> float:
    return ts - ts % 3600.0


def day_start(ts: float) -> float:
    return ts - ts % 86400.0


class RequestStats:
    """Request counters and their roll-up into the ``request_stats`` table.

    :param db: the store.
    :param clock: seconds since the epoch; decides each request's period.
    """

    def __init__(self, db: Any, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[float, _Counts] = {}
        self._totals: dict[str, _Counts] = {}

    def record(self, endpoint: str, latency_ms: float, ok: bool) -> None:
        """Count one finished request (cheap: RAM only)."""
        latency = max(0.0, float(latency_ms or 0.0))
        hour = hour_start(self.clock())
        with self._lock:
            counts = self._pending.get(hour)
            if counts is None:
                if len(self._pending) >= MAX_PENDING_HOURS:
                    # Roll-ups have not run for a week: fold the oldest hour into the next
                    # rather than grow without bound.
                    oldest = min(self._pending)
                    spill = self._pending.pop(oldest)
                    self._pending.setdefault(min(self._pending, default=hour),
                                             _Counts()).merge(spill)
                counts = self._pending[hour] = _Counts()
            counts.add(endpoint, latency, ok)
            self._totals.setdefault(endpoint, _Counts()).add(endpoint, latency, ok)

    def totals(self) -> dict[str, dict]:
        """Counts since this process started, per endpoint (for /metrics and status)."""
        with self._lock:
            return {
                ep: {"requests": c.total, "failed": c.failed,
                     "average_latency_ms": c.latency_sum_ms / c.total if c.total else None}
                for ep, c in self._totals.items()
            }

    def roll_up(self) -> int:
        """Add everything counted since the last roll-up into the hourly and daily rows
        (one row per period, updated in place). Returns the number of rows written.
        On a store error the counts are kept for the next roll-up."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        per_period: dict[tuple[str, float], _Counts] = {}
        for hour, counts in pending.items():
            per_period.setdefault(("hourly", hour), _Counts()).merge(counts)
            per_period.setdefault(("daily", day_start(hour)), _Counts()).merge(counts)
        try:
            with self.db.transaction():
                for (period, start), counts in sorted(per_period.items()):
                    self._add_to_row(period, iso_utc(start), counts)
        except Exception:
            with self._lock:
                for hour, counts in pending.items():
                    self._pending.setdefault(hour, _Counts()).merge(counts)
            raise
        return len(per_period)

    def _add_to_row(self, period: str, stamp: str, delta: _Counts) -> None:
        where = {"period": period, "timestamp": stamp}
        row = self.db.search_one("request_stats", where) or {}
        old_total = int(row.get("total_requests") or 0)
        # The exact sum is kept beside the (rounded) average so repeated roll-ups don't
        # accumulate rounding error; rows written by others may lack it.
        old_sum = row.get("latency_sum_ms")
        if old_sum is None:
            old_avg = row.get("average_latency_ms")
            old_sum = float(old_avg) * old_total if old_avg is not None else 0.0
        latency_sum = float(old_sum) + delta.latency_sum_ms
        total = old_total + delta.total
        self.db.upsert("request_stats", {
            "timestamp": stamp,
            "period": period,
            "total_requests": total,
            "generate_requests": int(row.get("generate_requests") or 0) + delta.generate,
            "chat_requests": int(row.get("chat_requests") or 0) + delta.chat,
            "embedding_requests": int(row.get("embedding_requests") or 0) + delta.embedding,
            "failed_requests": int(row.get("failed_requests") or 0) + delta.failed,
            "average_latency_ms": round(latency_sum / total, 3) if total else None,
            "latency_sum_ms": latency_sum,
        }, where)

    def history(self, period: str = "hourly", limit: int = 48) -> list[dict]:
        """The newest ``limit`` rows of a period, oldest first."""
        rows = sorted(self.db.search("request_stats", {"period": period}),
                      key=lambda r: r["timestamp"])
        return [dict(r) for r in rows[-max(0, int(limit)):]] if limit else []

    def run_once(self) -> int:
        """The scheduled job: a roll-up that logs instead of raising."""
        try:
            return self.roll_up()
        except Exception:
            log.exception("request stats roll-up failed")
            return 0

    def add_job(self, scheduler: Any, interval_s: float = 60.0) -> None:
        """Register the roll-up on an APScheduler 3 scheduler (the proxy's shared one)."""
        scheduler.add_job(self.run_once, "interval", seconds=interval_s, id=JOB_ID, name=JOB_ID,
                          max_instances=1, coalesce=True,
                          misfire_grace_time=max(1, int(interval_s)), replace_existing=True)


def utc_hour(ts: float) -> datetime:
    """The UTC hour containing ``ts`` (convenience for callers and tests)."""
    return datetime.fromtimestamp(hour_start(ts), UTC)

"""Recent traffic in RAM, for the dashboard: a per-minute ring over the last hour and
the latest finished requests.

:class:`TrafficRecorder` is a finish listener of the queue
(``queue.add_finish_listener``): each finished request adds to its minute's bucket
(requests, failures, time to first token, generation speed) and goes to the front of a
bounded list of the latest requests. The front door tells it about admissions
(:meth:`TrafficRecorder.admitted`, :meth:`TrafficRecorder.rejected`: a full queue).

Everything is bounded: ``minutes`` buckets (one per minute, reused as the clock moves
on) and ``latest`` requests. Nothing is written to disk: a restart starts empty.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from olol.metrics import route_of


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Bucket:
    __slots__ = ("admitted", "failed", "minute", "rejected", "requests", "tps_n", "tps_sum",
                 "ttft_n", "ttft_sum")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.requests = self.failed = self.admitted = self.rejected = 0
        self.ttft_n = self.tps_n = 0
        self.ttft_sum = self.tps_sum = 0.0


class TrafficRecorder:
    """Per-minute figures of the last ``minutes`` minutes and the ``latest`` requests.

    :param clock: the queue's clock (seconds since the epoch): records' timestamps are
        on it.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, minutes: int = 60,
                 latest: int = 50) -> None:
        if minutes < 1 or latest < 1:
            raise ValueError("minutes and latest must be at least 1")
        self.clock = clock
        self.minutes = int(minutes)
        self._ring: list[_Bucket | None] = [None] * self.minutes
        self._latest: deque[dict[str, Any]] = deque(maxlen=int(latest))
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> _Bucket:
        # caller holds the lock
        minute = int(now // 60)
        slot = minute % self.minutes
        bucket = self._ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = self._ring[slot] = _Bucket(minute)
        return bucket

    # ------------------------------------------------------------------ feeding
    def admitted(self) -> None:
        """A request entered the queue."""
        with self._lock:
            self._bucket(self.clock()).admitted += 1

    def rejected(self) -> None:
        """A request was refused because the queue was full."""
        with self._lock:
            self._bucket(self.clock()).rejected += 1

    def request_finished(self, record: dict) -> None:
        """The queue's finish listener."""
        usage = record.get("usage") or {}
        enq = _num(record.get("enqueued_ts"))
        done = _num(record.get("completed_ts"))
        first = _num(usage.get("first_token_ts"))
        status = record.get("status") or "unknown"
        ttft = first - enq if first is not None and enq is not None else None
        out, eval_s = usage.get("completion_tokens"), _num(usage.get("eval_s"))
        tps = out / eval_s if isinstance(out, int) and out > 0 and eval_s else None
        row = {
            "id": record.get("id"),
            "model": record.get("model") or record.get("model_key"),
            "node": usage.get("node") or record.get("server_assigned"),
            "route": route_of(record),
            "status": status,
            "code": record.get("error_status"),
            "finished_ts": done,
            "queue_ms": _ms(_num(record.get("started_ts")), enq),
            "ttft_ms": round(max(0.0, ttft) * 1000.0, 1) if ttft is not None else None,
            "duration_ms": _ms(done, enq),
            "tokens_out": out if isinstance(out, int) else None,
            "tokens_per_s": round(tps, 1) if tps is not None else None,
        }
        with self._lock:
            bucket = self._bucket(done if done is not None else self.clock())
            bucket.requests += 1
            if status != "completed":
                bucket.failed += 1
            if ttft is not None:
                bucket.ttft_n += 1
                bucket.ttft_sum += max(0.0, ttft)
            if tps is not None:
                bucket.tps_n += 1
                bucket.tps_sum += tps
            self._latest.appendleft(row)

    # ------------------------------------------------------------------ reading
    def series(self, now: float | None = None) -> list[dict[str, Any]]:
        """One point per minute, oldest first, the current minute last: ``minute_ts``,
        ``requests``, ``failed``, ``rps``, ``ttft_ms`` (mean), ``tokens_per_s`` (mean),
        ``admitted``, ``rejected``; minutes without traffic have zeros and None means."""
        now = self.clock() if now is None else now
        current = int(now // 60)
        with self._lock:
            buckets = {b.minute: b for b in self._ring if b is not None}
            points = []
            for minute in range(current - self.minutes + 1, current + 1):
                b = buckets.get(minute)
                # the current minute is partial: its rate is over the seconds elapsed
                span = max(1.0, now - minute * 60) if minute == current else 60.0
                points.append({
                    "minute_ts": minute * 60,
                    "requests": b.requests if b else 0,
                    "failed": b.failed if b else 0,
                    "rps": round((b.requests if b else 0) / span, 3),
                    "ttft_ms": round(b.ttft_sum / b.ttft_n * 1000.0, 1) if b and b.ttft_n else None,
                    "tokens_per_s": round(b.tps_sum / b.tps_n, 1) if b and b.tps_n else None,
                    "admitted": b.admitted if b else 0,
                    "rejected": b.rejected if b else 0,
                })
        return points

    def latest(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The latest finished requests, newest first."""
        with self._lock:
            rows = list(self._latest)
        return rows[:limit] if limit is not None else rows


def _ms(end: float | None, start: float | None) -> float | None:
    if end is None or start is None:
        return None
    return round(max(0.0, end - start) * 1000.0, 1)

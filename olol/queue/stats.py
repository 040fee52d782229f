"""Recent finishes of dispatched requests: latency percentiles, throughput, Retry-After."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

THROUGHPUT_WINDOW_S = 300.0
RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60


@dataclass(frozen=True, slots=True)
class Finish:
    ts: float  # completed_ts
    model_key: str
    status: str
    wait_s: float  # started - enqueued
    run_s: float  # completed - started


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class FinishLog:
    """A bounded log of the latest finishes (not thread-safe; the queue's lock guards it)."""

    def __init__(self, maxlen: int = 5_000):
        self._log: deque[Finish] = deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._log)

    def clear(self) -> None:
        self._log.clear()

    def add(self, finish: Finish) -> None:
        self._log.append(finish)

    def since(self, cutoff: float, model_key: str | None = None) -> list[Finish]:
        out = []
        for f in reversed(self._log):
            if f.ts < cutoff:
                continue  # entries are near time order, not strictly: look at all
            if model_key is None or f.model_key == model_key:
                out.append(f)
        return out

    def summary(self, now: float) -> dict:
        completed = [f for f in self._log if f.status == "completed"]
        waits = [f.wait_s for f in completed]
        runs = [f.run_s for f in completed]
        recent = [f for f in completed if f.ts >= now - THROUGHPUT_WINDOW_S]
        return {
            "wait_time_s": _pcts(waits),
            "run_time_s": _pcts(runs),
            "completed_last_5m": len(recent),
            "throughput_per_min": len(recent) / (THROUGHPUT_WINDOW_S / 60.0),
        }

    def retry_after(self, now: float, slots: int, model_key: str | None = None) -> int:
        """Seconds until ``slots`` requests should have drained at the recent rate.

        Every finish of dispatched work frees a slot, whatever its status. With no
        finish in the window nothing is draining: answer the maximum.
        """
        recent = self.since(now - THROUGHPUT_WINDOW_S, model_key)
        if not recent:
            return RETRY_AFTER_MAX_S
        # Measure over the span actually observed (a fresh proxy has less than 5 min):
        # n finishes since the first of them are n - 1 intervals.
        span = min(THROUGHPUT_WINDOW_S, max(10.0, now - min(f.ts for f in recent)))
        rate = max(1, len(recent) - 1) / span
        seconds = math.ceil(max(1, slots) / rate)
        return max(RETRY_AFTER_MIN_S, min(RETRY_AFTER_MAX_S, seconds))


def _pcts(values: list[float]) -> dict:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
    }

"""What every part of ``ModelRegistry`` shares: errors, helpers and ``RegistryBase``.

:class:`RegistryBase` holds the registry's state (the cluster, the store, the clock,
the pull limits, the planner policy, the usage counters) and the small operations on
it that every other part uses: usage counting, pins, and whether a node counts as up.
The table synchronization (:mod:`olol.registry.sync`), the pull placement
(:mod:`olol.registry.placement`) and the public :class:`olol.registry.ModelRegistry`
(:mod:`olol.registry.core`) build on it, in that order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from olol.api.names import normalize_model_name
from olol.registry.plan import PlanPolicy
from olol.registry.pulls import PullOperation

TABLE = "models"
GB = 1_000_000_000


class LastCopyError(Exception):
    """Removing would delete the last live copy of a model in the cluster."""


class PinnedModelError(Exception):
    """The model is pinned: it is only removed when forced."""


class ModelNotFoundError(LookupError):
    """No node has the model."""


class RegistryBusyError(RuntimeError):
    """Too many pull operations are running."""


def _key(name: str) -> str:
    return normalize_model_name(name)


def _healthy(state: Any, now: float) -> bool:
    return bool(state.healthy) and not state.circuit_open(now)


def _capacity(state: Any) -> tuple[int | None, int | None, int | None]:
    """(free disk, total disk, memory that could hold a model) from the last status."""
    hw = state.hardware or {}
    disk, memory = hw.get("disk") or {}, hw.get("memory") or {}
    gpus = (hw.get("gpu") or {}).get("gpus") or []
    vram = sum(int(g.get("memory_total_bytes") or 0) for g in gpus)
    ram = memory.get("total_bytes")
    mem = max(vram, int(ram)) if ram is not None else (vram or None)
    free, total = disk.get("free_bytes"), disk.get("total_bytes")
    return (int(free) if free is not None else None, int(total) if total is not None else None,
            mem)


def _load(state: Any) -> float:
    return state.in_flight / max(1, state.parallel)


class RegistryBase:
    """The registry's state and the helpers its parts share.

    The constructor's parameters are documented on :class:`olol.registry.ModelRegistry`.
    """

    def __init__(self, cluster_manager: Any, db: Any, *, clock: Callable[[], float] = time.time,
                 copies: int = 1, pinned: Iterable[str] = (), pull_timeout_s: float = 3600.0,
                 max_parallel_pulls: int = 8, max_operations: int = 32,
                 status_timeout_s: float = 2.0, probe_timeout_s: float = 30.0,
                 policy: PlanPolicy | None = None) -> None:
        if copies < 1:
            raise ValueError("copies must be >= 1")
        self.cluster, self.db, self.clock = cluster_manager, db, clock
        self.copies = copies
        self.pinned = {_key(n) for n in pinned}
        self.pull_timeout_s = pull_timeout_s
        self.status_timeout_s = status_timeout_s
        self.probe_timeout_s = probe_timeout_s
        base = policy or PlanPolicy()
        self.policy = PlanPolicy(copies=copies, max_copies=max(base.max_copies, copies),
                                 hot_usage=base.hot_usage, idle_s=base.idle_s,
                                 busy_load=base.busy_load,
                                 headroom_fraction=base.headroom_fraction)
        self._slots = threading.BoundedSemaphore(max(1, max_parallel_pulls))
        self._max_operations = max(1, max_operations)
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._ops: dict[str, PullOperation] = {}
        self._usage: dict[str, dict] = {}
        self._down: set[str] = set()  # nodes whose last registry poll failed
        self._stop = threading.Event()

    # -- usage -----------------------------------------------------------------------

    def note_usage(self, model_key: str, node: str | None = None) -> None:
        """Count one finished request (RAM only; flushed by :meth:`synchronize_models`)."""
        try:
            key = _key(model_key)
        except ValueError:
            return
        now = self.clock()
        with self._lock:
            entry = self._usage.get(key)
            if entry is None:
                if len(self._usage) >= 10_000:
                    return  # bounded; the next flush empties it
                entry = self._usage[key] = {"count": 0, "last": now, "nodes": {}}
            entry["count"] += 1
            entry["last"] = now
            if node:
                entry["nodes"][node] = now

    def _up(self, state: Any, now: float) -> bool:
        """Healthy in the cluster and not found down by the registry's last poll of it."""
        with self._lock:
            if state.address in self._down:
                return False
        return _healthy(state, now)

    def _take_usage(self) -> dict[str, dict]:
        with self._lock:
            usage, self._usage = self._usage, {}
        return usage

    def _pending_usage(self, key: str) -> dict:
        with self._lock:
            entry = self._usage.get(key)
            return {"count": entry["count"], "last": entry["last"],
                    "nodes": dict(entry["nodes"])} if entry else {"count": 0, "last": None,
                                                                  "nodes": {}}

    def is_pinned(self, model_name: str, row: dict | None = None) -> bool:
        key = _key(model_name)
        if row is None:
            row = self.db.search_one(TABLE, {"name": key})
        return key in self.pinned or bool(row and row.get("pinned"))

    def set_pinned(self, model_name: str, pinned: bool = True) -> bool:
        """Pin (or unpin) a model in the table; False when the table has no such model."""
        return bool(self.db.update(TABLE, {"pinned": bool(pinned)}, {"name": _key(model_name)}))

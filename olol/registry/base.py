"""What every part of ``ModelRegistry`` shares: errors, helpers, and three small
collaborators.

* :class:`RegistryState`: the cluster, the clock, the limits, the planner policy, and
  which nodes the registry's last poll found down;
* :class:`UsageCounter`: requests counted in RAM between two flushes into the table;
* :class:`ModelTable`: the ``models`` table, read from the shared RAM view of the store
  (:class:`olol.store.sync.SyncManager`) and written through it.

The table synchronization (:class:`olol.registry.sync.TableSync`) and the pulls
(:class:`olol.registry.placement.PullPlacement`) are built on these, and
:class:`olol.registry.ModelRegistry` puts them together (composition, no inheritance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from olol.api.names import normalize_model_name
from olol.registry.plan import PlanPolicy
from olol.store.sync import SyncManager

TABLE = "models"
GB = 1_000_000_000
#: Models counted in RAM between two flushes at most (further ones wait for the flush).
MAX_USAGE_KEYS = 10_000


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


class RegistryState:
    """The registry's settings and the cluster it works on (see
    :class:`olol.registry.ModelRegistry` for the parameters)."""

    def __init__(self, cluster_manager: Any, *, clock: Callable[[], float] = time.time,
                 copies: int = 1, pull_timeout_s: float = 3600.0,
                 status_timeout_s: float = 2.0, probe_timeout_s: float = 30.0,
                 policy: PlanPolicy | None = None) -> None:
        if copies < 1:
            raise ValueError("copies must be >= 1")
        self.cluster, self.clock, self.copies = cluster_manager, clock, copies
        self.pull_timeout_s = pull_timeout_s
        self.status_timeout_s = status_timeout_s
        self.probe_timeout_s = probe_timeout_s
        base = policy or PlanPolicy()
        self.policy = PlanPolicy(copies=copies, max_copies=max(base.max_copies, copies),
                                 hot_usage=base.hot_usage, idle_s=base.idle_s,
                                 busy_load=base.busy_load,
                                 headroom_fraction=base.headroom_fraction)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._down: set[str] = set()  # nodes whose last registry poll failed

    def mark(self, address: str, up: bool) -> None:
        """Record the outcome of the registry's own poll of a node."""
        with self._lock:
            if up:
                self._down.discard(address)
            else:
                self._down.add(address)

    def up(self, state: Any, now: float) -> bool:
        """Healthy in the cluster and not found down by the registry's last poll of it."""
        with self._lock:
            if state.address in self._down:
                return False
        return _healthy(state, now)

    def live(self, now: float) -> list[Any]:
        """Snapshots of the members that are up (see :meth:`up`)."""
        return [s for s in self.cluster.list_nodes() if self.up(s, now)]


class UsageCounter:
    """Finished requests per model (and per node), counted in RAM until the next
    flush into the ``models`` table; bounded to :data:`MAX_USAGE_KEYS` models."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, dict] = {}

    def note(self, model_key: str, node: str | None = None) -> None:
        try:
            key = _key(model_key)
        except ValueError:
            return
        now = self.clock()
        with self._lock:
            entry = self._usage.get(key)
            if entry is None:
                if len(self._usage) >= MAX_USAGE_KEYS:
                    return  # bounded; the next flush empties it
                entry = self._usage[key] = {"count": 0, "last": now, "nodes": {}}
            entry["count"] += 1
            entry["last"] = now
            if node:
                entry["nodes"][node] = now

    def take(self) -> dict[str, dict]:
        """Everything counted so far (the counter starts again from zero)."""
        with self._lock:
            usage, self._usage = self._usage, {}
        return usage

    def restore(self, usage: dict[str, dict]) -> None:
        """Put back counts taken by a flush that failed (kept for the next one)."""
        with self._lock:
            for key, entry in usage.items():
                cur = self._usage.setdefault(key, {"count": 0, "last": entry["last"],
                                                   "nodes": {}})
                cur["count"] += entry["count"]
                cur["last"] = max(cur["last"], entry["last"])
                for node, ts in entry["nodes"].items():
                    cur["nodes"][node] = max(cur["nodes"].get(node, 0.0), ts)

    def pending(self, key: str) -> dict:
        """What is counted for ``key`` since the last flush."""
        with self._lock:
            entry = self._usage.get(key)
            if entry is None:
                return {"count": 0, "last": None, "nodes": {}}
            return {"count": entry["count"], "last": entry["last"],
                    "nodes": dict(entry["nodes"])}


class ModelTable:
    """The ``models`` table through the shared RAM view of the store.

    :param sync_manager: the :class:`~olol.store.sync.SyncManager` (reads come from its
        RAM, writes go to the store first, then to it).
    :param pinned: model names pinned by configuration (the rows' ``pinned`` adds to it).
    """

    def __init__(self, sync_manager: SyncManager, pinned: Iterable[str] = ()) -> None:
        self.sync = sync_manager
        self.pinned = {_key(n) for n in pinned}

    def rows(self) -> dict[str, dict]:
        """Every row by model key (copies)."""
        return {r["name"]: _strip(r) for r in self.sync.read_from_ram(TABLE)}

    def row(self, key: str) -> dict | None:
        found = self.sync.read_one(TABLE, {"name": key})
        return _strip(found) if found is not None else None

    def reconcile(self) -> dict:
        """Re-derive the RAM view from the store (the store wins)."""
        return self.sync.force_sync(TABLE)[TABLE]

    def write(self, docs: dict[str, dict | None]) -> None:
        """Upsert (or, for None, remove) rows by model key, in one transaction."""
        with self.sync.transaction((TABLE,)):
            for key, doc in docs.items():
                if doc is None:
                    self.sync.remove_where_and_sync(TABLE, {"name": key})
                else:
                    self.sync.upsert_and_sync(TABLE, doc, {"name": key})

    def is_pinned(self, model_name: str, row: dict | None = None) -> bool:
        key = _key(model_name)
        if row is None:
            row = self.row(key)
        return key in self.pinned or bool(row and row.get("pinned"))

    def set_pinned(self, model_name: str, pinned: bool = True) -> bool:
        """Pin (or unpin) a model in the table; False when the table has no such model."""
        return bool(self.sync.update_and_sync(TABLE, {"pinned": bool(pinned)},
                                              {"name": _key(model_name)}))


def _strip(row: dict) -> dict:
    row.pop("doc_id", None)
    return row

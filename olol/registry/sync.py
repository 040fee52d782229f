"""Rebuilding the ``models`` table from what the nodes list (``TableSync``).

Every node is polled in parallel (bounded); a node that answers contributes its
listing, one that does not keeps its old entries, marked stale. Usage counted in RAM
since the last flush is folded into the rows in the same write, and kept for the next
flush if the write fails. Each row remembers when every copy appeared on its node
(``node_first_seen``, seconds since the epoch): the planner's idle time counts from
there, never from the epoch.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from olol.node_state import describe_error, status_problem
from olol.registry.base import GB, ModelTable, RegistryState, UsageCounter
from olol.store.database import iso_utc

log = logging.getLogger(__name__)


class TableSync:
    """The registry's table synchronization (see :class:`olol.registry.ModelRegistry`).

    :param state: the cluster, the clock, the limits.
    :param usage: the usage counted since the last flush.
    :param table: the ``models`` table.
    """

    def __init__(self, state: RegistryState, usage: UsageCounter, table: ModelTable) -> None:
        self.state, self.usage, self.table = state, usage, table
        self._lock = threading.Lock()  # one rebuild at a time

    # -- synchronization -------------------------------------------------------------

    def poll(self, address: str) -> dict[str, dict] | None:
        """Poll one node; its listing (model key -> tag entry), or None when it is down.

        Success updates the cluster's state; a failure is not counted against the node
        (the health monitor owns failure thresholds).
        """
        cluster = self.state.cluster
        try:
            client = cluster.client(address)
            start = time.monotonic()
            status = client.status(timeout=self.state.status_timeout_s)
            problem = status_problem(status)
            if not problem and "/api/tags" in str((status.get("ollama") or {}).get("error")):
                # The listing itself failed: an empty list would erase the node's models.
                problem = f"model listing failed: {status['ollama']['error']}"
            if problem:
                raise RuntimeError(problem)
        except Exception as exc:  # noqa: BLE001 - any failure means "down for this sync"
            reason = describe_error(exc)
            log.debug("registry poll of %s failed: %s", address, reason)
            self.state.mark(address, up=False)
            cluster.mark_suspect(address, f"model registry poll failed: {reason}")
            return None
        state = cluster.record_poll(address, status, (time.monotonic() - start) * 1000.0)
        if state is None:
            return None
        self.state.mark(address, up=True)
        try:
            cluster.persist(address)
        except Exception:  # noqa: BLE001 - the servers row is the health job's concern
            log.debug("persisting %s failed", address, exc_info=True)
        return dict(state.available_models)

    def poll_many(self, addresses: list[str]) -> dict[str, dict | None]:
        if not addresses:
            return {}
        workers = min(8, len(addresses))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="olol-registry-poll") as ex:
            results = list(ex.map(self.poll, addresses))
        return dict(zip(addresses, results, strict=True))

    def synchronize_models(self, refresh: bool = True) -> dict:
        """Rebuild the ``models`` table from what each node lists (see
        :meth:`olol.registry.ModelRegistry.synchronize_models`)."""
        nodes = [s.address for s in self.state.cluster.list_nodes()]
        listings = self.poll_many(nodes) if refresh else {}
        return self.rebuild(listings)

    def rebuild(self, listings: dict[str, dict | None]) -> dict:
        """``listings``: fresh results by node (None = down); other members use their last
        state (up if healthy)."""
        now = self.state.clock()
        states = {s.address: s for s in self.state.cluster.list_nodes()}
        for address, state in states.items():
            if address not in listings:
                listings[address] = dict(state.available_models) \
                    if self.state.up(state, now) else None
        with self._lock:
            self.table.reconcile()  # the store wins over the RAM view
            usage = self.usage.take()
            try:
                return self._write_table(listings, states, usage, now)
            except BaseException:
                self.usage.restore(usage)  # keep the counts for the next flush
                raise

    def _write_table(self, listings: dict[str, dict | None], states: dict[str, Any],
                     usage: dict[str, dict], now: float) -> dict:
        rows = self.table.rows()
        up = sorted(a for a, v in listings.items() if v is not None)
        down = sorted(a for a, v in listings.items() if v is None)
        servers: dict[str, set[str]] = {}
        info: dict[str, dict] = {}
        for address in up:
            for key, entry in (listings[address] or {}).items():
                servers.setdefault(key, set()).add(address)
                info.setdefault(key, entry)
        stale: dict[str, set[str]] = {}
        for address in down:
            known = set(states[address].available_models) if address in states else set()
            known |= {k for k, r in rows.items()
                      if address in (r.get("servers") or []) + (r.get("stale_servers") or [])}
            for key in known:
                stale.setdefault(key, set()).add(address)
        added, removed, stale_pairs = [], [], []
        docs: dict[str, dict | None] = {}
        for key in sorted(set(rows) | set(servers) | set(stale) | set(usage)):
            row = rows.get(key)
            live = servers.get(key, set())
            old_stale = stale.get(key, set()) - live
            before = set(row.get("servers") or []) | set(row.get("stale_servers") or []) \
                if row else set()
            if not live and not old_stale:
                if row is not None:
                    removed += [[key, a] for a in sorted(before)]
                    docs[key] = None
                continue
            added += [[key, a] for a in sorted(live - set((row or {}).get("servers") or []))]
            removed += [[key, a] for a in sorted(before - live - old_stale)]
            stale_pairs += [[key, a] for a in sorted(old_stale)]
            docs[key] = self.row(key, row, info.get(key), sorted(live), sorted(old_stale),
                                 usage.get(key), now)
        self.table.write(docs)
        return {"models": sum(1 for d in docs.values() if d is not None), "nodes_up": up,
                "nodes_down": down, "added": added, "removed": removed, "stale": stale_pairs}

    def row(self, key: str, row: dict | None, entry: dict | None, live: list[str],
             stale: list[str], usage: dict | None, now: float) -> dict:
        row = dict(row or {})
        doc: dict[str, Any] = {
            "name": key,
            "display_name": row.get("display_name") or key,
            "servers": live,
            "stale_servers": stale,
            "first_seen": row.get("first_seen") or iso_utc(now),
            "usage_count": int(row.get("usage_count") or 0),
            "last_used": row.get("last_used"),
            "last_used_ts": row.get("last_used_ts"),
            "node_last_used": dict(row.get("node_last_used") or {}),
            "node_first_seen": _first_seen(row, live + stale, now),
            "pinned": bool(row.get("pinned")) or key in self.table.pinned,
        }
        for field in ("size", "size_gb", "parameter_count", "quantization", "digest", "family"):
            doc[field] = row.get(field)
        if entry is not None:
            details = entry.get("details") or {}
            size = int(entry.get("size") or 0) or None
            doc.update({
                "display_name": entry.get("name") or doc["display_name"],
                "size": size, "size_gb": round(size / GB, 3) if size else None,
                "parameter_count": details.get("parameter_size") or None,
                "quantization": details.get("quantization_level") or None,
                "digest": entry.get("digest") or None,
                "family": details.get("family") or None,
            })
        if usage:
            doc["usage_count"] += usage["count"]
            doc["last_used_ts"] = max(doc["last_used_ts"] or 0.0, usage["last"])
            doc["last_used"] = iso_utc(doc["last_used_ts"])
            for node, ts in usage["nodes"].items():
                doc["node_last_used"][node] = max(doc["node_last_used"].get(node, 0.0), ts)
        return doc


def _first_seen(row: dict, nodes: list[str], now: float) -> dict[str, float]:
    """When each copy appeared on its node: kept while the node holds it (live or
    stale), ``now`` for a copy seen for the first time, dropped once it is gone."""
    known = row.get("node_first_seen") or {}
    out = {}
    for node in nodes:
        ts = known.get(node)
        out[node] = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) \
            else now
    return out

"""``ModelRegistry``: where every model lives, and cluster-wide pull/remove/copy/plan.

The ``models`` table is rebuilt from what nodes *list* (never from what was asked of
them): a model is recorded on a node only once that node's listing shows it; a node
that cannot be polled keeps its entries, marked stale, instead of losing them.
Usage counters are kept in RAM by :meth:`ModelRegistry.note_usage` (cheap, called per
request) and flushed into the table by :meth:`ModelRegistry.synchronize_models`.

Lock order: the registry never calls the cluster manager while holding the store's
transaction, and never holds its own lock while calling a node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from olol.api.names import normalize_model_name
from olol.cluster import UnknownNodeError, describe_error, status_problem
from olol.registry.plan import PlanModel, PlanNode, PlanPolicy, fits, make_plan
from olol.registry.pulls import PullOperation
from olol.store.database import iso_utc

log = logging.getLogger(__name__)

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


class ModelRegistry:
    """Cluster-wide model management over a ``ClusterManager`` and the store.

    :param cluster_manager: the cluster (nodes, their last status, their clients).
    :param db: the store (``models`` table).
    :param clock: seconds since the epoch (usage, first seen, the plan's idle rule).
    :param copies: how many nodes a pull without targets places a model on, and the
        minimum the planner keeps.
    :param pinned: model names never removed unless forced (the table's ``pinned``
        field adds to these).
    :param pull_timeout_s: deadline of one node's pull.
    :param max_parallel_pulls: node pulls running at once (others wait).
    :param max_operations: pull operations in progress at once.
    :param status_timeout_s: deadline of one node status poll.
    :param policy: planner thresholds (``copies`` is taken from ``copies``).
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

    # -- synchronization -------------------------------------------------------------

    def _poll(self, address: str) -> dict[str, dict] | None:
        """Poll one node; its listing (model key -> tag entry), or None when it is down.

        Success updates the cluster's state; a failure is not counted against the node
        (the health monitor owns failure thresholds).
        """
        try:
            client = self.cluster.client(address)
            start = time.monotonic()
            status = client.status(timeout=self.status_timeout_s)
            problem = status_problem(status)
            if not problem and "/api/tags" in str((status.get("ollama") or {}).get("error")):
                # The listing itself failed: an empty list would erase the node's models.
                problem = f"model listing failed: {status['ollama']['error']}"
            if problem:
                raise RuntimeError(problem)
        except Exception as exc:  # noqa: BLE001 - any failure means "down for this sync"
            reason = describe_error(exc)
            log.debug("registry poll of %s failed: %s", address, reason)
            with self._lock:
                self._down.add(address)
            self.cluster.mark_suspect(address, f"model registry poll failed: {reason}")
            return None
        state = self.cluster.record_poll(address, status, (time.monotonic() - start) * 1000.0)
        if state is None:
            return None
        with self._lock:
            self._down.discard(address)
        try:
            self.cluster.persist(address)
        except Exception:  # noqa: BLE001 - the servers row is the health job's concern
            log.debug("persisting %s failed", address, exc_info=True)
        return dict(state.available_models)

    def _poll_many(self, addresses: list[str]) -> dict[str, dict | None]:
        if not addresses:
            return {}
        workers = min(8, len(addresses))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="olol-registry-poll") as ex:
            results = list(ex.map(self._poll, addresses))
        return dict(zip(addresses, results, strict=True))

    def synchronize_models(self, refresh: bool = True) -> dict:
        """Rebuild the ``models`` table from what each node lists.

        :param refresh: poll every node now (default); False uses the last known state.
        :returns: ``{"models", "nodes_up", "nodes_down", "added", "removed", "stale"}``
            where added/removed/stale are ``[model, node]`` pairs.
        """
        nodes = [s.address for s in self.cluster.list_nodes()]
        listings = self._poll_many(nodes) if refresh else {}
        return self._rebuild(listings)

    def _rebuild(self, listings: dict[str, dict | None]) -> dict:
        """``listings``: fresh results by node (None = down); other members use their last
        state (up if healthy)."""
        now = self.clock()
        states = {s.address: s for s in self.cluster.list_nodes()}
        for address, state in states.items():
            if address not in listings:
                listings[address] = dict(state.available_models) if self._up(state, now) else None
        with self._sync_lock:
            usage = self._take_usage()
            try:
                return self._write_table(listings, states, usage, now)
            except BaseException:
                with self._lock:  # keep the counts for the next flush
                    for key, entry in usage.items():
                        cur = self._usage.setdefault(key, {"count": 0, "last": entry["last"],
                                                           "nodes": {}})
                        cur["count"] += entry["count"]
                        cur["nodes"].update(entry["nodes"])
                raise

    def _write_table(self, listings: dict[str, dict | None], states: dict[str, Any],
                     usage: dict[str, dict], now: float) -> dict:
        rows = {r["name"]: r for r in self.db.all(TABLE)}
        up = sorted(a for a, v in listings.items() if v is not None)
        down = sorted(a for a, v in listings.items() if v is None)
        servers: dict[str, set[str]] = {}
        info: dict[str, dict] = {}
        for address in up:
            for key, entry in listings[address].items():
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
            docs[key] = self._row(key, row, info.get(key), sorted(live), sorted(old_stale),
                                  usage.get(key), now)
        with self.db.transaction():
            for key, doc in docs.items():
                if doc is None:
                    self.db.remove(TABLE, {"name": key})
                else:
                    self.db.upsert(TABLE, doc, {"name": key})
        return {"models": sum(1 for d in docs.values() if d is not None), "nodes_up": up,
                "nodes_down": down, "added": added, "removed": removed, "stale": stale_pairs}

    def _row(self, key: str, row: dict | None, entry: dict | None, live: list[str],
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
            "pinned": bool(row.get("pinned")) or key in self.pinned,
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

    # -- status ----------------------------------------------------------------------

    def active_pulls(self) -> list[dict]:
        with self._lock:
            ops = [op for op in self._ops.values() if not op.done]
        return [op.summary() for op in sorted(ops, key=lambda o: o.started_at)]

    def get_model_status(self, model_name: str | None = None) -> list[dict]:
        """Per model: where it is present, loaded, being pulled, stale; size and usage."""
        only = _key(model_name) if model_name is not None else None
        now = self.clock()
        rows = {r["name"]: r for r in self.db.all(TABLE)}
        states = self.cluster.list_nodes()
        live = [s for s in states if self._up(s, now)]
        with self._lock:
            pulling: dict[str, set[str]] = {}
            for op in self._ops.values():
                if not op.done:
                    pulling.setdefault(op.model, set()).update(op.pending_nodes())
        keys = set(rows) | set(pulling)
        for s in live:
            keys |= set(s.available_models)
        out = []
        for key in sorted(keys):
            if only is not None and key != only:
                continue
            row = rows.get(key) or {}
            present = sorted(s.address for s in live if key in s.available_models)
            entry = next((s.available_models[key] for s in live if key in s.available_models),
                         None)
            doc = self._row(key, row, entry, present, [], None, now)
            pending = self._pending_usage(key)
            up_addresses = {s.address for s in live}
            stale = set(row.get("stale_servers") or []) | {
                a for a in row.get("servers") or [] if a not in up_addresses}
            last_ts = max(doc["last_used_ts"] or 0.0, pending["last"] or 0.0) or None
            out.append({
                "name": key, "display_name": doc["display_name"], "nodes": present,
                "loaded": sorted(s.address for s in live if key in s.loaded_models),
                "pulling": sorted(pulling.get(key, ())),
                "stale": sorted(stale - set(present)),
                "size": doc["size"], "size_gb": doc["size_gb"],
                "parameter_count": doc["parameter_count"], "quantization": doc["quantization"],
                "family": doc["family"], "digest": doc["digest"],
                "usage_count": doc["usage_count"] + pending["count"],
                "last_used": iso_utc(last_ts) if last_ts else None,
                "first_seen": row.get("first_seen"),
                "pinned": self.is_pinned(key, row),
            })
        return out

    # -- pull ------------------------------------------------------------------------

    def _known_size(self, key: str) -> int | None:
        for state in self.cluster.list_nodes():
            entry = state.available_models.get(key)
            if entry and entry.get("size"):
                return int(entry["size"])
        row = self.db.search_one(TABLE, {"name": key})
        return int(row["size"]) if row and row.get("size") else None

    def _plan_node(self, state: Any) -> PlanNode:
        free, total, mem = _capacity(state)
        return PlanNode(state.address, True, free, total, mem, _load(state))

    def _placement(self, key: str, size: int | None) -> tuple[list[str], list[PlanNode]]:
        """(nodes that already have it, candidates ranked for a new copy)."""
        usable = self.cluster.healthy_nodes()
        holders = [s.address for s in usable if key in s.available_models]
        nodes = [self._plan_node(s) for s in usable if s.address not in holders]
        if size is None:
            ranked = [n for n in nodes if (n.disk_free or 0) > 0]
            ranked.sort(key=lambda n: (-(n.disk_free or 0), round(n.load, 2), n.address))
        else:
            ranked = [n for n in nodes if fits(n, size, n.disk_free, 0.0)]
            ranked.sort(key=lambda n: (round(n.load, 2), -(n.disk_free or 0), n.address))
        return holders, ranked

    def pull_model(self, model_name: str, target_nodes: Iterable[str] | None = None, *,
                   insecure: bool = False) -> PullOperation:
        """Pull a model on ``target_nodes`` or, without targets, where it fits.

        Without targets: every live node that has it (an update) plus the best-fitting
        nodes up to ``copies``. A pull of a model already being pulled on the same (or
        a superset of the) nodes returns the running operation. A pull nowhere possible
        returns an operation that has already ended with an error record.

        :raises InvalidModelName: bad name. :raises UnknownNodeError: a target is not a
            member. :raises RegistryBusyError: too many operations running.
        """
        key = _key(model_name)
        targets = None
        if target_nodes is not None:
            targets = list(dict.fromkeys(str(a).strip() for a in target_nodes))
            for address in targets:
                if self.cluster.node(address) is None:
                    raise UnknownNodeError(address)
        with self._lock:
            for op in self._ops.values():
                if op.model == key and not op.done and (
                        targets is None or set(targets) <= set(op.nodes)):
                    return op
            if sum(1 for op in self._ops.values() if not op.done) >= self._max_operations:
                raise RegistryBusyError("too many model pulls in progress")
        probe: tuple[str, Any, list[dict]] | None = None
        size = self._known_size(key)
        if targets is None:
            holders, ranked = self._placement(key, size)
            need = max(0, self.copies - len(holders))
            if need and size is None and ranked:
                probe = self._probe(ranked[0].address, model_name, insecure)
                size = probe[3] if probe else None
                if probe is not None and size is not None and not fits(
                        ranked[0], size, ranked[0].disk_free, 0.0):
                    probe[1].cancel()
                    probe = None
                    ranked = []
                elif size is not None:
                    _, ranked = self._placement(key, size)
                probe = probe[:3] if probe else None
            targets = holders + [n.address for n in ranked[:need]]
        op = PullOperation(key, model_name, targets, clock=self.clock)
        with self._lock:
            self._ops = {k: o for k, o in self._ops.items() if not o.done}
            self._ops[op.id] = op
        op.start_record(size)
        if not targets:
            if probe is not None:
                probe[1].cancel()
            op.finish(f"no node has room for model {model_name}"
                      + (f" ({size} bytes)" if size else ""))
            return op
        for address in targets:
            stream, first = (probe[1], probe[2]) if probe and probe[0] == address else (None, [])
            t = threading.Thread(target=self._pull_node, args=(op, address, stream, first,
                                                               insecure),
                                 name=f"olol-pull-{op.id[:8]}-{address}", daemon=True)
            op._threads.append(t)
        coordinator = threading.Thread(target=self._coordinate, args=(op,),
                                       name=f"olol-pull-{op.id[:8]}", daemon=True)
        for t in op._threads:
            t.start()
        coordinator.start()
        return op

    def _probe(self, address: str, name: str, insecure: bool):
        """Open the pull on the best node and read until the first layer total arrives."""
        try:
            stream = self.cluster.client(address).pull(
                {"model": name, "stream": True, "insecure": insecure},
                timeout=self.pull_timeout_s)
            first: list[dict] = []
            deadline = time.monotonic() + self.probe_timeout_s
            for record in stream:
                first.append(record)
                if record.get("total") or "error" in record or time.monotonic() > deadline:
                    total = int(record.get("total") or 0) or None
                    return address, stream, first, total
            return address, stream, first, None
        except Exception as exc:  # noqa: BLE001 - the node thread will report it
            log.debug("probe pull on %s failed: %s", address, describe_error(exc))
            return None

    def _pull_node(self, op: PullOperation, address: str, stream: Any, first: list[dict],
                   insecure: bool) -> None:
        error: str | None = "pull cancelled"
        acquired = False
        try:
            while not op.stop_event.is_set() and not self._stop.is_set():
                if self._slots.acquire(timeout=0.5):
                    acquired = True
                    break
            if not acquired:
                if stream is not None:
                    stream.cancel()
                return
            if stream is None:
                stream = self.cluster.client(address).pull(
                    {"model": op.name, "stream": True, "insecure": insecure},
                    timeout=self.pull_timeout_s)
            op.register_stream(address, stream)
            error = "pull stream ended before success"
            for record in _chain(first, stream):
                if "error" in record:
                    error = str(record["error"])
                    break
                op.publish(address, record)
                if record.get("status") == "success":
                    error = None
        except Exception as exc:  # noqa: BLE001 - a node failure is that node's outcome
            error = getattr(exc, "message", None) or describe_error(exc)
        finally:
            if acquired:
                self._slots.release()
            op.node_finished(address, error)

    def _coordinate(self, op: PullOperation) -> None:
        deadline = time.monotonic() + self.pull_timeout_s + 30.0
        while not op.join(1.0):
            if time.monotonic() > deadline or self._stop.is_set():
                op.cancel()
                op.join(5.0)
                break
        outcome = op.outcome()
        try:
            # Record the model only where the node now lists it.
            self._rebuild(self._poll_many(sorted(outcome)))
        except Exception:  # noqa: BLE001 - the table is rebuilt again by the sync job
            log.exception("registry update after pull %s failed", op.id)
        op.finish()

    # -- remove / copy ---------------------------------------------------------------

    def remove_model(self, model_name: str, target_nodes: Iterable[str] | None = None, *,
                     force: bool = False) -> dict:
        """Delete a model from ``target_nodes`` (default: every live node that has it).

        :returns: ``{node: {"status": "deleted"} | {"error": msg}}``.
        :raises ModelNotFoundError: no live node has it and no target was given.
        :raises PinnedModelError: pinned and not ``force``.
        :raises LastCopyError: it would leave no live copy and not ``force``.
        """
        key = _key(model_name)
        now = self.clock()
        live = [s for s in self.cluster.list_nodes() if self._up(s, now)]
        holders = [s.address for s in live if key in s.available_models]
        targets = holders if target_nodes is None else list(dict.fromkeys(target_nodes))
        if not targets:
            raise ModelNotFoundError(f"model '{model_name}' not found")
        for address in targets:
            if self.cluster.node(address) is None:
                raise UnknownNodeError(address)
        if not force:
            if self.is_pinned(key):
                raise PinnedModelError(f"model {model_name} is pinned; use force to remove it")
            if holders and not set(holders) - set(targets):
                raise LastCopyError(
                    f"removing {model_name} from {', '.join(targets)} would delete its last "
                    "copy in the cluster; use force to remove it anyway")
        results: dict[str, dict] = {}
        for address in targets:
            try:
                self.cluster.client(address).delete({"model": model_name})
                results[address] = {"status": "deleted"}
            except Exception as exc:  # noqa: BLE001 - reported per node
                results[address] = {"error": getattr(exc, "message", None)
                                    or describe_error(exc)}
        self._rebuild(self._poll_many(targets))
        return results

    def copy_model(self, source: str, destination: str,
                   target_nodes: Iterable[str] | None = None) -> dict:
        """Copy ``source`` to ``destination`` on every live node holding the source (or on
        ``target_nodes``); ``{node: {"status": "copied"} | {"error": msg}}``.

        :raises ModelNotFoundError: no live node has the source.
        """
        key, _ = _key(source), _key(destination)
        now = self.clock()
        if target_nodes is None:
            targets = [s.address for s in self.cluster.list_nodes()
                       if self._up(s, now) and key in s.available_models]
        else:
            targets = list(dict.fromkeys(target_nodes))
        if not targets:
            raise ModelNotFoundError(f"model '{source}' not found")
        results: dict[str, dict] = {}
        for address in targets:
            try:
                self.cluster.client(address).copy({"source": source, "destination": destination})
                results[address] = {"status": "copied"}
            except Exception as exc:  # noqa: BLE001 - reported per node
                results[address] = {"error": getattr(exc, "message", None)
                                    or describe_error(exc)}
        self._rebuild(self._poll_many(targets))
        return results

    # -- planning --------------------------------------------------------------------

    def plan_inputs(self) -> tuple[list[PlanModel], list[PlanNode]]:
        """The planner's snapshot of the cluster (last known node states + table)."""
        now = self.clock()
        rows = {r["name"]: r for r in self.db.all(TABLE)}
        states = self.cluster.list_nodes()
        usable = {s.address for s in self.cluster.healthy_nodes()}
        nodes = [PlanNode(s.address, s.address in usable, *_capacity(s), load=_load(s))
                 for s in states]
        with self._lock:
            pulling: dict[str, set[str]] = {}
            for op in self._ops.values():
                if not op.done:
                    pulling.setdefault(op.model, set()).update(op.pending_nodes())
        keys = set(rows)
        for s in states:
            if self._up(s, now):
                keys |= set(s.available_models)
        models = []
        for key in sorted(keys):
            row = rows.get(key) or {}
            pending = self._pending_usage(key)
            holders = sorted(s.address for s in states if self._up(s, now)
                             and key in s.available_models)
            size = row.get("size") or next(
                (int(s.available_models[key].get("size") or 0) or None for s in states
                 if key in s.available_models), None)
            node_ts = dict(row.get("node_last_used") or {})
            for node, ts in pending["nodes"].items():
                node_ts[node] = max(node_ts.get(node, 0.0), ts)
            last = max(row.get("last_used_ts") or 0.0, pending["last"] or 0.0) or None
            models.append(PlanModel(
                name=key, size=size, holders=holders,
                loaded_on=sorted(s.address for s in states if key in s.loaded_models),
                pulling=sorted(pulling.get(key, ())),
                stale=sorted(row.get("stale_servers") or []),
                usage_count=int(row.get("usage_count") or 0) + pending["count"],
                last_used_ts=last, node_last_used_ts=node_ts,
                pinned=self.is_pinned(key, row)))
        return models, nodes

    def optimize_model_distribution(self) -> dict:
        """A plan of copies to add and remove, with reasons; changes nothing."""
        models, nodes = self.plan_inputs()
        return make_plan(models, nodes, self.policy, self.clock())

    def apply(self, plan: dict) -> dict:
        """Run an approved plan: adds first (pulls), then removes, each re-checked now.

        :returns: ``{"results": [action + {"result": "done"|"skipped"|"failed",
            "detail"}], "done": n, "skipped": n, "failed": n}``.
        """
        actions = [a for a in plan.get("actions") or [] if isinstance(a, dict)]
        adds = [a for a in actions if a.get("action") == "add"]
        removes = [a for a in actions if a.get("action") == "remove"]
        results = []
        self.synchronize_models()
        ops = []
        for action in adds:
            problem = self._check_add(action)
            if problem:
                results.append({**action, "result": "skipped", "detail": problem})
                continue
            ops.append((action, self.pull_model(action["model"], [action["node"]])))
        for action, op in ops:
            outcome = op.wait(self.pull_timeout_s).get(action["node"], {})
            ok = outcome.get("status") == "success"
            results.append({**action, "result": "done" if ok else "failed",
                            "detail": "pulled" if ok else outcome.get("error", "pending")})
        if removes:
            self.synchronize_models()
        for action in removes:
            problem = self._check_remove(action)
            if problem:
                results.append({**action, "result": "skipped", "detail": problem})
                continue
            out = self.remove_model(action["model"], [action["node"]])
            res = out.get(action["node"], {})
            results.append({**action, "result": "done" if "error" not in res else "failed",
                            "detail": res.get("error", "deleted")})
        counts = {k: sum(1 for r in results if r["result"] == k)
                  for k in ("done", "skipped", "failed")}
        return {"results": results, **counts}

    def _check_add(self, action: dict) -> str | None:
        try:
            key = _key(action.get("model", ""))
        except ValueError:
            return "invalid model name"
        state = next((s for s in self.cluster.healthy_nodes()
                      if s.address == action.get("node")), None)
        if state is None:
            return "node not usable now"
        if key in state.available_models:
            return "node already has it"
        size = self._known_size(key)
        node = self._plan_node(state)
        if size is None or not fits(node, size, node.disk_free, self.policy.headroom_fraction):
            return "does not fit on the node now"
        return None

    def _check_remove(self, action: dict) -> str | None:
        try:
            key = _key(action.get("model", ""))
        except ValueError:
            return "invalid model name"
        if self.is_pinned(key):
            return "model is pinned"
        now = self.clock()
        holders = {s.address for s in self.cluster.list_nodes()
                   if self._up(s, now) and key in s.available_models}
        if action.get("node") not in holders:
            return "node does not have it"
        if len(holders - {action["node"]}) < max(1, self.copies):
            return "would go below the minimum copies (never removes the last copy)"
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running pulls and wait for their threads (bounded)."""
        self._stop.set()
        with self._lock:
            ops = list(self._ops.values())
        for op in ops:
            op.cancel()
        deadline = time.monotonic() + timeout
        for op in ops:
            op.join(max(0.0, deadline - time.monotonic()))


def _chain(first: list[dict], stream: Any):
    yield from first
    yield from stream

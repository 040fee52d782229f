"""Cluster-wide pulls for the registry: where a copy goes and the threads that pull it.

Every node pull is a ``RemoteModelCommand("pull")`` on the node's agent (through
:meth:`olol.rpc.client.NodeClient.pull`), the coordinator's one path for model commands.
:class:`PullPlacement` picks target nodes (every live holder plus the best-fitting
nodes up to ``copies``, probing the pull for the model's size when it is unknown),
then runs one named thread per target node, bounded by the registry's semaphore, and
a coordinator thread that records the outcome in the ``models`` table. The progress
stream itself is :class:`olol.registry.pulls.PullOperation`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from olol.cluster import UnknownNodeError
from olol.node_state import describe_error
from olol.registry.base import (
    ModelTable,
    RegistryBusyError,
    RegistryState,
    _capacity,
    _key,
    _load,
)
from olol.registry.plan import PlanNode, fits
from olol.registry.pulls import PullOperation
from olol.registry.sync import TableSync

log = logging.getLogger(__name__)
#: the ``config`` rows through which proxies on one shared store show their pulls
PULL_KEY_PREFIX = "pull."


class PullPlacement:
    """The registry's pull operations (see :class:`olol.registry.ModelRegistry`).

    :param state: the cluster, the clock, the limits.
    :param table: the ``models`` table (known sizes).
    :param table_sync: rebuilds the table where a pull ended.
    :param max_parallel_pulls: node pulls running at once (others wait).
    :param max_operations: pull operations in progress at once.
    """

    def __init__(self, state: RegistryState, table: ModelTable, table_sync: TableSync, *,
                 max_parallel_pulls: int = 8, max_operations: int = 32) -> None:
        self.state, self.table, self.table_sync = state, table, table_sync
        self.cluster = state.cluster
        self._slots = threading.BoundedSemaphore(max(1, max_parallel_pulls))
        self._max_operations = max(1, max_operations)
        self._lock = threading.Lock()
        self._ops: dict[str, PullOperation] = {}
        self._shared: Any = None  # the shared store, when several proxies use one

    def share(self, db: Any) -> None:
        """Several proxies on one store: publish this proxy's pulls in progress there
        (a ``config`` row each, ``pull.<id>``, from start to end) and show theirs."""
        self._shared = db

    def _publish(self, op: PullOperation) -> None:
        db = self._shared
        key = PULL_KEY_PREFIX + op.id
        try:
            db.upsert("config", {"key": key, "value": {**op.summary(), "proxy": db.origin}},
                      {"key": key})
        except Exception:  # noqa: BLE001 - the pull runs anyway; only others' view lacks it
            log.exception("pull %s: could not publish it to the other proxies", op.id)
            return
        op.on_finish(lambda op: self._unpublish(op.id))

    def _unpublish(self, op_id: str) -> None:
        try:
            self._shared.remove("config", {"key": PULL_KEY_PREFIX + op_id})
        except Exception:  # noqa: BLE001 - its proxy's end is noticed by the others anyway
            log.exception("pull %s: could not withdraw it", op_id)

    def _others(self) -> list[dict]:
        """The pulls other live proxies published (a stopped proxy's are removed)."""
        db = self._shared
        if db is None:
            return []
        rows = db.search("config", lambda d: str(d.get("key", "")).startswith(PULL_KEY_PREFIX))
        theirs = [(r, r.get("value") or {}) for r in rows]
        theirs = [(r, v) for r, v in theirs if isinstance(v, dict) and v.get("proxy") != db.origin]
        alive = db.owners_alive({str(v.get("proxy")) for _, v in theirs}) if theirs else set()
        out = []
        for row, value in theirs:
            if value.get("proxy") in alive:
                out.append(value)
            else:
                db.remove("config", row.doc_id)  # its proxy stopped with it running
        return out

    # -- reading ---------------------------------------------------------------------

    def active(self) -> list[dict]:
        """This proxy's pulls in progress, then (several proxies on one store) the
        other proxies' (``proxy`` names which; their progress is as at their start)."""
        with self._lock:
            ops = [op for op in self._ops.values() if not op.done]
        mine = [op.summary() for op in sorted(ops, key=lambda o: o.started_at)]
        return mine + sorted(self._others(), key=lambda v: v.get("started_at") or 0)

    def pulling(self) -> dict[str, set[str]]:
        """Per model key, the nodes a running pull has not finished on (another
        proxy's: every node it targets)."""
        with self._lock:
            ops = [op for op in self._ops.values() if not op.done]
        out: dict[str, set[str]] = {}
        for op in ops:
            out.setdefault(op.model, set()).update(op.pending_nodes())
        for value in self._others():
            if isinstance(value.get("model"), str):
                out.setdefault(value["model"], set()).update(
                    str(n) for n in value.get("nodes") or ())
        return out

    # -- pull ------------------------------------------------------------------------

    def known_size(self, key: str) -> int | None:
        for state in self.cluster.list_nodes():
            entry = state.available_models.get(key)
            if entry and entry.get("size"):
                return int(entry["size"])
        row = self.table.row(key)
        return int(row["size"]) if row and row.get("size") else None

    def plan_node(self, state: Any) -> PlanNode:
        free, total, mem = _capacity(state)
        return PlanNode(state.address, True, free, total, mem, _load(state))

    def _placement(self, key: str, size: int | None) -> tuple[list[str], list[PlanNode]]:
        """(nodes that already have it, candidates ranked for a new copy)."""
        usable = self.cluster.healthy_nodes()
        holders = [s.address for s in usable if key in s.available_models]
        nodes = [self.plan_node(s) for s in usable if s.address not in holders]
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
        size = self.known_size(key)
        found: tuple[str, Any, list[dict], int | None] | None
        if targets is None:
            holders, ranked = self._placement(key, size)
            need = max(0, self.state.copies - len(holders))
            if need and size is None and ranked:
                found = self._probe(ranked[0].address, model_name, insecure)
                size = found[3] if found else None
                if found is not None and size is not None and not fits(
                        ranked[0], size, ranked[0].disk_free, 0.0):
                    found[1].cancel()
                    found = None
                    ranked = []
                elif size is not None:
                    _, ranked = self._placement(key, size)
                probe = found[:3] if found else None
            targets = holders + [n.address for n in ranked[:need]]
        op = PullOperation(key, model_name, targets, clock=self.state.clock)
        with self._lock:
            self._ops = {k: o for k, o in self._ops.items() if not o.done}
            self._ops[op.id] = op
        op.start_record(size)
        if self._shared is not None:
            self._publish(op)
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

    def _probe(self, address: str, name: str, insecure: bool
               ) -> tuple[str, Any, list[dict], int | None] | None:
        """Open the pull on the best node and read until the first layer total arrives."""
        try:
            stream = self.cluster.client(address).pull(
                {"model": name, "stream": True, "insecure": insecure},
                timeout=self.state.pull_timeout_s)
            first: list[dict] = []
            deadline = time.monotonic() + self.state.probe_timeout_s
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
            while not op.stop_event.is_set() and not self.state.stop.is_set():
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
                    timeout=self.state.pull_timeout_s)
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
        deadline = time.monotonic() + self.state.pull_timeout_s + 30.0
        while not op.join(1.0):
            if time.monotonic() > deadline or self.state.stop.is_set():
                op.cancel()
                op.join(5.0)
                break
        outcome = op.outcome()
        try:
            # Record the model only where the node now lists it.
            self.table_sync.rebuild(self.table_sync.poll_many(sorted(outcome)))
        except Exception:  # noqa: BLE001 - the table is rebuilt again by the sync job
            log.exception("registry update after pull %s failed", op.id)
        op.finish()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running pulls and wait for their threads (bounded)."""
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

"""Cluster membership and per-node state: ``ClusterManager``.

Membership lives in the store's ``servers`` table, read and written through the
:class:`~olol.store.sync.SyncManager` built once at start-up (the one RAM view of the
store that the cluster and the model registry share; the store wins: the manager
loads it at construction and :meth:`ClusterManager.sync_from_store` re-reads it). What the coordinator knows about each node right now (health, models,
slots, free memory) lives in RAM under one lock and is refreshed from the
node agent's ``GetCompleteNodeStatus``; readers get snapshots, never the live
objects. How a status reply becomes a :class:`NodeState` is in
:mod:`olol.node_state` (its public names are re-exported here).

Lock order: the manager writes to the store while holding its own lock, so
code holding the store's lock (a ``db.transaction()``) must not call into the
manager.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from olol.node_state import (
    NodeState,
    _key,
    _snapshot,
    apply_status,
    by_key,
    describe_error,
    merge_ps,
    merge_tags,
    ps_entry,
    status_problem,
    tag_entry,
)
from olol.outliers import EMPTY_VIEW, ModelView, OutlierDetector, Ticket
from olol.store.database import iso_utc
from olol.store.sync import SyncManager

__all__ = [
    "SOURCES", "ClusterManager", "NodeState", "NodeUnhealthyError", "UnknownNodeError",
    "apply_status", "describe_error", "normalize_address", "ps_entry", "status_problem",
    "tag_entry",
]

log = logging.getLogger(__name__)

SOURCES = ("config", "api", "cli")


class NodeUnhealthyError(Exception):
    """The node agent answered, but its status says it cannot serve."""


class UnknownNodeError(KeyError):
    """The address is not a member of the cluster."""

    def __str__(self) -> str:
        return f"unknown node {self.args[0]!r}" if self.args else "unknown node"


def normalize_address(address: Any) -> str:
    """Validate a node agent address (``host:port`` or ``[v6]:port``) and return it stripped.

    :raises ValueError: with a message naming what is wrong.
    """
    from olol.address import parse_address

    parse_address(address, what="node address")
    return address.strip()


class ClusterManager:
    """The set of nodes, their live state, and one cached client per node.

    :param db: the store (``servers`` table).
    :param clock: seconds since the epoch; circuit timers and ``last_check`` use it.
    :param client_factory: ``factory(address) -> client``; by default a
        :class:`olol.rpc.client.NodeClient` with ``token``, ``tls`` and ``mux``.
    :param outliers: the :class:`~olol.outliers.OutlierDetector` that ejects a
        node×model failing where its peers succeed (default: one with its default
        settings on ``clock``).
    :param sync_manager: the RAM view of the store's ``servers`` and ``models`` tables
        (the proxy builds one and passes it here and to the registry); default: a new
        one over ``db``, which a registry built on this manager then shares.
    """

    def __init__(self, db: Any, *, clock: Callable[[], float] = time.time,
                 client_factory: Callable[[str], Any] | None = None,
                 token: str | None = None, tls: Any = None, mux: bool = True,
                 outliers: OutlierDetector | None = None,
                 sync_manager: SyncManager | None = None) -> None:
        self.db = db
        self.sync_manager = sync_manager if sync_manager is not None else SyncManager(
            db, tables=("servers", "models"))
        self.clock = clock
        self.outliers = outliers if outliers is not None else OutlierDetector(clock=clock)
        self._token, self._tls, self._mux = token, tls, mux
        self._factory = client_factory or self._default_client
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self._clients: dict[str, Any] = {}
        # Bumped on every change of a node's state: the shared snapshots below are
        # rebuilt only when it moved (a scheduling pass over 256 nodes reads them).
        self._version = 0
        self._shared: tuple[int, list[NodeState]] | None = None
        self.sync_from_store()

    def _default_client(self, address: str) -> Any:
        from olol.rpc.client import NodeClient

        return NodeClient(address, token=self._token, tls=self._tls, mux=self._mux)

    # -- membership -------------------------------------------------------------------

    def follow_store(self) -> bool:
        """On a shared store (several proxies), take nodes added or removed by another
        proxy into this one's membership as the store reports them (each proxy still
        polls every node itself). Returns whether it follows."""
        return self.sync_manager.follow(self._servers_changed)

    def _servers_changed(self, table: str) -> None:
        if table != "servers":
            return
        listed = {r["address"] for r in self.sync_manager.read_from_ram("servers")}
        with self._lock:
            same = listed == set(self._nodes)
        if not same:
            changed = self.sync_from_store()
            log.info("nodes changed by another proxy: %s", changed)

    def sync_from_store(self) -> dict[str, list[str]]:
        """Make RAM membership equal to the ``servers`` table (the store wins).

        Nodes loaded this way keep the last recorded ``healthy`` flag for display but are
        ``suspect`` until their first good poll, so nothing is sent to them blindly.
        """
        self.sync_manager.force_sync("servers")
        rows = {r["address"]: r for r in self.sync_manager.read_from_ram("servers")}
        added, removed = [], []
        with self._lock:
            for address in list(self._nodes):
                if address not in rows:
                    removed.append(address)
                    self._drop(address)
            for address, row in rows.items():
                if address in self._nodes:
                    continue
                state = NodeState(
                    address, healthy=bool(row.get("healthy")), suspect=True,
                    suspect_reason="not polled since start", source=row.get("source") or "api",
                    first_seen=row.get("first_seen"),
                )
                if isinstance(row.get("hardware_info"), dict):
                    apply_status(state, row["hardware_info"])
                self._nodes[address] = state
                added.append(address)
            self._version += 1
        return {"added": added, "removed": removed}

    def add_node(self, address: str, *, source: str = "api") -> NodeState:
        """Add a node (idempotent: an existing node is returned unchanged).

        :raises ValueError: the address is not ``host:port``.
        """
        address = normalize_address(address)
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        with self._lock:
            if address in self._nodes:
                return _snapshot(self._nodes[address])
            first_seen = iso_utc(self.clock())
            self.sync_manager.upsert_and_sync("servers", {
                "address": address, "healthy": False, "load": None, "last_check": None,
                "first_seen": first_seen, "hardware_info": None, "source": source,
            }, {"address": address})
            state = NodeState(address, source=source, first_seen=first_seen)
            self._nodes[address] = state
            self._version += 1
            log.info("node %s added (source %s)", address, source)
            return _snapshot(state)

    def remove_node(self, address: str) -> bool:
        """Remove a node from the store and RAM and close its client; False if unknown."""
        address = address.strip() if isinstance(address, str) else address
        with self._lock:
            removed = self.sync_manager.remove_where_and_sync("servers", {"address": address})
            known = self._drop(address)
        self.outliers.forget_node(address)
        if known or removed:
            log.info("node %s removed", address)
        return bool(known or removed)

    def sync_config_nodes(self, addresses: Iterable[str]) -> dict[str, list[str]]:
        """Apply the config file's node list: add missing ones (source ``config``) and
        remove config-sourced nodes that are no longer listed. Other nodes are untouched."""
        wanted = [normalize_address(a) for a in addresses]
        with self._lock:
            added = [a for a in wanted if a not in self._nodes]
            for a in added:
                self.add_node(a, source="config")
            gone = [a for a, s in self._nodes.items() if s.source == "config" and a not in wanted]
        for a in gone:
            self.remove_node(a)
        return {"added": added, "removed": gone}

    def _drop(self, address: str) -> bool:
        state = self._nodes.pop(address, None)
        self._version += 1
        client = self._clients.pop(address, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a failing close must not block removal
                log.debug("closing client of %s failed", address, exc_info=True)
        return state is not None

    def list_nodes(self) -> list[NodeState]:
        ejected = self.outliers.ejected()
        with self._lock:
            nodes = [_snapshot(s) for s in sorted(self._nodes.values(), key=lambda s: s.address)]
        for n in nodes:
            n.ejected = ejected.get(n.address, {})
        return nodes

    def node(self, address: str) -> NodeState | None:
        with self._lock:
            state = self._nodes.get(address)
            snap = _snapshot(state) if state else None
        if snap is not None:
            snap.ejected = self.outliers.ejected().get(address, {})
        return snap

    def client(self, address: str) -> Any:
        """The node's client, created once and reused by every thread.

        :raises UnknownNodeError: the address is not a member.
        """
        with self._lock:
            if address not in self._nodes:
                raise UnknownNodeError(address)
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = self._factory(address)
            return client

    def mux_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per node with a client: ``(messages, parts with records, calls open)`` of its
        multiplexed call (see :meth:`olol.rpc.client.NodeClient.mux_stats`)."""
        with self._lock:
            clients = list(self._clients.items())
        out = {}
        for address, client in clients:
            stats = getattr(client, "mux_stats", None)
            if callable(stats):
                out[address] = stats()
        return out

    def close(self) -> None:
        """Close every cached client (membership is kept)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                log.debug("closing a node client failed", exc_info=True)

    # -- queries ----------------------------------------------------------------------

    def _snapshots(self) -> list[NodeState]:
        """Snapshots of every node by address, shared by every reader until the next
        change of any node (then rebuilt once): read them, never modify them."""
        with self._lock:
            shared = self._shared
            if shared is None or shared[0] != self._version:
                nodes = sorted(self._nodes.values(), key=lambda s: s.address)
                shared = self._shared = (self._version, [_copy_state(s) for s in nodes])
            return shared[1]

    @property
    def version(self) -> int:
        """A number that changes whenever any node's state changes (what
        :meth:`healthy_nodes` and :meth:`list_nodes` say may then differ)."""
        return self._version

    def healthy_nodes(self) -> list[NodeState]:
        """Nodes the scheduler may use: healthy, circuit closed, not suspect.

        The snapshots are shared with other readers (cheap for a scheduling pass over
        hundreds of nodes): read-only."""
        now = self.clock()
        return [s for s in self._snapshots() if s.usable(now)]

    def _serving_nodes(self) -> list[NodeState]:
        # For what the cluster offers (tags, ps, has_model) a merely suspect node still
        # counts: one failed dispatch must not make its models vanish from /api/tags.
        now = self.clock()
        return [s for s in self._snapshots() if s.healthy and not s.circuit_open(now)]

    def nodes_with_model(self, model_key: str) -> list[NodeState]:
        """Usable nodes that have the model (a name or a normalized key), loaded ones first."""
        key = _key(model_key)
        if key is None:
            return []
        nodes = [n for n in self.healthy_nodes() if key in n.available_models
                 or key in n.loaded_models]
        return sorted(nodes, key=lambda n: key not in n.loaded_models)

    def has_model(self, model_key: str) -> bool:
        """Whether a healthy node (suspect or not) has the model."""
        key = _key(model_key)
        return key is not None and any(
            key in n.available_models or key in n.loaded_models for n in self._serving_nodes())

    def model_unreachable(self, model_key: str) -> bool:
        """Whether the model is known (some node listed it at its last report) but no
        serving node has it: its nodes are down for now."""
        key = _key(model_key)
        if key is None or self.has_model(model_key):
            return False
        with self._lock:
            return any(key in s.available_models or key in s.loaded_models
                       for s in self._nodes.values())

    def models_union(self) -> list[dict]:
        """``/api/tags`` entries merged over healthy nodes, one per model, newest first."""
        return merge_tags(self._serving_nodes())

    def ps_union(self) -> list[dict]:
        """``/api/ps`` entries merged over healthy nodes, one per model (latest expiry)."""
        return merge_ps(self._serving_nodes())

    def live_ps(self, timeout: float = 1.0) -> list[dict]:
        """Like :meth:`ps_union`, but asks every serving node now (all at once, each
        bounded by ``timeout``); a node that does not answer in time keeps its entries
        from the last poll."""
        pending = []
        for node in self._serving_nodes():
            try:
                pending.append((node.address, self.client(node.address).ps_future(timeout)))
            except Exception as exc:  # noqa: BLE001 - fall back to the last poll
                log.debug("ps of %s not started: %s", node.address, exc)
        for address, future in pending:
            try:
                reply = future.result()
            except Exception as exc:  # noqa: BLE001 - fall back to the last poll
                log.debug("ps of %s failed: %s", address, exc)
                continue
            loaded = by_key(reply.get("models") if isinstance(reply, dict) else None, ps_entry)
            with self._lock:
                state = self._nodes.get(address)
                if state is not None:
                    state.loaded_models = loaded
                    self._version += 1
        return self.ps_union()

    # -- updates from the dispatcher and the health monitor ---------------------------

    def note_loaded(self, address: str, model_key: str) -> None:
        """The dispatcher ran ``model_key`` on the node: count it as loaded until the next
        poll says otherwise (``/api/ps`` only ever shows what the node reported)."""
        key = _key(model_key)
        with self._lock:
            state = self._nodes.get(address)
            if state is None or key is None or key in state.loaded_models:
                return
            loaded = dict(state.loaded_models)
            loaded[key] = {"name": key, "model": key, "_noted": True}
            state.loaded_models = loaded
            self._version += 1

    def mark_suspect(self, address: str, reason: str) -> None:
        """A dispatch to the node failed: avoid it until a good poll or success."""
        with self._lock:
            state = self._nodes.get(address)
            if state is not None:
                state.suspect, state.suspect_reason = True, str(reason)[:500]
                self._version += 1

    def record_success(self, address: str, model_key: str | None = None) -> None:
        """A call to the node succeeded: it is not suspect any more. With the model,
        the success also counts for outlier detection."""
        with self._lock:
            state = self._nodes.get(address)
            if state is not None and (state.suspect or state.suspect_reason is not None):
                state.suspect, state.suspect_reason = False, None
                self._version += 1
        if model_key is not None:
            self.outliers.success(address, model_key)

    # -- outlier detection (olol.outliers) ----------------------------------------------

    def model_peers(self, model_key: str) -> list[str]:
        """Addresses of the serving nodes (healthy, circuit closed, suspect or not)
        that have the model: the peers an outlier is compared with."""
        key = _key(model_key)
        if key is None:
            return []
        return [n.address for n in self._serving_nodes()
                if key in n.available_models or key in n.loaded_models]

    def record_failure(self, address: str, model_key: str, *,
                       count: bool | None = None) -> Ticket:
        """A call to the node for the model failed on the node's side (see
        :meth:`OutlierDetector.failure`); returns the failure's ticket."""
        return self.outliers.failure(address, model_key, self.model_peers(model_key),
                                     count=count)

    def confirm_failure(self, ticket: Ticket) -> None:
        """The request behind a pending failure succeeded elsewhere: count it."""
        self.outliers.confirm(ticket, self.model_peers(ticket.model))

    def retract_failure(self, ticket: Ticket) -> None:
        """The failure was the request's own doing: forget it."""
        self.outliers.retract(ticket)

    def outlier_view(self, model_key: str) -> ModelView:
        """Ejected, held and limited nodes for the model (for the scheduler)."""
        return self.outliers.view(model_key) if model_key else EMPTY_VIEW

    def record_poll(self, address: str, status: dict, latency_ms: float) -> NodeState | None:
        """A good status poll (see :func:`status_problem`): the node is healthy, its
        circuit closed, its state fresh."""
        with self._lock:
            state = self._nodes.get(address)
            if state is None:
                return None
            apply_status(state, status)
            self._version += 1
            state.healthy, state.suspect, state.suspect_reason = True, False, None
            state.consecutive_failures, state.circuit_open_until = 0, 0.0
            state.latency_ms, state.last_check, state.last_error = latency_ms, self.clock(), None
            return _snapshot(state)

    def record_poll_failure(self, address: str, error: str, *, failure_threshold: int = 1,
                            open_s: float = 0.0) -> NodeState | None:
        """A failed poll. After ``failure_threshold`` consecutive failures the node is
        unhealthy and its circuit opens for ``open_s`` (re-opened by each failed probe)."""
        now = self.clock()
        with self._lock:
            state = self._nodes.get(address)
            if state is None:
                return None
            state.consecutive_failures += 1
            self._version += 1
            state.last_error, state.last_check, state.latency_ms = str(error)[:500], now, None
            if state.consecutive_failures >= max(1, failure_threshold):
                state.healthy = False
                state.circuit_open_until = now + open_s if open_s > 0 else 0.0
            return _snapshot(state)

    def server_row(self, address: str) -> dict | None:
        """The ``servers`` fields describing the node's current state (None if unknown)."""
        with self._lock:
            state = self._nodes.get(address)
            if state is None:
                return None
            return {
                "healthy": state.healthy,
                "load": state.cpu_load,
                "last_check": iso_utc(state.last_check) if state.last_check else None,
                "hardware_info": state.hardware or None,
                "latency_ms": state.latency_ms,
                "last_error": state.last_error,
            }

    def persist(self, address: str) -> None:
        """Write the node's current state to its ``servers`` row (no-op once removed)."""
        row = self.server_row(address)
        if row is not None:
            self.sync_manager.update_and_sync("servers", row, {"address": address})

    def refresh(self, address: str, timeout: float = 2.0, *, persist: bool = True) -> NodeState:
        """Poll the node's ``GetCompleteNodeStatus`` once and update its state.

        A failed poll counts one failure (see :meth:`record_poll_failure`) and re-raises.

        :raises UnknownNodeError: the address is not a member.
        """
        client = self.client(address)
        start = time.monotonic()
        try:
            status = client.status(timeout=timeout)
            problem = status_problem(status)
            if problem:
                raise NodeUnhealthyError(problem)
        except Exception as exc:
            self.record_poll_failure(address, describe_error(exc))
            if persist:
                self.persist(address)
            raise
        state = self.record_poll(address, status, (time.monotonic() - start) * 1000.0)
        if persist:
            self.persist(address)
        if state is None:
            raise UnknownNodeError(address)
        return state


def _copy_state(state: NodeState) -> NodeState:
    """A snapshot of ``state`` (as :func:`olol.node_state._snapshot`, without the cost of
    ``dataclasses.replace``): its own model mappings, the same immutable values."""
    snap = object.__new__(NodeState)
    snap.__dict__.update(state.__dict__)
    snap.available_models = dict(state.available_models)
    snap.loaded_models = dict(state.loaded_models)
    snap.ejected = {}
    return snap

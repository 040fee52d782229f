"""Cluster membership and per-node state: ``ClusterManager`` and ``NodeState``.

Membership lives in the store's ``servers`` table (the store wins: the manager
loads it at construction and :meth:`ClusterManager.sync_from_store` re-reads
it). What the coordinator knows about each node right now (health, models,
slots, free memory) lives in RAM under one lock and is refreshed from the
node agent's ``GetCompleteNodeStatus``; readers get snapshots, never the live
objects.

Lock order: the manager writes to the store while holding its own lock, so
code holding the store's lock (a ``db.transaction()``) must not call into the
manager.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from olol.api.names import InvalidModelName, normalize_model_name
from olol.store.database import iso_utc

log = logging.getLogger(__name__)

SOURCES = ("config", "api", "cli")
_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?):(\d{1,5})$")
_DETAIL_KEYS = (
    "parent_model", "format", "family", "families", "parameter_size", "quantization_level",
)


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
    if not isinstance(address, str) or not address.strip():
        raise ValueError("node address must be a non-empty string like host:port")
    text = address.strip()
    match = _ADDRESS_RE.match(text)
    if match is None:
        raise ValueError(f"invalid node address {text!r}: expected host:port")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid node address {text!r}: port must be 1-65535")
    return text


@dataclass
class NodeState:
    """What the coordinator knows about one node. Instances handed out are snapshots."""

    address: str
    healthy: bool = False
    suspect: bool = False
    suspect_reason: str | None = None
    consecutive_failures: int = 0
    circuit_open_until: float = 0.0
    available_models: dict[str, dict] = field(default_factory=dict)
    loaded_models: dict[str, dict] = field(default_factory=dict)
    parallel: int = 1
    in_flight: int = 0
    cpu_load: float = 0.0
    vram_free: int | None = None
    ram_free: int | None = None
    latency_ms: float | None = None
    last_check: float | None = None
    last_error: str | None = None
    source: str = "api"
    first_seen: str | None = None
    hardware: dict = field(default_factory=dict)

    def circuit_open(self, now: float) -> bool:
        return self.circuit_open_until > now

    def usable(self, now: float) -> bool:
        """Healthy, circuit closed and not suspect: the scheduler may send it work."""
        return self.healthy and not self.suspect and not self.circuit_open(now)

    def to_dict(self) -> dict:
        """JSON shape used by the admin API and ``olol nodes ls --json``."""
        return {
            "address": self.address,
            "healthy": self.healthy,
            "suspect": self.suspect,
            "suspect_reason": self.suspect_reason,
            "consecutive_failures": self.consecutive_failures,
            "circuit_open_until": self.circuit_open_until or None,
            "source": self.source,
            "first_seen": self.first_seen,
            "last_check": iso_utc(self.last_check) if self.last_check else None,
            "last_error": self.last_error,
            "latency_ms": self.latency_ms,
            "parallel": self.parallel,
            "in_flight": self.in_flight,
            "cpu_load": self.cpu_load,
            "vram_free": self.vram_free,
            "ram_free": self.ram_free,
            "models": sorted(self.available_models),
            "loaded": sorted(k for k, v in self.loaded_models.items() if not v.get("_noted")),
        }


def _snapshot(state: NodeState) -> NodeState:
    # Model dicts are replaced wholesale on refresh, never edited in place, so copying
    # the outer mappings is enough to decouple the snapshot.
    return dataclasses.replace(
        state,
        available_models=dict(state.available_models),
        loaded_models=dict(state.loaded_models),
    )


def _details(raw: Any) -> dict:
    raw = raw if isinstance(raw, dict) else {}
    out = {k: raw.get(k, "") for k in _DETAIL_KEYS}
    out["families"] = list(raw.get("families") or [])
    return out


def _key(name: Any) -> str | None:
    try:
        return normalize_model_name(name) if isinstance(name, str) and name else None
    except InvalidModelName:
        return None


def tag_entry(raw: dict) -> dict:
    """One ``/api/tags`` entry in Ollama's field order from a status ``models`` item."""
    return {
        "name": raw.get("name", ""),
        "model": raw.get("model") or raw.get("name", ""),
        "modified_at": raw.get("modified_at", ""),
        "size": int(raw.get("size") or 0),
        "digest": raw.get("digest", ""),
        "details": _details(raw.get("details")),
    }


def ps_entry(raw: dict) -> dict:
    """One ``/api/ps`` entry in Ollama's field order from a status ``loaded`` item."""
    return {
        "name": raw.get("name", ""),
        "model": raw.get("model") or raw.get("name", ""),
        "size": int(raw.get("size") or 0),
        "digest": raw.get("digest", ""),
        "details": _details(raw.get("details")),
        "expires_at": raw.get("expires_at", ""),
        "size_vram": int(raw.get("size_vram") or 0),
        "context_length": int(raw.get("context_length") or 0),
    }


def _by_key(items: Any, make: Callable[[dict], dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for raw in items if isinstance(items, list) else []:
        if isinstance(raw, dict) and (key := _key(raw.get("name") or raw.get("model"))):
            out[key] = make(raw)
    return out


def apply_status(state: NodeState, status: dict) -> None:
    """Fill ``state``'s models, slots and resources from a ``GetCompleteNodeStatus`` dict."""
    ollama = status.get("ollama") or {}
    agent = status.get("agent") or {}
    cpu = status.get("cpu") or {}
    memory = status.get("memory") or {}
    gpus = (status.get("gpu") or {}).get("gpus") or []
    state.available_models = _by_key(ollama.get("models"), tag_entry)
    state.loaded_models = _by_key(ollama.get("loaded"), ps_entry)
    state.parallel = max(1, int(agent.get("parallel") or 1))
    state.in_flight = int(agent.get("in_flight_total") or 0)
    if cpu.get("total_percent") is not None:
        state.cpu_load = min(1.0, max(0.0, float(cpu["total_percent"]) / 100.0))
    free = [g["memory_free_bytes"] for g in gpus if g.get("memory_free_bytes") is not None]
    state.vram_free = int(sum(free)) if free else None
    avail = memory.get("available_bytes")
    state.ram_free = int(avail) if avail is not None else None
    state.hardware = status


class ClusterManager:
    """The set of nodes, their live state, and one cached client per node.

    :param db: the store (``servers`` table).
    :param clock: seconds since the epoch; circuit timers and ``last_check`` use it.
    :param client_factory: ``factory(address) -> client``; by default a
        :class:`olol.rpc.client.NodeClient` with ``token`` and ``tls``.
    """

    def __init__(self, db: Any, *, clock: Callable[[], float] = time.time,
                 client_factory: Callable[[str], Any] | None = None,
                 token: str | None = None, tls: Any = None) -> None:
        self.db = db
        self.clock = clock
        self._token, self._tls = token, tls
        self._factory = client_factory or self._default_client
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self._clients: dict[str, Any] = {}
        self.sync_from_store()

    def _default_client(self, address: str) -> Any:
        from olol.rpc.client import NodeClient

        return NodeClient(address, token=self._token, tls=self._tls)

    # -- membership -------------------------------------------------------------------

    def sync_from_store(self) -> dict[str, list[str]]:
        """Make RAM membership equal to the ``servers`` table (the store wins).

        Nodes loaded this way keep the last recorded ``healthy`` flag for display but are
        ``suspect`` until their first good poll, so nothing is sent to them blindly.
        """
        rows = {r["address"]: r for r in self.db.all("servers")}
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
            self.db.upsert("servers", {
                "address": address, "healthy": False, "load": None, "last_check": None,
                "first_seen": first_seen, "hardware_info": None, "source": source,
            }, {"address": address})
            state = NodeState(address, source=source, first_seen=first_seen)
            self._nodes[address] = state
            log.info("node %s added (source %s)", address, source)
            return _snapshot(state)

    def remove_node(self, address: str) -> bool:
        """Remove a node from the store and RAM and close its client; False if unknown."""
        address = address.strip() if isinstance(address, str) else address
        with self._lock:
            removed = self.db.remove("servers", {"address": address})
            known = self._drop(address)
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
        client = self._clients.pop(address, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a failing close must not block removal
                log.debug("closing client of %s failed", address, exc_info=True)
        return state is not None

    def list_nodes(self) -> list[NodeState]:
        with self._lock:
            return [_snapshot(s) for s in sorted(self._nodes.values(), key=lambda s: s.address)]

    def node(self, address: str) -> NodeState | None:
        with self._lock:
            state = self._nodes.get(address)
            return _snapshot(state) if state else None

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

    def healthy_nodes(self) -> list[NodeState]:
        """Nodes the scheduler may use: healthy, circuit closed, not suspect."""
        now = self.clock()
        with self._lock:
            return [_snapshot(s) for s in sorted(self._nodes.values(), key=lambda s: s.address)
                    if s.usable(now)]

    def _serving_nodes(self) -> list[NodeState]:
        # For what the cluster offers (tags, ps, has_model) a merely suspect node still
        # counts: one failed dispatch must not make its models vanish from /api/tags.
        now = self.clock()
        with self._lock:
            return [_snapshot(s) for s in sorted(self._nodes.values(), key=lambda s: s.address)
                    if s.healthy and not s.circuit_open(now)]

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

    def models_union(self) -> list[dict]:
        """``/api/tags`` entries merged over healthy nodes, one per model, newest first."""
        merged: dict[str, dict] = {}
        for node in self._serving_nodes():
            for key, entry in node.available_models.items():
                current = merged.get(key)
                if current is None or entry["modified_at"] > current["modified_at"]:
                    merged[key] = entry
        return sorted((dict(e) for e in merged.values()),
                      key=lambda e: (e["modified_at"], e["name"]), reverse=True)

    def ps_union(self) -> list[dict]:
        """``/api/ps`` entries merged over healthy nodes, one per model (latest expiry)."""
        merged: dict[str, dict] = {}
        for node in self._serving_nodes():
            for key, entry in node.loaded_models.items():
                if entry.get("_noted"):
                    continue
                current = merged.get(key)
                if current is None or entry["expires_at"] > current["expires_at"]:
                    merged[key] = entry
        return sorted((dict(e) for e in merged.values()), key=lambda e: e["name"])

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

    def mark_suspect(self, address: str, reason: str) -> None:
        """A dispatch to the node failed: avoid it until a good poll or success."""
        with self._lock:
            state = self._nodes.get(address)
            if state is not None:
                state.suspect, state.suspect_reason = True, str(reason)[:500]

    def record_success(self, address: str) -> None:
        """A call to the node succeeded: it is not suspect any more."""
        with self._lock:
            state = self._nodes.get(address)
            if state is not None:
                state.suspect, state.suspect_reason = False, None

    def record_poll(self, address: str, status: dict, latency_ms: float) -> NodeState | None:
        """A good status poll (see :func:`status_problem`): the node is healthy, its
        circuit closed, its state fresh."""
        with self._lock:
            state = self._nodes.get(address)
            if state is None:
                return None
            apply_status(state, status)
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
            state.last_error, state.last_check, state.latency_ms = str(error)[:500], now, None
            if state.consecutive_failures >= max(1, failure_threshold):
                if state.healthy:
                    log.warning("node %s unhealthy: %s", address, error)
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
            self.db.update("servers", row, {"address": address})

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


def status_problem(status: Any) -> str | None:
    """Why a status reply means the node cannot serve (its Ollama is down), or None."""
    if not isinstance(status, dict):
        return "malformed status reply"
    ollama = status.get("ollama") or {}
    if not ollama.get("reachable", False):
        return f"ollama unreachable: {ollama.get('error') or 'no answer'}"
    return None


def describe_error(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    name = getattr(code, "name", None)
    return f"{name}: {message}" if name else message

"""What one node's status reply means: ``NodeState`` and the translation into it.

A node agent's ``GetCompleteNodeStatus`` reply is a nested dict (Ollama's listing
and loaded models, the agent's slots, CPU, memory, GPUs). This module turns it into
the fields of a :class:`NodeState` (:func:`apply_status`), builds the Ollama-shaped
``/api/tags`` and ``/api/ps`` entries a node offers, merges those entries over
several nodes (:func:`merge_tags`, :func:`merge_ps`), and says when a reply means
the node cannot serve (:func:`status_problem`). Nothing here holds a lock or talks
to a node: :class:`olol.cluster.ClusterManager` owns the live states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from olol.api.names import InvalidModelName, normalize_model_name
from olol.store.database import iso_utc

_DETAIL_KEYS = (
    "parent_model", "format", "family", "families", "parameter_size", "quantization_level",
)


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
    # models the node is ejected for (olol.outliers), with the end of each ejection
    # (on the cluster's clock); filled in by ClusterManager.list_nodes() and node()
    ejected: dict[str, float] = field(default_factory=dict)

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
            "ejected": {m: iso_utc(until) for m, until in sorted(self.ejected.items())},
        }


def _snapshot(state: NodeState) -> NodeState:
    # Model dicts are replaced wholesale on refresh, never edited in place, so copying
    # the outer mappings is enough to decouple the snapshot.
    return dataclasses.replace(
        state,
        available_models=dict(state.available_models),
        loaded_models=dict(state.loaded_models),
        ejected={},
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


def by_key(items: Any, make: Callable[[dict], dict]) -> dict[str, dict]:
    """Entries of a tags/ps list keyed by normalized model name."""
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
    state.available_models = by_key(ollama.get("models"), tag_entry)
    state.loaded_models = by_key(ollama.get("loaded"), ps_entry)
    state.parallel = max(1, int(agent.get("parallel") or 1))
    state.in_flight = int(agent.get("in_flight_total") or 0)
    if cpu.get("total_percent") is not None:
        state.cpu_load = min(1.0, max(0.0, float(cpu["total_percent"]) / 100.0))
    free = [g["memory_free_bytes"] for g in gpus if g.get("memory_free_bytes") is not None]
    state.vram_free = int(sum(free)) if free else None
    avail = memory.get("available_bytes")
    state.ram_free = int(avail) if avail is not None else None
    state.hardware = status


def merge_tags(nodes: Iterable[NodeState]) -> list[dict]:
    """``/api/tags`` entries merged over ``nodes``, one per model, newest first."""
    merged: dict[str, dict] = {}
    for node in nodes:
        for key, entry in node.available_models.items():
            current = merged.get(key)
            if current is None or entry["modified_at"] > current["modified_at"]:
                merged[key] = entry
    return sorted((dict(e) for e in merged.values()),
                  key=lambda e: (e["modified_at"], e["name"]), reverse=True)


def merge_ps(nodes: Iterable[NodeState]) -> list[dict]:
    """``/api/ps`` entries merged over ``nodes``, one per model (latest expiry)."""
    merged: dict[str, dict] = {}
    for node in nodes:
        for key, entry in node.loaded_models.items():
            if entry.get("_noted"):
                continue
            current = merged.get(key)
            if current is None or entry["expires_at"] > current["expires_at"]:
                merged[key] = entry
    return sorted((dict(e) for e in merged.values()), key=lambda e: e["name"])


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

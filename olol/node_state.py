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
import re
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
            "reason": self.reason(),
        }

    def reason(self) -> str | None:
        """Why the node is not serving, in plain words (None when it is healthy): its
        last poll's error when unhealthy, what made it suspect otherwise."""
        if not self.healthy:
            if self.last_check is None and not self.last_error:
                return "not checked yet"
            return plain_reason(self.last_error or "not healthy")
        if self.suspect:
            if self.consecutive_failures and self.last_error:
                return plain_reason(self.last_error)
            return plain_reason(self.suspect_reason or "suspect")
        return None


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


# ---------------------------------------------------------------------- plain words
# What a failed poll or call says, as gRPC and the agent phrase it, what it means to an
# operator, and what to check. The first pattern that matches wins.
_PLAIN: list[tuple[re.Pattern[str], str, str | None]] = [(re.compile(p, re.I), t, h) for p, t, h in (
    (r"^UNAUTHENTICATED\b", "token rejected",
     "the proxy's node_token / node_token_file differs from the worker's token"),
    (r"^PERMISSION_DENIED\b", "token rejected (admin token required)",
     "model commands need the worker's admin token"),
    (r"CERTIFICATE_VERIFY_FAILED.*(unable to get local issuer|self[- ]signed)",
     "TLS: certificate signed by unknown authority",
     "node_ca is not the CA that signed the worker's certificate"),
    (r"certificate has expired|CERTIFICATE_EXPIRED", "TLS: certificate expired",
     "issue a new one with `olol certs issue`"),
    (r"Hostname Verification|No match found for server name",
     "TLS: certificate not valid for this host name",
     "issue the worker's certificate with --host for this name, or set node_server_name"),
    (r"WRONG_VERSION_NUMBER", "TLS: the worker does not speak TLS",
     "start the worker with --tls-cert/--tls-key, or drop node_ca"),
    (r"CERTIFICATE_VERIFY_FAILED", "TLS: certificate verification failed", None),
    (r"Tls handshake failed|SSL_ERROR", "TLS handshake failed", None),
    (r"Socket closed", "connection closed by the worker during the handshake",
     "a TLS mismatch: the worker may want TLS (node_ca), or a client certificate signed by "
     "its CA (node_cert, node_key)"),
    (r"Connection refused", "connection refused",
     "is the worker running and listening on this address?"),
    (r"errors resolving|Domain name not found|Name or service not known|"
     r"nodename nor servname", "host name not found (DNS)", None),
    (r"No route to host", "no route to host", None),
    (r"Network is unreachable", "network unreachable", None),
    (r"Connection reset", "connection reset by the worker", None),
    (r"^DEADLINE_EXCEEDED\b|no answer within", "no answer in time (timeout)", None),
    (r"^malformed status reply", "the worker sent a malformed status reply", None),
)]
_REGISTRY_PREFIX = "model registry poll failed: "
_OLLAMA_DOWN = re.compile(r"ollama unreachable: (?:/api/\w+: )?(?P<detail>[^;]*)", re.I)
_OLLAMA_AT = re.compile(r"^ollama unreachable at (?P<url>\S+?): (?:\[Errno \d+\]\s*)?"
                        r"(?P<why>.*)$", re.I)


def _explain(error: str | None) -> tuple[str, str | None]:
    text = str(error or "").strip()
    if not text:
        return "unknown error", None
    prefix = ""
    if text.startswith(_REGISTRY_PREFIX):
        prefix, text = _REGISTRY_PREFIX, text[len(_REGISTRY_PREFIX):]
    m = _OLLAMA_DOWN.match(text)
    if m:
        detail = m.group("detail").strip()
        at = _OLLAMA_AT.match(detail)
        if at:
            why = at.group("why").strip()
            detail = f"{why[:1].lower()}{why[1:200]} at {at.group('url')}"
        return prefix + "Ollama not reachable" + (f": {detail[:200]}" if detail else ""), \
            "the worker is up but cannot reach its Ollama (--ollama-url)"
    for pattern, words, hint in _PLAIN:
        if pattern.search(text):
            return prefix + words, hint
    return prefix + text[:300], None


def plain_reason(error: str | None) -> str:
    """An error from a poll or a node call in the words an operator needs: "token
    rejected", "TLS: certificate signed by unknown authority", "connection refused",
    "Ollama not reachable: ..."; an error it does not recognise is returned as it is
    (capped at 300 characters)."""
    return _explain(error)[0]


def reason_hint(error: str | None) -> str | None:
    """What to check for that error (None when there is nothing more to say)."""
    return _explain(error)[1]

"""The ``inference_queue`` record: constants, admission checks and the RAM entry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from olol.api.names import InvalidModelName, normalize_model_name
from olol.ids import new_id

TABLE = "inference_queue"

KINDS = ("sync", "job")
ENDPOINTS = ("generate", "chat", "embed", "embeddings", "passthrough")
APIS = ("ollama", "openai", "anthropic", "responses", "passthrough")
ACTIVE = frozenset({"pending", "processing"})
FINISHED = frozenset({"completed", "failed", "interrupted", "cancelled"})

PROMPT_PREVIEW_CHARS = 200
MAX_ID_CHARS = 128
MAX_PRIORITY = 1_000_000

RESTART_ERROR = "interrupted by a proxy restart"
LEASE_ERROR = "interrupted: the dispatch lease expired"
STOP_ERROR = "interrupted: the proxy stopped before it finished"

# Fields only QueueManager writes; values a caller passes for them are replaced.
MANAGED_FIELDS = (
    "status", "seq", "enqueued_ts", "attempts", "not_before", "lease_until",
    "server_assigned", "batch_id", "started_at", "completed_at", "started_ts",
    "completed_ts", "result", "error", "error_status", "rev", "owner", "claimed_by",
)


class QueueFullError(Exception):
    """The queue (or one model's share of it) is at its bound; answer 503 + Retry-After.

    :ivar retry_after_s: whole seconds (1..60) after which a retry has a fair chance.
    :ivar reason: a human-readable sentence naming the bound that was hit.
    """

    def __init__(self, retry_after_s: int, reason: str):
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.reason = reason


def model_key_of(model: str) -> str:
    """The normalized model name used to group and filter; falls back to lower case."""
    try:
        return normalize_model_name(model)
    except InvalidModelName:
        return model.strip().lower()


def _opt_str(request: Mapping[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"queue request: {name!r} must be a string or null, got "
                         f"{type(value).__name__}")
    return value


def build_record(request: Any, *, seq: int, now: float) -> dict[str, Any]:
    """Check a front-door request and return the record to insert.

    :raises ValueError: with a sentence naming the bad field.
    """
    if not isinstance(request, Mapping):
        raise ValueError(f"queue request must be a mapping, got {type(request).__name__}")
    endpoint = request.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ValueError(
            f"queue request: 'endpoint' must be one of {', '.join(ENDPOINTS)}; got {endpoint!r}"
        )
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("queue request: 'model' must be a non-empty string")
    body = request.get("body")
    if not isinstance(body, dict):
        raise ValueError(
            f"queue request: 'body' must be a dict (the Ollama request body), got "
            f"{type(body).__name__}"
        )
    kind = request.get("kind", "sync")
    if kind not in KINDS:
        raise ValueError(f"queue request: 'kind' must be 'sync' or 'job'; got {kind!r}")
    api = request.get("api", "ollama")
    if api not in APIS:
        raise ValueError(f"queue request: 'api' must be one of {', '.join(APIS)}; got {api!r}")
    priority = request.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(
            f"queue request: 'priority' must be an integer, got {type(priority).__name__}"
        )
    if abs(priority) > MAX_PRIORITY:
        raise ValueError(f"queue request: 'priority' must be within ±{MAX_PRIORITY}")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError("queue request: 'stream' must be a boolean")
    request_id = request.get("id")
    if request_id is None:
        request_id = new_id()
    elif not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
        raise ValueError(
            f"queue request: 'id' must be a non-empty string of at most {MAX_ID_CHARS} chars"
        )
    model_key = request.get("model_key")
    if model_key is None:
        model_key = model_key_of(model)
    elif not isinstance(model_key, str) or not model_key:
        raise ValueError("queue request: 'model_key' must be a non-empty string")
    prompt = _opt_str(request, "prompt")
    if prompt is not None and len(prompt) > PROMPT_PREVIEW_CHARS:
        prompt = prompt[:PROMPT_PREVIEW_CHARS]
    for name in ("session", "key_id", "coalesce_key", "batch_key"):
        _opt_str(request, name)
    body_bytes = request.get("body_bytes", 0)
    if body_bytes is None:
        body_bytes = 0
    if isinstance(body_bytes, bool) or not isinstance(body_bytes, int) or body_bytes < 0:
        raise ValueError("queue request: 'body_bytes' must be a non-negative integer")

    record = {k: v for k, v in request.items() if k not in MANAGED_FIELDS}
    record.update(
        id=request_id, kind=kind, endpoint=endpoint, api=api, model=model,
        model_key=model_key, body=body, stream=stream, prompt=prompt, priority=priority,
        session=request.get("session"), key_id=request.get("key_id"),
        coalesce_key=request.get("coalesce_key"), batch_key=request.get("batch_key"),
        status="pending", seq=seq, enqueued_ts=now, attempts=0, not_before=None,
        lease_until=None, server_assigned=None, batch_id=None, started_at=None,
        completed_at=None, started_ts=None, completed_ts=None, result=None, error=None,
        error_status=None, rev=0, body_bytes=body_bytes,
    )
    return record


@dataclass(slots=True, eq=False)
class Entry:
    """What the queue keeps in RAM per record (the store holds the rest).

    ``rev`` counts the queue's writes to the record; a RAM update is applied only
    when it carries a newer ``rev``, so concurrent writers cannot leave RAM stale.
    """

    id: str
    doc_id: int
    kind: str
    endpoint: str
    model_key: str
    priority: int
    seq: int
    enqueued_ts: float
    status: str
    rev: int = 0
    not_before: float | None = None
    lease_until: float | None = None
    completed_ts: float | None = None
    batch_key: str | None = None
    coalesce_key: str | None = None
    session: str | None = None
    model: str | None = None
    ready_key: tuple | None = None  # set while in the ready index
    delayed_key: tuple | None = None  # set while waiting for not_before
    # A sync request's body lives here, not in the store, and only while the request
    # is pending or processing (nothing can need it afterwards, nor after a restart).
    body: dict | None = None
    body_bytes: int = 0  # size of the body as received (bounds what the queue holds)
    # On a shared store (several proxies): the proxy that admitted the request and the
    # one whose claim holds it now (the store's ``origin`` of each).
    owner: str | None = None
    claimed_by: str | None = None
    # Another proxy's sync request: its body and its caller are there, so this proxy
    # never claims it (it is in the counts, never in the pending index).
    foreign: bool = False
    attempts: int = 0  # claims so far, as last written
    # Shared store, this proxy's own sync request while it is active: its record (no
    # body), kept in RAM only; it is written once, when the request finishes.
    record: dict | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], doc_id: int, *, seq: int, now: float) -> Entry:
        enq = doc.get("enqueued_ts")
        return cls(
            id=doc["id"],
            doc_id=doc_id,
            kind=doc["kind"] if doc.get("kind") in KINDS else "sync",
            endpoint=doc.get("endpoint") or "generate",
            model_key=doc.get("model_key") or model_key_of(doc["model"]),
            priority=_int(doc.get("priority"), 0),
            seq=_int(doc.get("seq"), seq),
            enqueued_ts=float(enq) if enq is not None and _num(enq) else now,
            status=doc["status"],
            rev=_int(doc.get("rev"), 0),
            not_before=doc.get("not_before") if _num(doc.get("not_before")) else None,
            lease_until=doc.get("lease_until") if _num(doc.get("lease_until")) else None,
            completed_ts=doc.get("completed_ts") if _num(doc.get("completed_ts")) else None,
            batch_key=doc.get("batch_key"),
            coalesce_key=doc.get("coalesce_key"),
            session=doc.get("session"),
            model=doc.get("model"),
            body_bytes=_int(doc.get("body_bytes"), 0),
            owner=doc.get("owner"),
            claimed_by=doc.get("claimed_by"),
            attempts=_int(doc.get("attempts"), 0),
        )

    def summary(self) -> dict[str, Any]:
        """What a scheduler needs to place the request (no body)."""
        return {
            "id": self.id, "kind": self.kind, "endpoint": self.endpoint,
            "model": self.model, "model_key": self.model_key, "priority": self.priority,
            "enqueued_ts": self.enqueued_ts, "batch_key": self.batch_key,
            "coalesce_key": self.coalesce_key, "session": self.session,
        }

    def order_key(self, ageing_s: float) -> tuple[float, int, str]:
        """Ascending = dispatch order.

        Effective priority is ``priority + (now - enqueued_ts) / ageing_s``; every
        pending request ages at the same rate, so ranking by the static
        ``enqueued_ts / ageing_s - priority`` (smaller first) gives the same order at
        any ``now``. ``seq`` breaks ties (FIFO).
        """
        return (self.enqueued_ts / ageing_s - self.priority, self.seq, self.id)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value
    )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default

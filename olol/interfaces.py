"""Small protocols for the joints between the coordinator's parts.

Each protocol names only what the parts that hold the collaborator call on it, so a
test can pass a small fake and the type checker says when a real class drifts away
from what its users expect. The real classes satisfy them structurally:

================= ======================================== ===============================
Protocol          real class                               used by
================= ======================================== ===============================
``Store``         :class:`olol.store.DatabaseManager`      queue, keys, registry, stats,
                                                           settings, the front door
``Queue``         :class:`olol.queue.QueueManager`         the front door, metrics, jobs
``ClusterView``   :class:`olol.cluster.ClusterManager`     the front door, metrics, the UI
``NodeClient``    :class:`olol.rpc.client.NodeClient`      the front door (model routes)
``ResponseHub``   :class:`olol.hub.ResponseHub`            the front door, the dispatcher
``UnplaceableHandler`` ``Dispatcher.fail_unplaceable``     the scheduler
================= ======================================== ===============================

This module imports nothing at run time beyond ``typing``, so any module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from olol.hub import ResponseChannel
    from olol.node_state import NodeState
    from olol.store.schema import TableSchema

#: Which records a store call applies to: a doc id, doc ids, a predicate or a field match.
Where = int | Iterable[int] | Callable[[Mapping], bool] | Mapping[str, Any]
#: What an update writes: fields to set, or a function that edits the record in place.
Fields = Mapping[str, Any] | Callable[[dict], None]
#: A search condition: a predicate or a field match.
Cond = Callable[[Mapping], bool] | Mapping


class Store(Protocol):
    """The durable store, as its users see it (tables of JSON records)."""

    clock: Callable[[], float]

    @property
    def closed(self) -> bool: ...

    def register_table(self, schema: TableSchema) -> None: ...

    def transaction(self, *, wait: bool = True) -> AbstractContextManager[Any]: ...

    def insert(self, table: str, doc: Mapping[str, Any], *, wait: bool = True) -> int: ...

    def update(self, table: str, fields: Fields, where: Where) -> list[int]: ...

    def upsert(self, table: str, doc: Mapping[str, Any], where: Where) -> list[int]: ...

    def remove(self, table: str, where: Where) -> list[int]: ...

    # records are dicts with a ``doc_id`` attribute (TinyDB documents)
    def get(self, table: str, doc_id: int) -> Any: ...

    def search(self, table: str, cond: Cond) -> list[Any]: ...

    def search_one(self, table: str, cond: Cond) -> Any: ...

    def all(self, table: str) -> list[Any]: ...

    def count(self, table: str, cond: Cond | None = None) -> int: ...

    # upkeep and figures (maintenance jobs, /metrics)
    @property
    def durable(self) -> bool: ...

    def checkpoint(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...


class Queue(Protocol):
    """The durable request queue, as the front door, the metrics and the jobs use it."""

    max_depth: int  # bound on pending + processing requests (a live setting)

    def enqueue(self, request: dict, *, wake: bool = True) -> tuple[str, int]: ...

    def get(self, request_id: str) -> dict | None: ...

    def cancel(self, request_id: str) -> bool: ...

    def notify(self, everyone: bool = True) -> None: ...

    def update_request_status(self, request_id: str, status: str, result: dict | None = None,
                              *, error: str | None = None, error_status: int | None = None,
                              server: str | None = None, usage: dict | None = None
                              ) -> bool: ...

    def list_jobs(self, status: str | None = None, limit: int = 100, *,
                  kind: str | None = "job") -> list[dict]: ...

    def get_queue_stats(self) -> dict[str, Any]: ...

    def active_summary(self) -> list[tuple[str, int, str, int, float | None]]: ...

    def add_finish_listener(self, listener: Callable[[dict], None]) -> None: ...

    def clean_old_requests(self, max_age_hours: float | None = None) -> int: ...

    def return_expired_leases(self) -> int: ...


class NodeStream(Protocol):
    """A streamed node call: iterate its records; ``cancel()`` ends the call."""

    def __iter__(self) -> Iterator[Any]: ...

    def cancel(self) -> None: ...


class ForwardStream(Protocol):
    """A forwarded HTTP answer: ``head()`` then ``pieces()``; ``cancel()`` ends it."""

    def head(self) -> tuple[int, str, bytes]: ...

    def pieces(self) -> Iterator[bytes]: ...

    def cancel(self) -> None: ...


class NodeClient(Protocol):
    """One node agent over gRPC, as the front door calls it (failures raise
    :class:`olol.rpc.client.NodeError`)."""

    def generate(self, body: dict | bytes, timeout: float | None = None,
                 raw: bool = False, aggregate: float | None = None) -> NodeStream: ...

    def chat(self, body: dict | bytes, timeout: float | None = None,
             raw: bool = False, aggregate: float | None = None) -> NodeStream: ...

    def embed(self, body: dict | bytes, timeout: float | None = None) -> dict: ...

    def show(self, body: dict | bytes, timeout: float | None = None) -> dict: ...

    def ps(self, timeout: float | None = None) -> dict: ...

    def create(self, body: dict | bytes, timeout: float | None = None,
               raw: bool = False) -> NodeStream: ...

    def push(self, body: dict | bytes, timeout: float | None = None,
             raw: bool = False) -> NodeStream: ...

    def blob_exists(self, digest: str, timeout: float | None = None) -> bool: ...

    def upload_blob(self, digest: str, data: Iterable[bytes] | bytes, size: int = 0,
                    timeout: float | None = None) -> int: ...

    def forward(self, method: str, path: str, body: bytes = b"", *, content_type: str = "",
                model: str = "", timeout: float | None = None) -> ForwardStream: ...

    def close(self) -> None: ...


class ClusterView(Protocol):
    """The nodes and what they hold, as the front door, the metrics and the UI read
    them (``NodeState`` values are snapshots)."""

    clock: Callable[[], float]

    def list_nodes(self) -> list[NodeState]: ...

    def node(self, address: str) -> NodeState | None: ...

    def healthy_nodes(self) -> list[NodeState]: ...

    def nodes_with_model(self, model_key: str) -> list[NodeState]: ...

    def has_model(self, model_key: str) -> bool: ...

    def model_unreachable(self, model_key: str) -> bool: ...

    def models_union(self) -> list[dict]: ...

    def live_ps(self, timeout: float = 1.0) -> list[dict]: ...

    def client(self, address: str) -> NodeClient: ...

    def add_node(self, address: str, *, source: str = "api") -> NodeState: ...

    def remove_node(self, address: str) -> bool: ...

    def refresh(self, address: str, timeout: float = 2.0, *, persist: bool = True
                ) -> NodeState: ...


class ResponseHub(Protocol):
    """Where a waiting HTTP request reads what the dispatcher publishes for it."""

    def open(self, request_id: str) -> ResponseChannel: ...

    def close(self, request_id: str) -> None: ...

    def publish(self, request_id: str, kind: str, data: Any, timeout: float = 30.0) -> bool: ...

    def listening(self, request_id: str) -> bool: ...


class UnplaceableHandler(Protocol):
    """What the scheduler calls for a request no node can ever run (the dispatcher's
    ``fail_unplaceable``: it fails the request with ``message``)."""

    def __call__(self, request: dict, message: str, /) -> None: ...

"""Small protocols for the joints between the coordinator's parts.

Each protocol names only what the parts that hold the collaborator call on it, so a
test can pass a small fake and the type checker says when a real class drifts away
from what its users expect. The real classes satisfy them structurally:

================= ======================================== ===============================
Protocol          real class                               used by
================= ======================================== ===============================
``Store``         :class:`olol.store.DatabaseManager`,     queue, keys, registry, stats,
                  :class:`olol.store.PostgresStore`        settings, the front door
``Queue``         :class:`olol.queue.QueueManager`         the front door, metrics, jobs
``ClusterView``   :class:`olol.cluster.ClusterManager`     the front door, metrics, the UI
``NodeClient``    :class:`olol.rpc.client.NodeClient`      the front door (model routes)
``ResponseHub``   :class:`olol.hub.ResponseHub`            the front door, the dispatcher
``UnplaceableHandler`` ``Dispatcher.fail_unplaceable``     the scheduler
``DispatchQueue`` :class:`olol.queue.QueueManager`         the dispatcher
``SchedulingQueue`` :class:`olol.queue.QueueManager`       the scheduler
``DispatchCluster`` :class:`olol.cluster.ClusterManager`   the dispatcher
``PlacementCluster`` :class:`olol.cluster.ClusterManager`  the scheduler
``UsageCounter``  :class:`olol.registry.ModelRegistry`     the dispatcher
``JobScheduler``  APScheduler 3 ``BackgroundScheduler``    the maintenance jobs
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
    from olol.outliers import ModelView, Ticket
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

    # shared stores (several proxies on one database): row locks inside a transaction,
    # and change notices after every commit (``origin``: the process that wrote)
    origin: str

    def lock(self, table: str, doc_ids: Iterable[int], *,
             skip_locked: bool = False) -> list[Any]: ...

    def watch(self, table: str,
              callback: Callable[[str, list[int] | None, str], None]) -> None: ...

    shared: bool  # several processes may write this store at once

    def get_many(self, table: str, doc_ids: Iterable[int]) -> list[Any]: ...

    def update_if(self, table: str, doc_ids: Iterable[int], fields: Mapping[str, Any], *,
                  when: Mapping[str, Iterable[Any]], incr: Iterable[str] = (),
                  skip_locked: bool = False, wait: bool = True,
                  notify: bool = True) -> list[Any]: ...

    def owners_alive(self, origins: Iterable[str]) -> set[str]: ...

    def exclusive(self, name: str) -> None: ...

    # upkeep and figures (maintenance jobs, /metrics)
    @property
    def durable(self) -> bool: ...

    def checkpoint(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, *, checkpoint: bool = True) -> None: ...


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

    def get(self, request_id: str) -> ResponseChannel | None: ...

    def close(self, request_id: str) -> None: ...

    def publish(self, request_id: str, kind: str, data: Any, timeout: float = 30.0) -> bool: ...

    def listening(self, request_id: str) -> bool: ...


class UnplaceableHandler(Protocol):
    """What the scheduler calls for a request no node can ever run (the dispatcher's
    ``fail_unplaceable``: it fails the request with ``message``)."""

    def __call__(self, request: dict, message: str, /) -> None: ...


class DispatchQueue(Protocol):
    """The queue, as the dispatcher's threads use it: wait for work, check a claimed
    request, keep its lease, put it back, and record how it ended."""

    def notify(self, everyone: bool = True) -> None: ...

    def wait_for_work(self, timeout: float) -> bool: ...

    def is_next(self, request_id: str) -> bool: ...

    def is_cancelled(self, request_id: str) -> bool: ...

    def waiting_here(self) -> list[str]: ...

    def cancel(self, request_id: str) -> bool: ...

    def add_cancel_listener(self, listener: Callable[[str], None]) -> None: ...

    def extend_lease(self, request_id: str, lease_s: float | None = None) -> bool: ...

    def requeue(self, request_id: str, *, delay_s: float = 0.0, reason: str = "") -> bool: ...

    def update_request_status(self, request_id: str, status: str, result: dict | None = None,
                              *, error: str | None = None, error_status: int | None = None,
                              server: str | None = None, usage: dict | None = None
                              ) -> bool: ...


class SchedulingQueue(Protocol):
    """The queue, as the scheduler reads and claims it (summaries from RAM, groups of
    similar work, atomic claims)."""

    def peek_summaries(self, limit: int = 100, model: str | None = None) -> list[dict]: ...

    def batch_similar_requests(self, limit: int | None = None, model: str | None = None
                               ) -> list[dict]: ...

    def dequeue(self, batch_size: int = 1, model: str | None = None, *,
                ids: Iterable[str] | None = None, server: str | None = None,
                batch_id: str | None = None, lease_s: float | None = None) -> list[dict]: ...

    def notify(self, everyone: bool = True) -> None: ...


class DispatchCluster(Protocol):
    """The cluster, as the dispatcher uses it: a node's client, and the outcome of each
    node call (health, residency, outlier detection)."""

    # an :class:`olol.rpc.client.NodeClient`; the dispatcher also reads its streams'
    # ``next_message``/``received``, which :class:`NodeStream` does not name
    def client(self, address: str) -> Any: ...

    def record_success(self, address: str, model_key: str | None = None) -> None: ...

    def note_loaded(self, address: str, model_key: str) -> None: ...

    def model_peers(self, model_key: str) -> list[str]: ...

    def record_failure(self, address: str, model_key: str, *,
                       count: bool | None = None) -> Ticket: ...

    def confirm_failure(self, ticket: Ticket) -> None: ...

    def retract_failure(self, ticket: Ticket) -> None: ...


class PlacementCluster(Protocol):
    """The cluster, as the scheduler places work on it (``NodeState`` values are
    snapshots). The scheduler reads ``version`` and ``outlier_view`` with ``getattr``,
    so a test's fake may leave them out."""

    @property
    def version(self) -> int: ...

    def healthy_nodes(self) -> list[NodeState]: ...

    def list_nodes(self) -> list[NodeState]: ...

    def note_loaded(self, address: str, model_key: str) -> None: ...

    def mark_suspect(self, address: str, reason: str) -> None: ...

    def outlier_view(self, model_key: str) -> ModelView: ...


class UsageCounter(Protocol):
    """Where the dispatcher counts a finished request per model and node (the
    registry's usage figures)."""

    def note_usage(self, model_key: str, node: str | None = None) -> None: ...


class JobScheduler(Protocol):
    """The periodic-job scheduler under :class:`olol.maintenance.MaintenanceJobs`
    (APScheduler 3's ``BackgroundScheduler`` API, the calls it makes)."""

    def add_job(self, func: Callable[..., Any], trigger: Any = None,
                args: Any = None, kwargs: Any = None, id: str | None = None,
                name: str | None = None, **trigger_args: Any) -> Any: ...

    def reschedule_job(self, job_id: str, jobstore: str | None = None,
                       trigger: Any = None, **trigger_args: Any) -> Any: ...

    def remove_job(self, job_id: str, jobstore: str | None = None) -> None: ...

    def get_job(self, job_id: str, jobstore: str | None = None) -> Any: ...

"""``RequestScheduler`` (roadmap 4.3): which pending work runs next, and where.

The decision itself is :func:`olol.placement.place`, a pure function (its
docstring has the rules). This class is its shell: it reads the queue's groups
of similar work (``QueueManager.batch_similar_requests``, the roadmap's
grouping, plus ``peek_summaries`` for sessions and ages), takes a snapshot of
the cluster (which models are loaded where is the
:class:`~olol.cluster.ClusterManager`'s fact, read from its node states; the
scheduler adds only its own slot reservations and when it last sent each
model to each node), calls ``place`` and claims what it returns in the queue.

The lookahead window is kept between decisions: the queue's pending index counts
its changes (``QueueManager.pending_window``), so a decision after no change reads
nothing again, and one after a change reads only the new requests' summaries and
splits again only the groups whose members changed.

Load and service times per node×model are learned from the final records
nodes return (:class:`olol.placement_learn.Timings`, fed by the dispatcher
through :meth:`RequestScheduler.learn`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from olol.ids import new_id
from olol.placement import (
    STRATEGIES,
    ClusterSnapshot,
    NodeView,
    Outcome,
    OutlierView,
    Policy,
    QueueSummary,
    WorkGroup,
    place,
    split_group,
)
from olol.placement_learn import Timings

if TYPE_CHECKING:
    from olol.interfaces import PlacementCluster, SchedulingQueue
    from olol.node_state import NodeState

__all__ = ["STRATEGIES", "Assignment", "NoNodeForModel", "RequestScheduler"]

log = logging.getLogger(__name__)


@dataclass
class Assignment:
    """A batch claimed for one node."""

    node: str
    requests: list[dict]
    model_key: str
    batch_id: str
    mode: str = "single"  # single | coalesced | embed_merge
    cold: bool = False  # the model was not believed loaded on the node when placed


class NoNodeForModel(Exception):
    """No node in the cluster has the model: the request cannot run."""


@dataclass(frozen=True)
class _Window:
    """The lookahead window as placement reads it, at one version of the queue's
    pending index."""

    version: int
    limit: int
    work: tuple[tuple[str, WorkGroup], ...]  # (head id, group without avoid), dispatch order
    counts: Mapping[str, int]  # requests per model in the window (read-only)


class RequestScheduler:
    """Places queued work on nodes through :func:`olol.placement.place` and claims it.

    :param queue_manager: the queue (``peek_summaries``, ``batch_similar_requests``,
        ``dequeue``, ``notify``).
    :param cluster_manager: the cluster view (``healthy_nodes``, ``list_nodes``,
        ``note_loaded``, ``outlier_view``, ``mark_suspect``).
    :param clock: seconds since the epoch (the queue's clock: ages are measured on it).
    """

    def __init__(
        self,
        queue_manager: SchedulingQueue,
        cluster_manager: PlacementCluster,
        *,
        strategy: str = "smart",
        clock: Callable[[], float] = time.time,
        batch_size: int = 8,
        lookahead: int = 64,
        patience_s: float = 3.0,
        spread_factor: float = 2.0,
        default_load_s: float = 1.0,
        default_service_s: float = 1.0,
        on_unplaceable: Callable[[dict, str], None] | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.queue_manager = queue_manager
        self.cluster_manager = cluster_manager
        self.strategy = strategy
        self.clock = clock
        self.batch_size = batch_size
        self.lookahead = lookahead
        self.patience_s = patience_s
        self.spread_factor = spread_factor
        self.default_load_s = default_load_s
        self.default_service_s = default_service_s
        self.on_unplaceable = on_unplaceable
        self.timings = Timings()
        self._lock = threading.Lock()
        self._busy: dict[str, Counter[str]] = {}  # node -> model -> node calls in flight
        self._busy_models: Counter[str] = Counter()  # model -> node calls in flight
        self._node_ver: Counter[str] = Counter()  # node -> changes to what we hold there
        self._views: dict[str, tuple[tuple, NodeView]] = {}  # node -> (what it was made of, view)
        self._held_ver = 0  # changes with any _node_ver
        self._all_views: tuple[tuple, tuple[NodeView, ...]] | None = None  # the last snapshot's
        self._used: dict[str, dict[str, float]] = {}  # node -> model -> last sent (our clock)
        self._capacity: dict[str, int] = {}  # node -> most models its polls showed at once
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._avoid: OrderedDict[str, set[str]] = OrderedDict()  # request id -> nodes
        self._rr = itertools.count()
        # the window, kept between decisions while the queue's pending index is unchanged
        # (read again only where it changed); guarded by _win_lock, not _lock
        self._win_lock = threading.Lock()
        self._win: _Window | None = None
        self._win_info: dict[str, dict] = {}  # request id -> summary, for the window's ids
        self._win_groups: dict[str, tuple[tuple, list]] = {}  # batch key -> (made of, work)

    # ------------------------------------------------------------ inputs
    def _policy(self) -> Policy:
        return Policy(strategy=self.strategy, patience_s=self.patience_s,
                      spread_factor=self.spread_factor, default_load_s=self.default_load_s,
                      default_service_s=self.default_service_s, rr_start=next(self._rr))

    def _node_view(self, node: NodeState) -> NodeView:
        """One node as placement sees it, reused while nothing it is made of changed
        (its last poll, resident models, our reservations, learned times). Caller
        holds the lock."""
        addr = node.address
        loaded: Mapping[str, dict] = node.loaded_models or {}
        key = (node.last_check, tuple(loaded), node.parallel, node.cpu_load, node.vram_free,
               self._node_ver.get(addr, 0), self.timings.version)
        cached = self._views.get(addr)
        if cached is not None and cached[0] == key:
            return cached[1]
        view = self._make_view(node, loaded)
        if len(self._views) > 65_536:
            self._views.clear()
        self._views[addr] = (key, view)
        return view

    def _make_view(self, node: NodeState, loaded: Mapping[str, dict]) -> NodeView:
        addr = node.address
        polled = sum(1 for v in loaded.values() if not (isinstance(v, dict) and v.get("_noted")))
        cap = self._capacity.get(addr, 1)
        if polled > cap:
            cap = self._capacity[addr] = polled
        used = self._used.get(addr, {})
        busy = dict(self._busy.get(addr, ()))
        resident = {m: used.get(m, 0.0) for m in loaded}
        for m in busy:  # a model still loading does not show in /api/ps yet
            resident.setdefault(m, used.get(m, 0.0))
        # A poll replaces the cluster's notes with the node's /api/ps, which may have
        # been read before a model we sent there finished loading: what we sent since
        # about the poll stays resident until a later poll says otherwise.
        since = (node.last_check or 0.0) - 1.0
        for m, t in used.items():
            if t >= since:
                resident.setdefault(m, t)
        load_s, service_s = self.timings.for_node(addr)
        return NodeView(
            address=addr, slots=max(1, int(getattr(node, "parallel", 1) or 1)),
            available=frozenset(node.available_models or ()),
            resident=tuple(sorted(resident.items(), key=lambda kv: kv[1])),
            capacity=cap, busy=busy, usable=True,
            cpu_load=float(getattr(node, "cpu_load", 0.0) or 0.0),
            vram_free=int(getattr(node, "vram_free", None) or 0),
            load_s=load_s, service_s=service_s,
        )

    def _snapshot(self, healthy: list[NodeState], models: Iterable[str]) -> ClusterSnapshot:
        """The cluster for one decision: usable nodes, plus the others (unusable) so
        that a model living only on nodes that are down waits instead of failing.
        Caller holds the lock."""
        version = getattr(self.cluster_manager, "version", None)
        key = (version, tuple(n.address for n in healthy), self._held_ver,
               self.timings.version)
        if version is not None and self._all_views is not None and self._all_views[0] == key:
            views = list(self._all_views[1])  # nothing a view is made of changed
        else:
            views = [self._node_view(n) for n in healthy]
            self._all_views = (key, tuple(views))
        seen = {n.address for n in healthy}
        missing = set(models)
        for v in views:
            if not missing:
                break
            missing -= v.available
        if missing:
            for n in self.cluster_manager.list_nodes():
                if n.address not in seen:
                    have = frozenset(m for m in missing if m in (n.available_models or {}))
                    if have:
                        views.append(NodeView(n.address, available=have, usable=False))
        outliers: dict[str, OutlierView] = {}
        view_of = getattr(self.cluster_manager, "outlier_view", None)
        if view_of is not None:
            for m in models:
                v = view_of(m)
                if v is not None and (v.ejected or v.held or v.limited):
                    outliers[m] = OutlierView(frozenset(v.ejected), frozenset(v.held),
                                              frozenset(v.limited))
        return ClusterSnapshot(tuple(views), outliers, self._sessions)

    def _summary(self, window: list[dict], groups: list[dict]) -> QueueSummary:
        """The queue for placement: ``batch_similar_requests``'s groups, split into
        node calls, with the fields of their head from ``peek_summaries``. Caller
        holds the lock."""
        by_id = {r["id"]: r for r in window}
        work = []
        for g in groups:
            ids = [rid for rid in g["ids"] if rid in by_id]
            if ids:
                work.extend(self._group_work(g, ids, by_id))
        order = {r["id"]: i for i, r in enumerate(window)}
        work.sort(key=lambda hw: order[hw[0]])
        return self._queue_summary(work, Counter(r["model_key"] for r in window))

    def _group_work(self, g: dict, ids: list[str],
                    by_id: Mapping[str, dict]) -> list[tuple[str, WorkGroup]]:
        """One group of ``batch_similar_requests`` (``ids``: its members in the window)
        as placement's work groups, one per endpoint, each with its head's id; their
        ``avoid`` is left empty (:meth:`_queue_summary` fills it)."""
        out = []
        for endpoint_ids in _by_endpoint(ids, by_id):
            units = split_group(endpoint_ids, g.get("coalesced") or {},
                                embed_merge=bool(g.get("embed_merge")),
                                batch_size=self.batch_size)
            head = by_id[units[0].ids[0]]
            out.append((head["id"], WorkGroup(
                model_key=g["model_key"], units=units,
                priority=int(head.get("priority") or 0),
                oldest_ts=float(head.get("enqueued_ts") or 0.0),
                session=head.get("session") or None,
            )))
        return out

    def _queue_summary(self, work: Iterable[tuple[str, WorkGroup]],
                       counts: Mapping[str, int]) -> QueueSummary:
        """Work groups in dispatch order, each with the nodes its head failed on, and
        the demand: the window's requests per model plus our calls in flight. Caller
        holds the lock."""
        avoid = self._avoid
        groups = tuple(wg if not avoid or hid not in avoid
                       else replace(wg, avoid=frozenset(avoid[hid])) for hid, wg in work)
        demand: Counter[str] = Counter(counts)
        demand.update(self._busy_models)
        return QueueSummary(groups, demand)

    def _window(self) -> _Window | None:
        """The lookahead window, read again only where the queue changed: the last
        one while the queue's pending index has the version it was read at; else the
        window's new ids, with summaries for those not seen before, and groups from
        ``batch_similar_requests`` of which only those whose members changed are split
        again. None when the queue cannot tell its version (a plain ``SchedulingQueue``)."""
        fetch = getattr(self.queue_manager, "pending_window", None)
        if fetch is None:
            return None
        limit = self.lookahead
        with self._win_lock:
            cur = self._win
            since = cur.version if cur is not None and cur.limit == limit else None
            got = fetch(limit, since, self._win_info if since is not None else {})
            if got is None:
                return cur  # nothing claimable was added, taken or became due
            try:
                return self._update_window(limit, since, cur, *got)
            except BaseException:
                self._win = None  # half updated: read it all again next time
                self._win_info, self._win_groups = {}, {}
                raise

    def _update_window(self, limit: int, since: int | None, cur: _Window | None, version: int,
                       ids: list[str], fresh: dict[str, dict]) -> _Window:
        """The kept window brought to ``version`` (see :meth:`_window`). Caller holds
        ``_win_lock``."""
        info = self._win_info  # becomes the new window's: drop who left, add who came
        counts: Counter[str] = Counter() if cur is None or since is None else Counter(cur.counts)
        if since is None:
            info.clear()
        elif len(info) + len(fresh) != len(ids):  # some left the window
            now_in = set(ids)
            for rid in [rid for rid in info if rid not in now_in]:
                counts[info.pop(rid)["model_key"]] -= 1
        for rid, summary in fresh.items():
            info[rid] = summary
            counts[summary["model_key"]] += 1
        counts = +counts  # without the models that left
        # Groups are read again in full (the roadmap's grouping); only those whose
        # members changed are split again. A change between the two reads bumps the
        # version past the one kept here: the next decision reads both again.
        groups = self.queue_manager.batch_similar_requests(limit=limit) if ids else []
        old_groups, kept = self._win_groups, {}
        work: list[tuple[str, WorkGroup]] = []
        for g in groups:
            members = [rid for rid in g["ids"] if rid in info]
            if not members:
                continue
            gids = tuple(g["ids"])
            made_of = (g["model_key"], gids,
                       None if len(members) == len(gids) else tuple(members),
                       bool(g.get("embed_merge")), self.batch_size)
            prev = old_groups.get(g["batch_key"])
            items = prev[1] if prev is not None and prev[0] == made_of else \
                self._group_work(g, members, info)
            kept[g["batch_key"]] = (made_of, items)
            work.extend(items)
        if len(work) > len(kept):
            # a group of several endpoints (generate + chat) is several calls: order
            # them by their heads (one call per group is in order already: a group
            # comes in the order of its first member, which heads it)
            order = {rid: i for i, rid in enumerate(ids)}
            work.sort(key=lambda hw: order[hw[0]])
        self._win = _Window(version, limit, tuple(work), counts)
        self._win_groups = kept
        return self._win

    # ------------------------------------------------------------ placement
    def assign_server(self, request_batch: list[dict], *, demand: Counter | None = None) -> str | None:
        """The node for a batch (all one model), or None to wait. Raises NoNodeForModel."""
        first = request_batch[0]
        model = first["model_key"]
        healthy = self.cluster_manager.healthy_nodes()
        with self._lock:
            snap = self._snapshot(healthy, {model})
            group = WorkGroup(model, (split_group([r["id"] for r in request_batch], {},
                                                  embed_merge=False, batch_size=1)[0],),
                              priority=int(first.get("priority") or 0),
                              oldest_ts=float(first.get("enqueued_ts") or self.clock()),
                              session=first.get("session") or None,
                              avoid=frozenset(self._avoid.get(first["id"], ())))
            out = place(snap, QueueSummary((group,), demand or Counter()), self.clock(),
                        self._policy())
        if out.unplaceable:
            raise NoNodeForModel(model)
        return out.decisions[0].node if out.decisions else None

    def avoid(self, request_id: str, node: str) -> None:
        """The request failed on the node: place its retry elsewhere when possible."""
        with self._lock:
            self._avoid.setdefault(request_id, set()).add(node)
            self._avoid.move_to_end(request_id)
            while len(self._avoid) > 10_000:  # bounded: forget the oldest
                self._avoid.popitem(last=False)

    def forget(self, request_id: str) -> None:
        """The request is over: drop what was noted about it."""
        with self._lock:
            self._avoid.pop(request_id, None)

    def learn(self, node: str, model_key: str, record: Any) -> None:
        """A call ended with this final record: learn the node×model's load and
        service times (:class:`~olol.placement_learn.Timings`)."""
        self.timings.note(node, model_key, record)

    # ------------------------------------------------------------ batches
    def schedule_next_batch(self, only: str | None = None,
                            now: float | None = None) -> Assignment | None:
        """Claim the next batch some node can take now, or None.

        ``now`` is the clock value to decide at (default: the scheduler's clock).

        ``only`` restricts the choice to batches led by that request id (a front
        door thread running its own request); nothing else is claimed then.

        The decision is made under the scheduler's lock and reserves the node's
        slot; the durable claim in the queue happens outside it, so one claim's
        fsync never holds up other dispatcher threads.
        """
        got = self._decide(only, now, reserve=True)
        if got is None:
            return None
        out, now = got
        decision = out.decisions[0] if out.decisions else None
        for group in out.unplaceable:
            self._unplaceable([rid for u in group.units for rid in u.ids])
        if decision is None:
            return None
        batch_id = new_id()
        claimed = self.queue_manager.dequeue(
            len(decision.ids), ids=list(decision.ids), server=decision.node, batch_id=batch_id
        )
        if not claimed:
            with self._lock:
                self._reserve(decision.node, decision.model_key, -1)
            return None
        node, model = decision.node, decision.model_key
        self.cluster_manager.note_loaded(node, model)
        with self._lock:
            self._used.setdefault(node, {})[model] = now
            self._touch(node)
            head = next((r for r in claimed if r["id"] == decision.ids[0]), claimed[0])
            session = head.get("session")
            if session and self.strategy == "smart":
                self._sessions[session] = node
                self._sessions.move_to_end(session)
                while len(self._sessions) > 100_000:  # bounded: forget the oldest
                    self._sessions.popitem(last=False)
        claimed.sort(key=lambda r: r["id"] != head["id"])  # the head leads its batch
        mode = decision.mode if len(claimed) > 1 else "single"
        return Assignment(node=node, requests=claimed, model_key=model,
                          batch_id=batch_id, mode=mode, cold=decision.cold)

    def plan_next(self, now: float | None = None) -> Outcome | None:
        """What placement would decide now, claiming and reserving nothing (None: the
        queue is empty). For explanations and benchmarks."""
        got = self._decide(None, now, reserve=False)
        return got[0] if got is not None else None

    def _decide(self, only: str | None, now: float | None,
                *, reserve: bool) -> tuple[Outcome, float] | None:
        win = self._window()
        window: list[dict] = []
        if win is None:  # a queue without versions: read the whole window
            window = self.queue_manager.peek_summaries(self.lookahead)
            if not window:
                return None
            groups = self.queue_manager.batch_similar_requests(limit=self.lookahead)
            models: Iterable[str] = {r["model_key"] for r in window}
        elif not win.counts:
            return None
        else:
            models = win.counts.keys()
        healthy = self.cluster_manager.healthy_nodes()  # one look at the cluster per pass
        with self._lock:
            summary = (self._summary(window, groups) if win is None
                       else self._queue_summary(win.work, win.counts))
            snap = self._snapshot(healthy, models)
            now = self.clock() if now is None else now
            out = place(snap, summary, now, self._policy(), only=only)
            if reserve and out.decisions:
                d = out.decisions[0]
                self._reserve(d.node, d.model_key, +1)
        return out, now

    def _unplaceable(self, ids: list[str]) -> None:
        for r in self.queue_manager.dequeue(len(ids), ids=ids):
            if self.on_unplaceable is not None:
                self.on_unplaceable(r, f"model '{r['model']}' not found")

    def _touch(self, node: str) -> None:
        """What we hold on ``node`` changed: its view (and the last snapshot) are stale.
        Caller holds the lock."""
        self._node_ver[node] += 1
        self._held_ver += 1

    def _reserve(self, node: str, model_key: str, delta: int) -> None:
        """Count one node call (a slot) in or out. Caller holds the lock."""
        self._touch(node)
        self._busy_models[model_key] += delta
        if self._busy_models[model_key] <= 0:
            del self._busy_models[model_key]
        busy = self._busy.setdefault(node, Counter())
        busy[model_key] += delta
        if busy[model_key] <= 0:
            del busy[model_key]
        if not busy:
            del self._busy[node]

    def slots_in_use(self) -> dict[str, int]:
        """Node calls (slots) this scheduler holds now, by node address."""
        with self._lock:
            return {node: sum(busy.values()) for node, busy in self._busy.items()}

    def release(self, assignment: Assignment) -> None:
        """The node call of an assignment ended (any outcome)."""
        with self._lock:
            self._reserve(assignment.node, assignment.model_key, -1)
        self.queue_manager.notify(everyone=False)  # one slot: one thread may use it

    def handle_server_failure(self, server_address: str, reason: str = "") -> None:
        """A node failed a call: avoid it until it answers a health poll again."""
        log.warning("node %s failed: %s", server_address, reason or "unknown error")
        self.cluster_manager.mark_suspect(server_address, reason)
        with self._lock:
            self._used.pop(server_address, None)
            self._touch(server_address)
            for session, addr in list(self._sessions.items()):
                if addr == server_address:
                    del self._sessions[session]
        self.queue_manager.notify()


def _by_endpoint(ids: list[str], by_id: Mapping[str, dict]) -> list[list[str]]:
    """A group's ids split by endpoint (generate and chat share a runner but are
    different node calls), each list in the group's order."""
    out: dict[str, list[str]] = {}
    for rid in ids:
        out.setdefault(by_id[rid]["endpoint"], []).append(rid)
    return list(out.values())

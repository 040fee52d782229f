"""``RequestScheduler`` (roadmap 4.3): which pending work runs next, and where.

The scheduler looks ahead in the queue (``QueueManager.peek``) and, request by
request in dispatch order, asks ``assign_server`` for a node. A request whose
best node is busy is skipped for now, so work that can run without a model
load goes first; patience bounds how long that can last.

Placement (strategy ``smart``):

1. only healthy nodes that have the model on disk, and are not ejected for it by
   outlier detection (:mod:`olol.outliers`; a node×model that failed where its
   peers succeed); a node that failed this very request before, or whose failure
   for the model is being checked, only when no other node can take it; at most
   one call in flight on a node×model whose last call failed;
2. session affinity: an ``X-OLOL-Session`` stays on its node while that node is healthy;
3. a node that has the model loaded and a free slot (never more in flight on a
   node and model than its parallel slots), the one with the most headroom;
4. when every node holding it is full, wait for a slot — unless demand for the
   model exceeds what those nodes can serve, then load it on an idle node
   whose loaded models nobody is waiting for;
5. when no node holds it, load it where that displaces the least demand,
   preferring idle nodes; after ``patience_s`` take the best node even if busy.

``round-robin`` and ``least-busy`` are baselines: slots are respected, loaded
models are ignored.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from olol.outliers import EMPTY_VIEW

log = logging.getLogger(__name__)

STRATEGIES = ("smart", "least-busy", "round-robin")


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


class RequestScheduler:
    def __init__(
        self,
        queue_manager: Any,
        cluster_manager: Any,
        *,
        strategy: str = "smart",
        clock: Callable[[], float] = time.time,
        batch_size: int = 8,
        lookahead: int = 64,
        patience_s: float = 3.0,
        spread_factor: float = 2.0,
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
        self.on_unplaceable = on_unplaceable
        self._lock = threading.Lock()
        self._inflight: Counter[tuple[str, str]] = Counter()
        self._node_inflight: Counter[str] = Counter()
        self._loaded: dict[str, OrderedDict[str, float]] = {}
        self._synced_check: dict[str, float | None] = {}
        self._capacity: dict[str, int] = {}
        self._sessions: dict[str, str] = {}
        self._avoid: OrderedDict[str, set[str]] = OrderedDict()  # request id -> nodes
        self._rr = itertools.count()

    # ------------------------------------------------------------ node views
    def _sync_loaded(self, node: Any) -> OrderedDict[str, float]:
        """What we believe is loaded on a node: its last poll plus what we sent since."""
        addr = node.address
        believed = self._loaded.setdefault(addr, OrderedDict())
        if self._synced_check.get(addr) != node.last_check:
            self._synced_check[addr] = node.last_check
            polled = list(node.loaded_models or {})
            self._capacity[addr] = max(self._capacity.get(addr, 1), len(polled))
            since = (node.last_check or 0.0) - 1.0
            # keep what we sent since the poll, and whatever is running there now
            # (a model still loading does not show in /api/ps yet)
            recent = {m: t for m, t in believed.items()
                      if t >= since or self._inflight[(addr, m)] > 0}
            fresh: OrderedDict[str, float] = OrderedDict((m, 0.0) for m in polled)
            for m, t in sorted(recent.items(), key=lambda kv: kv[1]):
                fresh.pop(m, None)
                fresh[m] = t
            believed = self._loaded[addr] = fresh
            self._trim(addr)
        return believed

    def _trim(self, addr: str) -> None:
        believed = self._loaded[addr]
        cap = self._capacity.get(addr, 1)
        while len(believed) > cap:
            # evict the least recently used model that has nothing in flight
            for m in believed:
                if self._inflight[(addr, m)] == 0:
                    del believed[m]
                    break
            else:
                break

    def _note_dispatch(self, addr: str, model_key: str) -> None:
        believed = self._loaded.setdefault(addr, OrderedDict())
        believed.pop(model_key, None)
        believed[model_key] = self.clock()
        self._trim(addr)

    def _slots(self, node: Any) -> int:
        return max(1, int(getattr(node, "parallel", 1) or 1))

    def _free(self, node: Any, model_key: str) -> bool:
        return self._inflight[(node.address, model_key)] < self._slots(node)

    def _headroom_key(self, node: Any) -> tuple:
        return (
            self._node_inflight[node.address] / self._slots(node),
            float(getattr(node, "cpu_load", 0.0) or 0.0),
            -(getattr(node, "vram_free", None) or 0),
            node.address,
        )

    # ------------------------------------------------------------ placement
    def assign_server(self, request_batch: list[dict], *, demand: Counter | None = None) -> str | None:
        """The node for a batch (all one model), or None to wait. Raises NoNodeForModel."""
        healthy = self._healthy()
        with self._lock:
            return self._assign(request_batch, demand or Counter(), healthy)

    def _healthy(self) -> dict[str, Any]:
        return {n.address: n for n in self.cluster_manager.healthy_nodes()}

    def _outlier_view(self, model_key: str) -> Any:
        view = getattr(self.cluster_manager, "outlier_view", None)
        return view(model_key) if view is not None else None

    def _assign(self, batch: list[dict], demand: Counter, healthy: dict[str, Any]) -> str | None:
        first = batch[0]
        model_key = first["model_key"]
        nodes = [n for n in healthy.values() if model_key in (n.available_models or {})]
        if not nodes:
            if not any(model_key in (n.available_models or {})
                       for n in self.cluster_manager.list_nodes()):
                raise NoNodeForModel(model_key)
            return None  # the model lives only on nodes that are down now: wait
        nodes = self._outlier_filter(nodes, model_key, self._avoid.get(first["id"]))
        if not nodes:
            return None  # ejected, or one call at a time: wait
        for n in nodes:
            self._sync_loaded(n)
        if self.strategy == "round-robin":
            start = next(self._rr)
            ordered = sorted(nodes, key=lambda n: n.address)
            for i in range(len(ordered)):
                n = ordered[(start + i) % len(ordered)]
                if self._free(n, model_key):
                    return n.address
            return None
        if self.strategy == "least-busy":
            free = [n for n in nodes if self._free(n, model_key)]
            return min(free, key=self._headroom_key).address if free else None

        session = first.get("session")
        if session and self._sessions.get(session) in healthy:
            pinned = healthy[self._sessions[session]]
            if pinned in nodes:
                return pinned.address if self._free(pinned, model_key) else None
        loaded = [n for n in nodes if model_key in self._loaded.get(n.address, {})]
        free_loaded = [n for n in loaded if self._free(n, model_key)]
        if free_loaded:
            return min(free_loaded, key=self._headroom_key).address

        def displaced(n: Any) -> int:
            return sum(demand[m] for m in self._loaded.get(n.address, {}) if m != model_key)

        idle = [
            n for n in nodes
            if n not in loaded and self._node_inflight[n.address] == 0 and displaced(n) == 0
        ]
        if loaded:
            capacity = sum(self._slots(n) for n in loaded)
            if idle and demand[model_key] > self.spread_factor * capacity:
                return min(idle, key=self._eviction_key).address
            return None
        if idle:
            return min(idle, key=self._eviction_key).address
        best = min(nodes, key=lambda n: (displaced(n), self._node_inflight[n.address],
                                         self._eviction_key(n)))
        waited = self.clock() - float(first.get("enqueued_ts") or self.clock())
        if displaced(best) == 0 and self._free(best, model_key):
            return best.address
        return best.address if waited >= self.patience_s and self._free(best, model_key) else None

    def _outlier_filter(self, nodes: list[Any], model_key: str,
                        avoid: set[str] | None) -> list[Any]:
        """Drop nodes ejected for the model, and limited ones that have their one
        call; drop those this request failed on, or whose failure for the model is
        being checked, while another node can take it (now or once it is free).
        Caller holds the lock."""
        view = self._outlier_view(model_key)
        if view is None:
            view = EMPTY_VIEW
        serving = [n for n in nodes if n.address not in view.ejected]
        usable = [n for n in serving if not (
            n.address in view.limited and self._inflight[(n.address, model_key)] > 0)]
        if not avoid and not view.held:
            return usable
        avoid = avoid or set()
        fresh = [n for n in usable if n.address not in avoid]
        best = [n for n in fresh if n.address not in view.held]
        if best or fresh:
            return best or fresh  # a node being checked beats one this request failed on
        if any(n.address not in avoid for n in serving):
            return []  # a node it has not failed on can take it once free: wait for it
        return usable

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

    def _eviction_key(self, node: Any) -> tuple:
        """Loading here costs least: a node with room first, else the one whose
        least recently used model was used longest ago."""
        believed = self._loaded.get(node.address, {})
        full = len(believed) >= self._capacity.get(node.address, 1)
        lru = min(believed.values()) if (full and believed) else 0.0
        return (full, lru, self._headroom_key(node))

    # ------------------------------------------------------------ batches
    def schedule_next_batch(self, only: str | None = None) -> Assignment | None:
        """Claim the next batch some node can take now, or None.

        ``only`` restricts the choice to batches led by that request id (a front
        door thread running its own request); nothing else is claimed then.

        The decision is made under the scheduler's lock and reserves the node's
        slot; the durable claim in the queue happens outside it, so one claim's
        fsync never holds up other dispatcher threads.
        """
        window = self.queue_manager.peek_summaries(self.lookahead)
        if not window:
            return None
        unplaceable: list[dict] = []
        plan = None
        healthy = self._healthy()  # one look at the cluster per pass
        with self._lock:
            demand: Counter = Counter(r["model_key"] for r in window)
            for (_, m), n in self._inflight.items():
                demand[m] += n
            tried: set[tuple[str, str | None]] = set()
            for req in window:
                if only is not None and req["id"] != only:
                    continue
                group_key = (req["model_key"], req.get("batch_key"))
                if group_key in tried:
                    continue
                tried.add(group_key)
                try:
                    node = self._assign([req], demand, healthy)
                except NoNodeForModel:
                    unplaceable.append(req)
                    continue
                if node is not None:
                    plan = self._plan(node, req, window)
                    self._reserve(node, req["model_key"], +1)
                    break
        for req in unplaceable:
            self._unplaceable(req)
        if plan is None:
            return None
        node, head, chosen, mode = plan
        batch_id = uuid.uuid4().hex
        claimed = self.queue_manager.dequeue(
            len(chosen), ids=[r["id"] for r in chosen], server=node, batch_id=batch_id
        )
        with self._lock:
            if not claimed:
                self._reserve(node, head["model_key"], -1)
                return None
            cold = head["model_key"] not in self._loaded.get(node, {})
            self._note_dispatch(node, head["model_key"])
            session = head.get("session")
            if session and self.strategy == "smart":
                self._sessions[session] = node
                if len(self._sessions) > 100_000:  # bounded: forget the oldest
                    self._sessions.pop(next(iter(self._sessions)))
        if mode != "single" and len(claimed) == 1:
            mode = "single"
        return Assignment(node=node, requests=claimed, model_key=head["model_key"],
                          batch_id=batch_id, mode=mode, cold=cold)

    def _unplaceable(self, req: dict) -> None:
        for r in self.queue_manager.dequeue(ids=[req["id"]]):
            if self.on_unplaceable is not None:
                self.on_unplaceable(r, f"model '{r['model']}' not found")

    def _plan(self, node: str, head: dict, window: list[dict]) -> tuple:
        """Which requests ride along with ``head`` in one node call."""
        model_key, batch_key = head["model_key"], head.get("batch_key")
        mates = [
            r for r in window
            if r["model_key"] == model_key and r.get("batch_key") == batch_key
            and r["endpoint"] == head["endpoint"]
        ]
        if head["endpoint"] == "embed" and len(mates) > 1:
            return node, head, mates[: max(self.batch_size, 1) * 4], "embed_merge"
        if head.get("coalesce_key"):
            chosen = [r for r in mates if r.get("coalesce_key") == head["coalesce_key"]]
            return node, head, chosen, "coalesced" if len(chosen) > 1 else "single"
        return node, head, [head], "single"

    def _reserve(self, node: str, model_key: str, delta: int) -> None:
        """Count one node call (a slot) in or out. Caller holds the lock."""
        key = (node, model_key)
        self._inflight[key] += delta
        if self._inflight[key] <= 0:
            del self._inflight[key]
        self._node_inflight[node] += delta
        if self._node_inflight[node] <= 0:
            del self._node_inflight[node]

    def slots_in_use(self) -> dict[str, int]:
        """Node calls (slots) this scheduler holds now, by node address."""
        with self._lock:
            return dict(self._node_inflight)

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
            self._loaded.pop(server_address, None)
            self._synced_check.pop(server_address, None)
            for session, addr in list(self._sessions.items()):
                if addr == server_address:
                    del self._sessions[session]
        self.queue_manager.notify()

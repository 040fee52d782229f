"""Placement as a pure function: which queued work runs next, and on which node.

:func:`place` takes a frozen :class:`ClusterSnapshot` (per node: usable or not,
slots total and busy, the models resident and present, learned load and service
times), a :class:`QueueSummary` (the queue's groups of similar work, in dispatch
order, with per-model demand) and the clock value, and returns
:class:`Decision`\\ s. It reads no clock, takes no lock and does no I/O:
:class:`olol.scheduler.RequestScheduler` builds the inputs and claims what it
returns, and ``tests/placement`` drives it with scenario tables.

Rules (strategy ``smart``), for each unit of work in dispatch order:

1. only usable nodes that have the model on disk and are not ejected for it
   (:mod:`olol.outliers`); a node the request failed on before, or whose failure
   for the model is being checked, only when no other node can take it; at most
   one call in flight on a node×model whose last call failed;
2. session affinity: an ``X-OLOL-Session`` stays on its node while it is usable;
3. a node where the model is resident with a free slot, the one with the most
   headroom;
4. when every node holding it is full, wait for a slot, unless demand exceeds
   ``spread_factor`` times their slots *and* the time saved by a second copy
   beats its load time: then load it on an idle node whose resident models
   nobody is waiting for;
5. when no node holds it, load it where that displaces the least demand,
   preferring idle nodes; once the work has waited ``patience_s`` (ageing), take
   the best node even if that evicts a model others want — never one that is
   running (a model with calls in flight is not evicted).

``round-robin`` and ``least-busy`` are baselines: slots are respected, resident
models are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

STRATEGIES = ("smart", "least-busy", "round-robin")
MODES = ("single", "coalesced", "embed_merge")

@dataclass(frozen=True)
class OutlierView:
    """What placement must respect for one model (see :class:`olol.outliers.ModelView`)."""

    ejected: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    limited: frozenset[str] = frozenset()


NO_OUTLIERS = OutlierView()


@dataclass(frozen=True, eq=False)  # compared by identity: cheap membership tests
class NodeView:
    """One node at one moment.

    :param resident: models believed loaded, least recently used first, each with
        the time it was last sent work (0 when only a poll reported it).
    :param capacity: how many models the node keeps resident at once.
    :param busy: node calls in flight per model (the node's slots in use).
    :param load_s: learned seconds to load a model here (absent: not learned).
    :param service_s: learned seconds one call of a model takes here, load excluded.
    """

    address: str
    slots: int = 1
    available: frozenset[str] = frozenset()
    resident: tuple[tuple[str, float], ...] = ()
    capacity: int = 1
    busy: Mapping[str, int] = field(default_factory=dict)
    usable: bool = True
    cpu_load: float = 0.0
    vram_free: int = 0
    load_s: Mapping[str, float] = field(default_factory=dict)
    service_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slots < 1:  # a node always has at least one slot
            object.__setattr__(self, "slots", 1)

    @property
    def in_flight(self) -> int:
        return sum(self.busy.values())

    def effective_resident(self) -> tuple[tuple[str, float], ...]:
        """``resident`` trimmed to ``capacity``: the least recently used models go
        first, except those with calls in flight (a running model stays)."""
        items = list(self.resident)
        cap = max(1, self.capacity)
        i = 0
        while len(items) > cap and i < len(items):
            if self.busy.get(items[i][0], 0) > 0:
                i += 1
            else:
                del items[i]
        return tuple(items)


@dataclass(frozen=True)
class ClusterSnapshot:
    """Every node (usable or not), outlier views by model, session pins."""

    nodes: tuple[NodeView, ...]
    outliers: Mapping[str, OutlierView] = field(default_factory=dict)
    sessions: Mapping[str, str] = field(default_factory=dict)

    def index(self, wanted: Iterable[str] = ()) -> _Index:
        return _Index(self, wanted)


@dataclass(frozen=True)
class Unit:
    """One node call's worth of work: its request ids, head first."""

    ids: tuple[str, ...]
    mode: str = "single"


@dataclass(frozen=True)
class WorkGroup:
    """Similar queued work (one model and runner), in dispatch order
    (``QueueManager.batch_similar_requests``), split into node calls."""

    model_key: str
    units: tuple[Unit, ...]
    priority: int = 0
    oldest_ts: float = 0.0
    session: str | None = None  # the head unit's session
    avoid: frozenset[str] = frozenset()  # nodes the head request failed on

    @property
    def head(self) -> Unit:
        return self.units[0]


@dataclass(frozen=True)
class QueueSummary:
    """The queue as placement sees it.

    :param groups: work groups in dispatch order.
    :param demand: requests per model waiting or running (the weight of a model
        on a node: what evicting it would displace).
    """

    groups: tuple[WorkGroup, ...]
    demand: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    strategy: str = "smart"
    patience_s: float = 3.0
    spread_factor: float = 2.0
    default_load_s: float = 1.0
    default_service_s: float = 1.0
    rr_start: int = 0  # round-robin's rotating start

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; "
                             f"choose one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Decision:
    """Run ``ids`` (one node call) on ``node``; ``cold`` when the model was not
    believed resident there."""

    node: str
    model_key: str
    ids: tuple[str, ...]
    mode: str = "single"
    cold: bool = False


@dataclass(frozen=True)
class Outcome:
    """What :func:`place` decided: assignments, and groups whose model no node has."""

    decisions: tuple[Decision, ...] = ()
    unplaceable: tuple[WorkGroup, ...] = ()


class _Index:
    """Per-call memo over a snapshot: nodes by model (one pass over the nodes for
    the models the queue wants), resident sets."""

    # models looked up one scan each before one pass builds the index for the rest
    LAZY = 8

    def __init__(self, snap: ClusterSnapshot, wanted: Iterable[str] = ()) -> None:
        self.snap = snap
        self._wanted = set(wanted)
        self._holders: dict[str, list[NodeView]] = {}
        self._known: dict[str, bool] = {}
        self._resident: dict[str, dict[str, float]] = {}
        self._placed: dict[str, NodeView] = {}  # nodes as updated by this call's decisions

    def _build(self) -> None:
        rest = self._wanted - self._holders.keys()
        holders: dict[str, list[NodeView]] = {m: [] for m in rest}
        known = dict.fromkeys(rest, False)
        if holders:
            for n in self.snap.nodes:
                avail = n.available
                # iterate the smaller side: a node's models or the wanted ones
                for m in (avail if len(avail) < len(holders) else holders):
                    if m in holders and m in avail:
                        known[m] = True
                        if n.usable:
                            holders[m].append(self._placed.get(n.address, n))
        self._holders.update(holders)
        self._known.update(known)

    def holders(self, model: str) -> list[NodeView]:
        got = self._holders.get(model)
        if got is None and len(self._holders) >= self.LAZY and model in self._wanted:
            self._build()
            got = self._holders.get(model)
        if got is None:
            got = self._holders[model] = [self._placed.get(n.address, n) for n in self.snap.nodes
                                          if n.usable and model in n.available]
            self._known[model] = bool(got) or any(model in n.available for n in self.snap.nodes)
        return got

    def known(self, model: str) -> bool:
        self.holders(model)
        return self._known[model]

    def resident(self, node: NodeView) -> dict[str, float]:
        got = self._resident.get(node.address)
        if got is None:
            got = self._resident[node.address] = dict(node.effective_resident())
        return got

    def update(self, node: NodeView, model: str, now: float) -> NodeView:
        """The node after a call of ``model`` was placed on it (within one call of place)."""
        busy = dict(node.busy)
        busy[model] = busy.get(model, 0) + 1
        resident = tuple((m, t) for m, t in node.resident if m != model) + ((model, now),)
        new = replace(node, busy=busy, resident=resident)
        self._placed[node.address] = new
        self._resident.pop(node.address, None)
        for lst in self._holders.values():
            for i, n in enumerate(lst):
                if n.address == node.address:
                    lst[i] = new
        return new


def place(snapshot: ClusterSnapshot, queue: QueueSummary, now: float,
          policy: Policy = Policy(), *, limit: int = 1, only: str | None = None) -> Outcome:
    """Decide up to ``limit`` node calls (see the module docstring).

    Each group is tried once, by its head unit; a decision counts its slot in
    the decisions that follow it. ``only`` restricts the choice to the unit led by
    that request id. Groups whose model no node has (usable or not) are returned
    as ``unplaceable``.
    """
    idx = snapshot.index({g.model_key for g in queue.groups})
    demand = queue.demand
    decisions: list[Decision] = []
    unplaceable: list[WorkGroup] = []
    rr = policy.rr_start
    for group in queue.groups:
        if len(decisions) >= limit:
            break
        unit = group.head
        if only is not None and (not unit.ids or unit.ids[0] != only):
            continue
        model = group.model_key
        if not idx.holders(model):
            if not idx.known(model):
                unplaceable.append(group)
            continue  # the model lives only on nodes that are down now: wait
        node = _choose(idx, group, demand, now, policy, rr)
        rr += 1
        if node is None:
            continue
        cold = model not in idx.resident(node)
        idx.update(node, model, now)
        decisions.append(Decision(node.address, model, unit.ids, unit.mode, cold))
    return Outcome(tuple(decisions), tuple(unplaceable))


def _slots(n: NodeView) -> int:
    return n.slots


def _free(n: NodeView, model: str) -> bool:
    return n.busy.get(model, 0) < n.slots


def _headroom(n: NodeView) -> tuple:
    return (n.in_flight / _slots(n), n.cpu_load, -n.vram_free, n.address)


def _choose(idx: _Index, group: WorkGroup, demand: Mapping[str, int], now: float,
            policy: Policy, rr: int) -> NodeView | None:
    model = group.model_key
    holders = idx.holders(model)
    if not any(n.busy.get(model, 0) < n.slots for n in holders):
        return None  # every way below needs a free slot on a node that has the model
    nodes = _outlier_filter(holders, model,
                            idx.snap.outliers.get(model, NO_OUTLIERS), group.avoid)
    if not nodes:
        return None  # ejected, or one call at a time: wait
    if policy.strategy == "round-robin":
        ordered = sorted(nodes, key=lambda n: n.address)
        for i in range(len(ordered)):
            n = ordered[(rr + i) % len(ordered)]
            if _free(n, model):
                return n
        return None
    if policy.strategy == "least-busy":
        free = [n for n in nodes if _free(n, model)]
        return min(free, key=_headroom) if free else None

    if group.session:
        pinned = idx.snap.sessions.get(group.session)
        for n in nodes:
            if n.address == pinned:
                return n if _free(n, model) else None
    loaded = [n for n in nodes if model in idx.resident(n)]
    free_loaded = [n for n in loaded if _free(n, model)]
    if free_loaded:
        return min(free_loaded, key=_headroom)

    def displaced(n: NodeView) -> int:
        return sum(demand.get(m, 0) for m in idx.resident(n) if m != model)

    def evicts_running(n: NodeView) -> bool:
        # a node with every resident model running has no room for another one
        res = idx.resident(n)
        return len(res) >= max(1, n.capacity) and all(n.busy.get(m, 0) > 0 for m in res)

    idle = [n for n in nodes
            if n not in loaded and n.in_flight == 0 and displaced(n) == 0]
    if loaded:
        if idle:
            target = min(idle, key=lambda n: _eviction_key(idx, n))
            if _worth_spreading(idx, loaded, target, demand.get(model, 0), model, policy):
                return target
        return None
    if idle:
        return min(idle, key=lambda n: _eviction_key(idx, n))
    candidates = [n for n in nodes if _free(n, model) and not evicts_running(n)]
    if not candidates:
        return None
    best = min(candidates, key=lambda n: (displaced(n), n.in_flight, _eviction_key(idx, n)))
    if displaced(best) == 0:
        return best
    waited = now - group.oldest_ts
    return best if waited >= policy.patience_s else None


def _worth_spreading(idx: _Index, loaded: list[NodeView], target: NodeView, demand: int,
                     model: str, policy: Policy) -> bool:
    """Whether loading another copy on ``target`` beats waiting for the nodes that have
    it: demand above ``spread_factor`` times their slots, and the backlog ending
    sooner with the copy, counting its load (during which the nodes that have the
    model keep serving), by more than the reload of the model it evicts when no
    other node keeps that one resident."""
    capacity = sum(_slots(n) for n in loaded)
    if demand <= policy.spread_factor * capacity:
        return False
    service = max(1e-6, min(n.service_s.get(model, policy.default_service_s) for n in loaded))
    added = _slots(target)
    load = target.load_s.get(model, policy.default_load_s)
    # Calls are whole: the backlog ends after ceil(demand / capacity) rounds. The
    # nodes that have the model go on serving while the copy loads; the copy helps
    # only with what is left when it is ready.
    now_ends = math.ceil(demand / capacity) * service
    left = demand - math.floor(load / service) * capacity
    if left <= 0:
        return False
    copy_ends = load + math.ceil(left / (capacity + added)) * service
    cost = 0.0
    res = idx.resident(target)
    if res and len(res) >= max(1, target.capacity):
        evicted = min(res, key=lambda m: res[m])
        if not any(n is not target and evicted in idx.resident(n)
                   for n in idx.holders(evicted)):
            cost = target.load_s.get(evicted, policy.default_load_s)  # its reload, later
    return now_ends - copy_ends > cost


def _eviction_key(idx: _Index, n: NodeView) -> tuple:
    """Loading here costs least: a node with room first, else the one whose least
    recently used model was used longest ago."""
    res = idx.resident(n)
    full = len(res) >= max(1, n.capacity)
    lru = min(res.values()) if (full and res) else 0.0
    return (full, lru, _headroom(n))


def _outlier_filter(nodes: list[NodeView], model: str, view: OutlierView,
                    avoid: frozenset[str]) -> list[NodeView]:
    """Drop nodes ejected for the model, and limited ones that have their one call;
    drop those this request failed on, or whose failure for the model is being
    checked, while another node can take it (now or once it is free)."""
    serving = [n for n in nodes if n.address not in view.ejected] if view.ejected else nodes
    usable = [n for n in serving
              if not (n.address in view.limited and n.busy.get(model, 0) > 0)]
    if not avoid and not view.held:
        return usable
    fresh = [n for n in usable if n.address not in avoid]
    best = [n for n in fresh if n.address not in view.held]
    if best or fresh:
        return best or fresh  # a node being checked beats one this request failed on
    if any(n.address not in avoid for n in serving):
        return []  # a node it has not failed on can take it once free: wait for it
    return usable


def split_group(ids: Iterable[str], coalesced: Mapping[str, list[str]], *, embed_merge: bool,
                batch_size: int) -> tuple[Unit, ...]:
    """Node calls for one group of ``batch_similar_requests``: a group of embeds is
    merged (``4 * batch_size`` inputs at most per call); requests sharing a
    coalesce key are one call; any other request is a call of its own."""
    ids = list(ids)
    if embed_merge and len(ids) > 1:
        step = max(1, batch_size) * 4
        return tuple(Unit(tuple(ids[i:i + step]), "embed_merge" if len(ids[i:i + step]) > 1
                          else "single") for i in range(0, len(ids), step))
    member: dict[str, tuple[str, ...]] = {}
    for rids in coalesced.values():
        if len(rids) > 1:
            for rid in rids:
                member[rid] = tuple(rids)
    units: list[Unit] = []
    seen: set[str] = set()
    for rid in ids:
        if rid in seen:
            continue
        together = member.get(rid)
        if together:
            seen.update(together)
            units.append(Unit(together, "coalesced"))
        else:
            units.append(Unit((rid,)))
    return tuple(units)

"""The distribution planner: a pure function from a snapshot of the cluster to a plan.

Same inputs, same plan: models and nodes are visited in sorted order, ties are broken
by address, and nothing here reads a clock or the network. The registry builds the
inputs (:class:`PlanModel`, :class:`PlanNode`) and runs the plan.

Rules:

* **add** a copy when a model has fewer live copies than the minimum (``copies``),
  when it is used a lot (``usage_count >= hot_usage`` and used within ``idle_s``:
  one copy more than the minimum), or when every node holding it is busy
  (``load >= busy_load``: one copy more than now); never above ``max_copies``. The
  target is a usable node without the model where it fits with headroom: free disk
  minus the size stays above ``headroom_fraction`` of the disk, and the node's memory
  (RAM or VRAM) can hold it. Earlier adds of the same plan are charged to the node.
* **remove** a copy that has been idle for ``idle_s``, beyond the minimum, never of a
  pinned model, never one loaded on that node, never the last live copy, and never for
  a model the same plan adds copies to. A copy's idle time counts from its last request
  on that node or, when later (or when it never served one), from when the copy
  appeared on the node (``node_first_seen_ts``: first listed there, or pulled there);
  never from the epoch. A copy with no known appearance counts as just appeared, so a
  copy pulled a moment ago is never proposed for removal.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlanPolicy:
    copies: int = 1
    max_copies: int = 3
    hot_usage: int = 100
    idle_s: float = 7 * 24 * 3600.0
    busy_load: float = 0.75
    headroom_fraction: float = 0.10


@dataclass
class PlanModel:
    name: str
    size: int | None
    holders: list[str]
    loaded_on: list[str] = field(default_factory=list)
    pulling: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    usage_count: int = 0
    last_used_ts: float | None = None
    node_last_used_ts: dict[str, float] = field(default_factory=dict)
    pinned: bool = False
    #: when the copy appeared on each node (seconds since the epoch)
    node_first_seen_ts: dict[str, float] = field(default_factory=dict)

    def idle_since(self, node: str, now: float) -> float:
        """Since when the copy on ``node`` has been idle: its last request there, or
        when it appeared there if that is later; ``now`` when neither is known."""
        marks = [t for t in (self.node_last_used_ts.get(node),
                             self.node_first_seen_ts.get(node)) if t is not None]
        return max(marks) if marks else now


@dataclass
class PlanNode:
    address: str
    usable: bool
    disk_free: int | None
    disk_total: int | None
    memory_total: int | None
    load: float = 0.0


def fits(node: PlanNode, size: int | None, free: int | None, headroom_fraction: float) -> bool:
    """Whether a model of ``size`` bytes fits on ``node`` with ``free`` disk left."""
    if size is None or free is None:
        return False
    reserve = int((node.disk_total or 0) * headroom_fraction)
    if free - size < reserve:
        return False
    return node.memory_total is None or node.memory_total >= size


def make_plan(models: list[PlanModel], nodes: list[PlanNode], policy: PlanPolicy,
              now: float) -> dict:
    """Build the plan: ``{"actions": [...], "skipped": [...], "policy": {...}}``."""
    usable = {n.address: n for n in sorted(nodes, key=lambda n: n.address) if n.usable}
    free = {a: n.disk_free for a, n in usable.items()}
    actions: list[dict] = []
    skipped: list[dict] = []
    for model in sorted(models, key=lambda m: m.name):
        live = sorted(a for a in model.holders if a in usable)
        if not live:
            if model.holders or model.stale:
                skipped.append({"model": model.name, "reason": "no live copy"})
            continue
        recent = model.last_used_ts is not None and now - model.last_used_ts <= policy.idle_s
        wanted, why = policy.copies, []
        if len(live) < policy.copies:
            why.append(f"copies: {len(live)} live < minimum {policy.copies}")
        if recent and model.usage_count >= policy.hot_usage:
            wanted = max(wanted, policy.copies + 1)
            why.append(f"usage: {model.usage_count} requests >= {policy.hot_usage}")
        loads = [usable[a].load for a in live]
        if recent and loads and min(loads) >= policy.busy_load:
            wanted = max(wanted, len(live) + 1)
            why.append(f"headroom: every holder at load >= {policy.busy_load:g}")
        wanted = min(wanted, max(policy.max_copies, policy.copies))
        missing = wanted - len(live) - len(model.pulling)
        if missing > 0:
            _add(model, live, usable, free, policy, missing, why, actions, skipped)
            continue
        if model.pinned:
            continue
        removable = len(live) - max(wanted, policy.copies, 1)
        if removable <= 0:
            continue
        idle = [a for a in live if a not in model.loaded_on and a not in model.pulling
                and now - model.idle_since(a, now) > policy.idle_s]
        idle.sort(key=lambda a: (free[a] if free[a] is not None else 0, a))
        for address in idle[:removable]:
            last = model.node_last_used_ts.get(address)
            since = now - model.idle_since(address, now)
            detail = (f"last used {since:.0f}s ago" if last is not None
                      and last >= model.node_first_seen_ts.get(address, last)
                      else f"never used since it appeared {since:.0f}s ago")
            actions.append({
                "action": "remove", "model": model.name, "node": address,
                "reason": (f"usage: unused on this node for > {policy.idle_s:g}s ({detail}); "
                           f"{len(live)} copies > minimum {max(wanted, policy.copies, 1)}"),
                "size": model.size,
            })
    return {
        "actions": actions,
        "skipped": skipped,
        "policy": {
            "copies": policy.copies, "max_copies": policy.max_copies,
            "hot_usage": policy.hot_usage, "idle_s": policy.idle_s,
            "busy_load": policy.busy_load, "headroom_fraction": policy.headroom_fraction,
        },
    }


def _add(model: PlanModel, live: list[str], usable: dict[str, PlanNode],
         free: dict[str, int | None], policy: PlanPolicy, missing: int, why: list[str],
         actions: list[dict], skipped: list[dict]) -> None:
    if model.size is None:
        skipped.append({"model": model.name, "reason": "size unknown: cannot check fit"})
        return
    taken = set(live) | set(model.pulling)
    candidates = [n for a, n in usable.items() if a not in taken
                  and fits(n, model.size, free[a], policy.headroom_fraction)]
    candidates.sort(key=lambda n: (round(n.load, 2), -(free[n.address] or 0), n.address))
    for node in candidates[:missing]:
        before = free[node.address] or 0
        free[node.address] = before - model.size
        actions.append({
            "action": "add", "model": model.name, "node": node.address,
            "reason": "; ".join(why) + (
                f"; fit: {model.size} bytes on {before} free; headroom: "
                f"{before - model.size} bytes left (reserve "
                f"{int((node.disk_total or 0) * policy.headroom_fraction)})"),
            "size": model.size,
        })
    if len(candidates) < missing:
        skipped.append({"model": model.name,
                        "reason": f"no room: {missing - len(candidates)} more "
                                  f"cop{'y' if missing - len(candidates) == 1 else 'ies'} "
                                  f"wanted but no usable node fits {model.size} bytes"})

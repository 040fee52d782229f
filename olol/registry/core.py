"""``ModelRegistry``: where every model lives, and cluster-wide pull/remove/copy/plan.

The ``models`` table is rebuilt from what nodes *list* (never from what was asked of
them): a model is recorded on a node only once that node's listing shows it; a node
that cannot be polled keeps its entries, marked stale, instead of losing them.
Usage counters are kept in RAM by :meth:`ModelRegistry.note_usage` (cheap, called per
request) and flushed into the table by :meth:`ModelRegistry.synchronize_models`.

Lock order: the registry never calls the cluster manager while holding the store's
transaction, and never holds its own lock while calling a node.

The class is built in layers, one module each: :mod:`olol.registry.base` (state,
usage counters, pins, the error types), :mod:`olol.registry.sync` (the table
rebuild), :mod:`olol.registry.placement` (pulls), and this module (status,
remove/copy, planning and applying plans). The error types are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from olol.cluster import UnknownNodeError
from olol.node_state import describe_error
from olol.registry.base import (
    TABLE,
    LastCopyError,
    ModelNotFoundError,
    PinnedModelError,
    RegistryBusyError,
    _capacity,
    _key,
    _load,
)
from olol.registry.placement import PullPlacement
from olol.registry.plan import PlanModel, PlanNode, fits, make_plan
from olol.store.database import iso_utc

__all__ = [
    "LastCopyError", "ModelNotFoundError", "ModelRegistry", "PinnedModelError",
    "RegistryBusyError",
]


class ModelRegistry(PullPlacement):
    """Cluster-wide model management over a ``ClusterManager`` and the store.

    :param cluster_manager: the cluster (nodes, their last status, their clients).
    :param db: the store (``models`` table).
    :param clock: seconds since the epoch (usage, first seen, the plan's idle rule).
    :param copies: how many nodes a pull without targets places a model on, and the
        minimum the planner keeps.
    :param pinned: model names never removed unless forced (the table's ``pinned``
        field adds to these).
    :param pull_timeout_s: deadline of one node's pull.
    :param max_parallel_pulls: node pulls running at once (others wait).
    :param max_operations: pull operations in progress at once.
    :param status_timeout_s: deadline of one node status poll.
    :param policy: planner thresholds (``copies`` is taken from ``copies``).
    """

    # -- status ----------------------------------------------------------------------

    def active_pulls(self) -> list[dict]:
        with self._lock:
            ops = [op for op in self._ops.values() if not op.done]
        return [op.summary() for op in sorted(ops, key=lambda o: o.started_at)]

    def get_model_status(self, model_name: str | None = None) -> list[dict]:
        """Per model: where it is present, loaded, being pulled, stale; size and usage."""
        only = _key(model_name) if model_name is not None else None
        now = self.clock()
        rows = {r["name"]: r for r in self.db.all(TABLE)}
        states = self.cluster.list_nodes()
        live = [s for s in states if self._up(s, now)]
        with self._lock:
            pulling: dict[str, set[str]] = {}
            for op in self._ops.values():
                if not op.done:
                    pulling.setdefault(op.model, set()).update(op.pending_nodes())
        keys = set(rows) | set(pulling)
        for s in live:
            keys |= set(s.available_models)
        out = []
        for key in sorted(keys):
            if only is not None and key != only:
                continue
            row = rows.get(key) or {}
            present = sorted(s.address for s in live if key in s.available_models)
            entry = next((s.available_models[key] for s in live if key in s.available_models),
                         None)
            doc = self._row(key, row, entry, present, [], None, now)
            pending = self._pending_usage(key)
            up_addresses = {s.address for s in live}
            stale = set(row.get("stale_servers") or []) | {
                a for a in row.get("servers") or [] if a not in up_addresses}
            last_ts = max(doc["last_used_ts"] or 0.0, pending["last"] or 0.0) or None
            out.append({
                "name": key, "display_name": doc["display_name"], "nodes": present,
                "loaded": sorted(s.address for s in live if key in s.loaded_models),
                "pulling": sorted(pulling.get(key, ())),
                "stale": sorted(stale - set(present)),
                "size": doc["size"], "size_gb": doc["size_gb"],
                "parameter_count": doc["parameter_count"], "quantization": doc["quantization"],
                "family": doc["family"], "digest": doc["digest"],
                "usage_count": doc["usage_count"] + pending["count"],
                "last_used": iso_utc(last_ts) if last_ts else None,
                "first_seen": row.get("first_seen"),
                "pinned": self.is_pinned(key, row),
            })
        return out

    # -- remove / copy ---------------------------------------------------------------

    def remove_model(self, model_name: str, target_nodes: Iterable[str] | None = None, *,
                     force: bool = False) -> dict:
        """Delete a model from ``target_nodes`` (default: every live node that has it).

        :returns: ``{node: {"status": "deleted"} | {"error": msg}}``.
        :raises ModelNotFoundError: no live node has it and no target was given.
        :raises PinnedModelError: pinned and not ``force``.
        :raises LastCopyError: it would leave no live copy and not ``force``.
        """
        key = _key(model_name)
        now = self.clock()
        live = [s for s in self.cluster.list_nodes() if self._up(s, now)]
        holders = [s.address for s in live if key in s.available_models]
        targets = holders if target_nodes is None else list(dict.fromkeys(target_nodes))
        if not targets:
            raise ModelNotFoundError(f"model '{model_name}' not found")
        for address in targets:
            if self.cluster.node(address) is None:
                raise UnknownNodeError(address)
        if not force:
            if self.is_pinned(key):
                raise PinnedModelError(f"model {model_name} is pinned; use force to remove it")
            if holders and not set(holders) - set(targets):
                raise LastCopyError(
                    f"removing {model_name} from {', '.join(targets)} would delete its last "
                    "copy in the cluster; use force to remove it anyway")
        results: dict[str, dict] = {}
        for address in targets:
            try:
                self.cluster.client(address).delete({"model": model_name})
                results[address] = {"status": "deleted"}
            except Exception as exc:  # noqa: BLE001 - reported per node
                results[address] = {"error": getattr(exc, "message", None)
                                    or describe_error(exc)}
        self._rebuild(self._poll_many(targets))
        return results

    def copy_model(self, source: str, destination: str,
                   target_nodes: Iterable[str] | None = None) -> dict:
        """Copy ``source`` to ``destination`` on every live node holding the source (or on
        ``target_nodes``); ``{node: {"status": "copied"} | {"error": msg}}``.

        :raises ModelNotFoundError: no live node has the source.
        """
        key, _ = _key(source), _key(destination)
        now = self.clock()
        if target_nodes is None:
            targets = [s.address for s in self.cluster.list_nodes()
                       if self._up(s, now) and key in s.available_models]
        else:
            targets = list(dict.fromkeys(target_nodes))
        if not targets:
            raise ModelNotFoundError(f"model '{source}' not found")
        results: dict[str, dict] = {}
        for address in targets:
            try:
                self.cluster.client(address).copy({"source": source, "destination": destination})
                results[address] = {"status": "copied"}
            except Exception as exc:  # noqa: BLE001 - reported per node
                results[address] = {"error": getattr(exc, "message", None)
                                    or describe_error(exc)}
        self._rebuild(self._poll_many(targets))
        return results

    # -- planning --------------------------------------------------------------------

    def plan_inputs(self) -> tuple[list[PlanModel], list[PlanNode]]:
        """The planner's snapshot of the cluster (last known node states + table)."""
        now = self.clock()
        rows = {r["name"]: r for r in self.db.all(TABLE)}
        states = self.cluster.list_nodes()
        usable = {s.address for s in self.cluster.healthy_nodes()}
        nodes = [PlanNode(s.address, s.address in usable, *_capacity(s), load=_load(s))
                 for s in states]
        with self._lock:
            pulling: dict[str, set[str]] = {}
            for op in self._ops.values():
                if not op.done:
                    pulling.setdefault(op.model, set()).update(op.pending_nodes())
        keys = set(rows)
        for s in states:
            if self._up(s, now):
                keys |= set(s.available_models)
        models = []
        for key in sorted(keys):
            row = rows.get(key) or {}
            pending = self._pending_usage(key)
            holders = sorted(s.address for s in states if self._up(s, now)
                             and key in s.available_models)
            size = row.get("size") or next(
                (int(s.available_models[key].get("size") or 0) or None for s in states
                 if key in s.available_models), None)
            node_ts = dict(row.get("node_last_used") or {})
            for node, ts in pending["nodes"].items():
                node_ts[node] = max(node_ts.get(node, 0.0), ts)
            last = max(row.get("last_used_ts") or 0.0, pending["last"] or 0.0) or None
            models.append(PlanModel(
                name=key, size=size, holders=holders,
                loaded_on=sorted(s.address for s in states if key in s.loaded_models),
                pulling=sorted(pulling.get(key, ())),
                stale=sorted(row.get("stale_servers") or []),
                usage_count=int(row.get("usage_count") or 0) + pending["count"],
                last_used_ts=last, node_last_used_ts=node_ts,
                pinned=self.is_pinned(key, row)))
        return models, nodes

    def optimize_model_distribution(self) -> dict:
        """A plan of copies to add and remove, with reasons; changes nothing."""
        models, nodes = self.plan_inputs()
        return make_plan(models, nodes, self.policy, self.clock())

    def apply(self, plan: dict) -> dict:
        """Run an approved plan: adds first (pulls), then removes, each re-checked now.

        :returns: ``{"results": [action + {"result": "done"|"skipped"|"failed",
            "detail"}], "done": n, "skipped": n, "failed": n}``.
        """
        actions = [a for a in plan.get("actions") or [] if isinstance(a, dict)]
        adds = [a for a in actions if a.get("action") == "add"]
        removes = [a for a in actions if a.get("action") == "remove"]
        results = []
        self.synchronize_models()
        ops = []
        for action in adds:
            problem = self._check_add(action)
            if problem:
                results.append({**action, "result": "skipped", "detail": problem})
                continue
            ops.append((action, self.pull_model(action["model"], [action["node"]])))
        for action, op in ops:
            outcome = op.wait(self.pull_timeout_s).get(action["node"], {})
            ok = outcome.get("status") == "success"
            results.append({**action, "result": "done" if ok else "failed",
                            "detail": "pulled" if ok else outcome.get("error", "pending")})
        if removes:
            self.synchronize_models()
        for action in removes:
            problem = self._check_remove(action)
            if problem:
                results.append({**action, "result": "skipped", "detail": problem})
                continue
            out = self.remove_model(action["model"], [action["node"]])
            res = out.get(action["node"], {})
            results.append({**action, "result": "done" if "error" not in res else "failed",
                            "detail": res.get("error", "deleted")})
        counts = {k: sum(1 for r in results if r["result"] == k)
                  for k in ("done", "skipped", "failed")}
        return {"results": results, **counts}

    def _check_add(self, action: dict) -> str | None:
        try:
            key = _key(action.get("model", ""))
        except ValueError:
            return "invalid model name"
        state = next((s for s in self.cluster.healthy_nodes()
                      if s.address == action.get("node")), None)
        if state is None:
            return "node not usable now"
        if key in state.available_models:
            return "node already has it"
        size = self._known_size(key)
        node = self._plan_node(state)
        if size is None or not fits(node, size, node.disk_free, self.policy.headroom_fraction):
            return "does not fit on the node now"
        return None

    def _check_remove(self, action: dict) -> str | None:
        try:
            key = _key(action.get("model", ""))
        except ValueError:
            return "invalid model name"
        if self.is_pinned(key):
            return "model is pinned"
        now = self.clock()
        holders = {s.address for s in self.cluster.list_nodes()
                   if self._up(s, now) and key in s.available_models}
        if action.get("node") not in holders:
            return "node does not have it"
        if len(holders - {action["node"]}) < max(1, self.copies):
            return "would go below the minimum copies (never removes the last copy)"
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running pulls and wait for their threads (bounded)."""
        self._stop.set()
        with self._lock:
            ops = list(self._ops.values())
        for op in ops:
            op.cancel()
        deadline = time.monotonic() + timeout
        for op in ops:
            op.join(max(0.0, deadline - time.monotonic()))


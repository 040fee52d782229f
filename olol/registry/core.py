"""``ModelRegistry``: where every model lives, and cluster-wide pull/remove/copy/plan.

The ``models`` table is rebuilt from what nodes *list* (never from what was asked of
them): a model is recorded on a node only once that node's listing shows it; a node
that cannot be polled keeps its entries, marked stale, instead of losing them.
Usage counters are kept in RAM by :meth:`ModelRegistry.note_usage` (cheap, called per
request) and flushed into the table by :meth:`ModelRegistry.synchronize_models`.

The ``models`` table is read from the RAM view of the store that the cluster shares
(:class:`olol.store.sync.SyncManager`, the registry's ``sync_manager``), and written
through it. Model commands on the nodes (pull, delete, copy) go through the agents'
``RemoteModelCommand``, the coordinator's one path (:class:`olol.rpc.client.NodeClient`).

Lock order: the registry never calls the cluster manager while holding the store's
transaction, and never holds its own lock while calling a node.

The registry is made of collaborators, one module each: :mod:`olol.registry.base`
(:class:`~olol.registry.base.RegistryState`, the
:class:`~olol.registry.base.UsageCounter`, the :class:`~olol.registry.base.ModelTable`
and the error types), :mod:`olol.registry.sync` (the table rebuild),
:mod:`olol.registry.placement` (pulls), and this module, which puts them together and
adds status, remove/copy, planning and applying plans. The error types are re-exported
here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from olol.cluster import UnknownNodeError
from olol.node_state import describe_error
from olol.registry.base import (
    LastCopyError,
    ModelNotFoundError,
    ModelTable,
    PinnedModelError,
    RegistryBusyError,
    RegistryState,
    UsageCounter,
    _capacity,
    _key,
    _load,
)
from olol.registry.placement import PullPlacement
from olol.registry.plan import PlanModel, PlanNode, PlanPolicy, fits, make_plan
from olol.registry.pulls import PullOperation
from olol.registry.sync import TableSync
from olol.store.database import iso_utc
from olol.store.sync import SyncManager

__all__ = [
    "LastCopyError", "ModelNotFoundError", "ModelRegistry", "PinnedModelError",
    "RegistryBusyError",
]


class ModelRegistry:
    """Cluster-wide model management over a ``ClusterManager`` and the store.

    :param cluster_manager: the cluster (nodes, their last status, their clients).
    :param db: the store (``models`` table).
    :param sync_manager: the RAM view of the store the registry reads the ``models``
        table from (default: the cluster manager's, else a new one over ``db``).
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

    def __init__(self, cluster_manager: Any, db: Any, *, clock: Callable[[], float] = time.time,
                 copies: int = 1, pinned: Iterable[str] = (), pull_timeout_s: float = 3600.0,
                 max_parallel_pulls: int = 8, max_operations: int = 32,
                 status_timeout_s: float = 2.0, probe_timeout_s: float = 30.0,
                 policy: PlanPolicy | None = None,
                 sync_manager: SyncManager | None = None) -> None:
        self.db = db
        if sync_manager is None:
            sync_manager = getattr(cluster_manager, "sync_manager", None)
            if sync_manager is None or sync_manager.db is not db:
                sync_manager = SyncManager(db, tables=("models",))
        self.sync_manager = sync_manager
        self.state = RegistryState(cluster_manager, clock=clock, copies=copies,
                                   pull_timeout_s=pull_timeout_s,
                                   status_timeout_s=status_timeout_s,
                                   probe_timeout_s=probe_timeout_s, policy=policy)
        self.usage = UsageCounter(clock)
        self.table = ModelTable(sync_manager, pinned)
        self.table_sync = TableSync(self.state, self.usage, self.table)
        self.pulls = PullPlacement(self.state, self.table, self.table_sync,
                                   max_parallel_pulls=max_parallel_pulls,
                                   max_operations=max_operations)
        if getattr(db, "shared", False):
            self.pulls.share(db)  # several proxies: one view of the pulls in progress

    # -- the settings, read through -------------------------------------------------

    @property
    def cluster(self) -> Any:
        return self.state.cluster

    @property
    def clock(self) -> Callable[[], float]:
        return self.state.clock

    @property
    def copies(self) -> int:
        return self.state.copies

    @property
    def policy(self) -> PlanPolicy:
        return self.state.policy

    @property
    def pinned(self) -> set[str]:
        return self.table.pinned

    @property
    def pull_timeout_s(self) -> float:
        return self.state.pull_timeout_s

    # -- usage and pins ----------------------------------------------------------------

    def note_usage(self, model_key: str, node: str | None = None) -> None:
        """Count one finished request (RAM only; flushed by :meth:`synchronize_models`)."""
        self.usage.note(model_key, node)

    def is_pinned(self, model_name: str, row: dict | None = None) -> bool:
        return self.table.is_pinned(model_name, row)

    def set_pinned(self, model_name: str, pinned: bool = True) -> bool:
        """Pin (or unpin) a model in the table; False when the table has no such model."""
        return self.table.set_pinned(model_name, pinned)

    # -- synchronization and pulls ---------------------------------------------------

    def synchronize_models(self, refresh: bool = True) -> dict:
        """Rebuild the ``models`` table from what each node lists.

        :param refresh: poll every node now (default); False uses the last known state.
        :returns: ``{"models", "nodes_up", "nodes_down", "added", "removed", "stale"}``
            where added/removed/stale are ``[model, node]`` pairs.
        """
        return self.table_sync.synchronize_models(refresh)

    def pull_model(self, model_name: str, target_nodes: Iterable[str] | None = None, *,
                   insecure: bool = False) -> PullOperation:
        """Pull a model on ``target_nodes`` or, without targets, where it fits (see
        :meth:`olol.registry.placement.PullPlacement.pull_model`)."""
        return self.pulls.pull_model(model_name, target_nodes, insecure=insecure)

    # -- status ----------------------------------------------------------------------

    def active_pulls(self) -> list[dict]:
        return self.pulls.active()

    def get_model_status(self, model_name: str | None = None) -> list[dict]:
        """Per model: where it is present, loaded, being pulled, stale; size and usage."""
        only = _key(model_name) if model_name is not None else None
        now = self.clock()
        rows = self.table.rows()
        live = self.state.live(now)
        pulling = self.pulls.pulling()
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
            doc = self.table_sync.row(key, row, entry, present, [], None, now)
            pending = self.usage.pending(key)
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
        holders = [s.address for s in self.state.live(now) if key in s.available_models]
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
        self.table_sync.rebuild(self.table_sync.poll_many(targets))
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
            targets = [s.address for s in self.state.live(now) if key in s.available_models]
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
        self.table_sync.rebuild(self.table_sync.poll_many(targets))
        return results

    # -- planning --------------------------------------------------------------------

    def plan_inputs(self) -> tuple[list[PlanModel], list[PlanNode]]:
        """The planner's snapshot of the cluster (last known node states + table).

        A copy with no record of when it appeared on its node (listed since the last
        synchronization, or pulled a moment ago) counts as appeared now.
        """
        now = self.clock()
        rows = self.table.rows()
        states = self.cluster.list_nodes()
        usable = {s.address for s in self.cluster.healthy_nodes()}
        nodes = [PlanNode(s.address, s.address in usable, *_capacity(s), load=_load(s))
                 for s in states]
        pulling = self.pulls.pulling()
        up = [s for s in states if self.state.up(s, now)]
        keys = set(rows)
        for s in up:
            keys |= set(s.available_models)
        models = []
        for key in sorted(keys):
            row = rows.get(key) or {}
            pending = self.usage.pending(key)
            holders = sorted(s.address for s in up if key in s.available_models)
            size = row.get("size") or next(
                (int(s.available_models[key].get("size") or 0) or None for s in states
                 if key in s.available_models), None)
            node_ts = dict(row.get("node_last_used") or {})
            for node, ts in pending["nodes"].items():
                node_ts[node] = max(node_ts.get(node, 0.0), ts)
            appeared = {n: float(t) for n, t in (row.get("node_first_seen") or {}).items()
                        if isinstance(t, int | float)}
            for node in holders:
                appeared.setdefault(node, now)
            last = max(row.get("last_used_ts") or 0.0, pending["last"] or 0.0) or None
            models.append(PlanModel(
                name=key, size=size, holders=holders,
                loaded_on=sorted(s.address for s in states if key in s.loaded_models),
                pulling=sorted(pulling.get(key, ())),
                stale=sorted(row.get("stale_servers") or []),
                usage_count=int(row.get("usage_count") or 0) + pending["count"],
                last_used_ts=last, node_last_used_ts=node_ts,
                pinned=self.is_pinned(key, row), node_first_seen_ts=appeared))
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
        size = self.pulls.known_size(key)
        node = self.pulls.plan_node(state)
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
        holders = {s.address for s in self.state.live(now) if key in s.available_models}
        if action.get("node") not in holders:
            return "node does not have it"
        if len(holders - {action["node"]}) < max(1, self.copies):
            return "would go below the minimum copies (never removes the last copy)"
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running pulls and wait for their threads (bounded)."""
        self.state.stop.set()
        self.pulls.close(timeout)


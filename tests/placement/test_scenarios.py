"""Scenario tables for :func:`olol.placement.place`.

Each row: the nodes (slots, resident models, models on disk, calls in flight,
learned load and service times), the queue (groups by model and priority, with
their age), and the assignments expected, as ``"node <- ids"`` strings.
"""

from __future__ import annotations

import pytest

from olol.placement import (
    ClusterSnapshot,
    NodeView,
    OutlierView,
    Policy,
    QueueSummary,
    Unit,
    WorkGroup,
    place,
)

NOW = 1_000.0


def node(addr, *, slots=1, has=(), loaded=(), cap=None, busy=None, usable=True,
         load_s=None, service_s=None, cpu=0.0):
    """``loaded``: names (least recently used first, last sent at 0) or (name, last sent)."""
    resident = tuple((m, 0.0) if isinstance(m, str) else tuple(m) for m in loaded)
    models = frozenset(has) | {m for m, _ in resident} | set(busy or {})
    return NodeView(addr, slots=slots, available=frozenset(models), resident=resident,
                    capacity=cap if cap is not None else max(1, len(resident)),
                    busy=dict(busy or {}), usable=usable, cpu_load=cpu,
                    load_s=dict(load_s or {}), service_s=dict(service_s or {}))


def group(model, *ids, prio=0, age=0.0, session=None, avoid=(), mode=None):
    """One group; ``mode`` "coalesced"/"embed_merge" makes all ids one call."""
    ids = ids or (f"{model}-1",)
    units = ((Unit(tuple(ids), mode),) if mode else tuple(Unit((i,)) for i in ids))
    return WorkGroup(model, units, priority=prio, oldest_ts=NOW - age, session=session,
                     avoid=frozenset(avoid))


def run(nodes, groups, *, demand=None, limit=1, outliers=None, sessions=None, now=NOW,
        only=None, **policy):
    if demand is None:
        demand = {}
        for g in groups:
            demand[g.model_key] = demand.get(g.model_key, 0) + sum(len(u.ids) for u in g.units)
        for n in nodes:
            for m, k in n.busy.items():
                demand[m] = demand.get(m, 0) + k
    snap = ClusterSnapshot(tuple(nodes), outliers or {}, sessions or {})
    return place(snap, QueueSummary(tuple(groups), demand), now, Policy(**policy),
                 limit=limit, only=only)


def shown(outcome):
    return [f"{d.node} <- {','.join(d.ids)}" for d in outcome.decisions]


SCENARIOS = [
    # --- resident models -------------------------------------------------------------
    pytest.param([node("n1", has=["a"]), node("n2", loaded=["a"])], [group("a", "r1")], {},
                 ["n2 <- r1"], id="prefer-the-node-where-the-model-is-loaded"),
    pytest.param([node("n1", slots=4, loaded=["a"], busy={"a": 3}),
                  node("n2", slots=4, loaded=["a"], busy={"a": 1})],
                 [group("a", "r1")], {}, ["n2 <- r1"], id="loaded-node-with-most-headroom"),
    pytest.param([node("n1", loaded=["a"], busy={"a": 1}), node("n2", has=["a"])],
                 [group("a", "r1")], {}, [], id="wait-for-the-loaded-node-under-low-demand"),
    pytest.param([node("n1", loaded=["a"], busy={"a": 1}), node("n2", has=["a"])],
                 [group("a", *[f"r{i}" for i in range(9)])], {},
                 ["n2 <- r0"], id="second-copy-when-demand-is-high"),
    # cold loads only when the wait they save beats their load time
    pytest.param([node("n1", loaded=["a"], busy={"a": 1}, service_s={"a": 0.5}),
                  node("n2", has=["a"], load_s={"a": 60.0})],
                 [group("a", *[f"r{i}" for i in range(9)])], {}, [],
                 id="no-second-copy-when-its-load-is-slower-than-the-backlog"),
    pytest.param([node("n1", loaded=["a"], busy={"a": 1}, service_s={"a": 1.0}),
                  node("n2", has=["a"], load_s={"a": 2.0})],
                 [group("a", "r1", "r2")], {"demand": {"a": 3}}, [],
                 id="no-second-copy-for-a-small-backlog"),
    pytest.param([node("n1", loaded=["a"], busy={"a": 1}, service_s={"a": 4.0}),
                  node("n2", has=["a"], load_s={"a": 1.0})],
                 [group("a", "r1", "r2")], {"demand": {"a": 3}}, ["n2 <- r1"],
                 id="second-copy-when-calls-are-long-and-the-load-short"),
    # a long backlog on three full nodes: the idle fourth loads a copy (the three keep
    # serving while it loads, and plenty is left for it when it is ready)
    pytest.param([node(f"n{i}", slots=4, loaded=["a"], busy={"a": 4}, service_s={"a": 0.5})
                  for i in range(3)] + [node("n3", slots=4, has=["a"])],
                 [group("a", "r1", "r2")], {"demand": {"a": 64}}, ["n3 <- r1"],
                 id="a-long-backlog-spreads-to-the-idle-node"),
    # the same backlog, but the load outlasts it: no copy
    pytest.param([node(f"n{i}", slots=4, loaded=["a"], busy={"a": 4}, service_s={"a": 0.5})
                  for i in range(3)] + [node("n3", slots=4, has=["a"], load_s={"a": 3.0})],
                 [group("a", "r1", "r2")], {"demand": {"a": 64}}, [],
                 id="no-copy-when-the-backlog-ends-before-its-load"),
    # --- cold loads and eviction ------------------------------------------------------
    pytest.param([node("n1", loaded=["b"]), node("n2", has=["a"])],
                 [group("a", "r1"), group("b", "r2")], {}, ["n2 <- r1"],
                 id="cold-load-on-the-node-that-displaces-nothing"),
    pytest.param([node("n1", has=["a"], loaded=["b"]), node("n2", has=["a"], loaded=["c"])],
                 [group("a", "r1", age=1.0)], {"demand": {"a": 1, "b": 2, "c": 1}}, [],
                 id="displacing-wanted-models-waits-for-patience"),
    pytest.param([node("n1", has=["a"], loaded=["b"]), node("n2", has=["a"], loaded=["c"])],
                 [group("a", "r1", age=5.0)], {"demand": {"a": 1, "b": 2, "c": 1}},
                 ["n2 <- r1"],
                 id="ageing-after-patience-displaces-the-least-demand"),
    pytest.param([node("n1", has=["a"], loaded=["b"], busy={"b": 1})],
                 [group("a", "r1", age=60.0)], {}, [],
                 id="never-evict-a-model-with-calls-in-flight"),
    pytest.param([node("n1", has=["a"], loaded=["b"], busy={"b": 1}),
                  node("n2", has=["a"], loaded=["c"])],
                 [group("a", "r1", age=60.0), group("c", "c1")], {}, ["n2 <- r1"],
                 id="evict-the-idle-model-not-the-busy-one"),
    pytest.param([node("n1", has=["a"], loaded=[("x", 50.0)]),
                  node("n2", has=["a"], loaded=[("y", 10.0)])],
                 [group("a", "r1")], {}, ["n2 <- r1"],
                 id="evict-the-least-recently-used-model"),
    pytest.param([node("n1", has=["a"], loaded=[("x", 1.0)]),
                  node("n2", has=["a"], loaded=[("y", 50.0)], cap=2)],
                 [group("a", "r1")], {}, ["n2 <- r1"],
                 id="a-node-with-room-before-an-eviction"),
    pytest.param([node("n1", has=["a"], loaded=[("x", 1.0), ("y", 2.0)], cap=1)],
                 [group("y", "r1")], {}, ["n1 <- r1"],
                 id="resident-beyond-capacity-keeps-the-most-recent"),
    # --- priorities -------------------------------------------------------------------
    pytest.param([node("n1", has=["a", "b"])], [group("a", "r1", prio=5), group("b", "r2")],
                 {}, ["n1 <- r1"], id="the-queue-order-wins-a-free-slot"),
    pytest.param([node("n1", has=["a"], loaded=["b"])],
                 [group("a", "r1", prio=5), group("b", "r2")], {}, ["n1 <- r2"],
                 id="high-priority-cold-work-does-not-evict-before-patience"),
    pytest.param([node("n1", has=["a"], loaded=["b"])],
                 [group("a", "r1", prio=5, age=3.0), group("b", "r2")], {}, ["n1 <- r1"],
                 id="aged-work-evicts"),
    pytest.param([node("n1", has=["a"], loaded=["b"])],
                 [group("a", "r1", age=10.0), group("b", "r2")], {"patience_s": 30.0},
                 ["n1 <- r2"], id="patience-is-a-policy"),
    # --- health and failures ----------------------------------------------------------
    pytest.param([node("n1", loaded=["a"], usable=False), node("n2", has=["a"])],
                 [group("a", "r1")], {}, ["n2 <- r1"], id="unusable-nodes-are-never-chosen"),
    pytest.param([node("n1", loaded=["a"], usable=False)], [group("a", "r1")], {}, [],
                 id="model-only-on-a-down-node-waits"),
    pytest.param([node("n1", loaded=["a"]), node("n2", has=["a"])],
                 [group("a", "r1")], {"outliers": {"a": OutlierView(ejected=frozenset({"n1"}))}},
                 ["n2 <- r1"], id="ejected-node-skipped"),
    pytest.param([node("n1", slots=4, loaded=["a"], busy={"a": 1}), node("n2", has=["a"])],
                 [group("a", "r1")], {"outliers": {"a": OutlierView(limited=frozenset({"n1"}))}},
                 ["n2 <- r1"], id="limited-node-gets-one-call-at-a-time"),
    pytest.param([node("n1", loaded=["a"]), node("n2", has=["a"])],
                 [group("a", "r1", avoid=["n1"])], {}, ["n2 <- r1"],
                 id="a-retry-avoids-the-node-it-failed-on"),
    pytest.param([node("n1", loaded=["a"]), node("n2", has=["a"], busy={"a": 1})],
                 [group("a", "r1", avoid=["n1"])], {}, [],
                 id="a-retry-waits-for-a-node-it-did-not-fail-on"),
    pytest.param([node("n1", loaded=["a"])], [group("a", "r1", avoid=["n1"])], {},
                 ["n1 <- r1"], id="a-retry-goes-back-when-nothing-else-can-take-it"),
    pytest.param([node("n1", loaded=["a"]), node("n2", loaded=["a"])], [group("a", "r1")],
                 {"outliers": {"a": OutlierView(held=frozenset({"n1"}))}}, ["n2 <- r1"],
                 id="a-node-whose-failure-is-checked-is-left-alone"),
    # --- sessions ---------------------------------------------------------------------
    pytest.param([node("n1", slots=2, loaded=["a"]), node("n2", slots=2, loaded=["a"], busy={"a": 1})],
                 [group("a", "r1", session="s")], {"sessions": {"s": "n2"}}, ["n2 <- r1"],
                 id="a-session-stays-on-its-node"),
    pytest.param([node("n1", loaded=["a"]), node("n2", loaded=["a"], busy={"a": 1})],
                 [group("a", "r1", session="s")], {"sessions": {"s": "n2"}}, [],
                 id="a-session-waits-for-its-busy-node"),
    pytest.param([node("n1", loaded=["a"]), node("n2", loaded=["a"], usable=False)],
                 [group("a", "r1", session="s")], {"sessions": {"s": "n2"}}, ["n1 <- r1"],
                 id="a-session-moves-when-its-node-is-down"),
    # --- grouping ---------------------------------------------------------------------
    pytest.param([node("n1", loaded=["a"])], [group("a", "r1", "r2", "r3", mode="coalesced")],
                 {}, ["n1 <- r1,r2,r3"], id="coalesced-requests-are-one-call"),
    pytest.param([node("n1", loaded=["e"])], [group("e", "r1", "r2", mode="embed_merge")],
                 {}, ["n1 <- r1,r2"], id="embeds-are-merged"),
    pytest.param([node("n1", slots=2, loaded=["a"]), node("n2", slots=1, loaded=["b"])],
                 [group("a", "r1"), group("a", "r2"), group("b", "r3")], {"limit": 3},
                 ["n1 <- r1", "n1 <- r2", "n2 <- r3"], id="slots-count-across-decisions"),
    pytest.param([node("n1", loaded=["a"])], [group("a", "r1"), group("a", "r2")],
                 {"limit": 2}, ["n1 <- r1"], id="a-full-node-takes-no-more"),
    pytest.param([node("n1", loaded=["a"]), node("n2", loaded=["b"])],
                 [group("a", "r1"), group("b", "r2")], {"only": "r2"}, ["n2 <- r2"],
                 id="only-one-request"),
    # --- baselines --------------------------------------------------------------------
    pytest.param([node("n1", has=["a"]), node("n2", loaded=["a"]), node("n3", has=["a"])],
                 [group("a", "r1")], {"strategy": "round-robin", "rr_start": 2},
                 ["n3 <- r1"], id="round-robin-ignores-resident-models"),
    pytest.param([node("n1", slots=2, has=["a"], cpu=0.1),
                  node("n2", slots=2, loaded=["a"], busy={"a": 1}, cpu=0.0)],
                 [group("a", "r1")], {"strategy": "least-busy"}, ["n1 <- r1"],
                 id="least-busy-ignores-resident-models"),
]


@pytest.mark.parametrize(("nodes", "groups", "kw", "expected"), SCENARIOS)
def test_scenario(nodes, groups, kw, expected):
    assert shown(run(nodes, groups, **kw)) == expected


def test_scenario_count():
    assert len(SCENARIOS) >= 20


def test_a_model_no_node_has_is_unplaceable():
    out = run([node("n1", loaded=["a"])], [group("zz", "r1"), group("a", "r2")])
    assert [g.model_key for g in out.unplaceable] == ["zz"]
    assert shown(out) == ["n1 <- r2"]


def test_a_cold_placement_is_marked_cold():
    out = run([node("n1", has=["a"]), node("n2", loaded=["b"])],
              [group("b", "r1"), group("a", "r2")], limit=2)
    assert [(d.node, d.cold) for d in out.decisions] == [("n2", False), ("n1", True)]


def test_placing_reads_no_clock_and_changes_no_input():
    nodes = [node("n1", loaded=["a"], busy={"a": 0}), node("n2", has=["a"])]
    snap = ClusterSnapshot(tuple(nodes))
    q = QueueSummary((group("a", "r1"), group("a", "r2")), {"a": 2})
    first = place(snap, q, NOW, limit=2)
    second = place(snap, q, NOW, limit=2)
    assert first == second
    assert dict(nodes[0].busy) == {"a": 0} and nodes[0].resident == (("a", 0.0),)


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        Policy(strategy="random")


def test_256_nodes_and_64_models():
    """Model k lives on nodes 4k..4k+3 and is loaded on node 4k+(k % 4); every
    model has two requests queued. All 64 first calls go where their model is."""
    nodes = []
    for i in range(256):
        k = i // 4
        loaded = [f"m{k}"] if i % 4 == k % 4 else []
        nodes.append(node(f"n{i:03d}", slots=2, has=[f"m{k}"], loaded=loaded))
    groups = [group(f"m{k}", f"r{k}a", f"r{k}b") for k in range(64)]
    out = run(nodes, groups, limit=64)
    assert len(out.decisions) == 64
    for d in out.decisions:
        k = int(d.model_key[1:])
        assert d.node == f"n{4 * k + k % 4:03d}" and not d.cold


def test_a_decision_counts_for_models_looked_up_after_it():
    """n1 (one slot) takes model a; model b, also on n1, is looked up after that
    decision and must see n1 busy."""
    nodes = [node("n1", has=["a", "b"], loaded=["a"]), node("n2", loaded=["b"], busy={"b": 1})]
    out = run(nodes, [group("a", "r1"), group("b", "r2", age=60.0)], limit=2)
    assert shown(out) == ["n1 <- r1"]


def test_a_second_copy_that_evicts_the_only_copy_of_another_model_pays_for_its_reload():
    """9 requests for a (1 s calls) on one busy 1-slot node: a second copy saves
    9 * 1 * (1 - 1/2) = 4.5 s. On an empty node it costs one load (4 s): worth it;
    on a node holding the only copy of b it costs two (8 s): not worth it; when
    another node also keeps b, one again."""
    busy_a = node("n1", loaded=["a"], busy={"a": 1}, service_s={"a": 1.0})
    queue = [group("a", *[f"r{i}" for i in range(9)])]
    demand = {"a": 10, "b": 0}
    empty = node("n2", has=["a", "b"], load_s={"a": 4.0, "b": 4.0})
    assert shown(run([busy_a, empty], queue, demand=demand)) == ["n2 <- r0"]
    only_b = node("n2", has=["a"], loaded=["b"], load_s={"a": 4.0, "b": 4.0})
    assert shown(run([busy_a, only_b], queue, demand=demand)) == []
    other_b = node("n3", loaded=["b"])
    assert shown(run([busy_a, only_b, other_b], queue, demand=demand)) == ["n2 <- r0"]

"""The distribution plan: deterministic, safe (last copy, pinned), within capacity."""

from __future__ import annotations

import pytest

from olol.cluster import ClusterManager
from olol.registry import ModelRegistry, PlanPolicy
from olol.store import DatabaseManager
from tests.registry.conftest import GB, FakeClock

DAY = 24 * 3600.0


def _status(models: dict[str, int], disk_total: int, *, loaded=(), in_flight=0,
            memory=64 * GB) -> dict:
    used = sum(models.values())
    return {
        "ollama": {"reachable": True, "error": "",
                   "models": [{"name": n, "model": n, "size": s, "digest": f"d-{n}",
                               "details": {"family": "llama"}} for n, s in models.items()],
                   "loaded": [{"name": n, "model": n, "size": models[n]} for n in loaded]},
        "agent": {"parallel": 4, "in_flight_total": in_flight},
        "disk": {"total_bytes": disk_total, "free_bytes": disk_total - used},
        "memory": {"total_bytes": memory, "available_bytes": memory},
        "cpu": {"total_percent": 10.0},
    }


def _offline_client(address):
    raise AssertionError("the planner must not call nodes")


def build(nodes: dict[str, dict], *, order=None, copies=1, pinned=(), usage=(), age=0.0,
          **policy):
    """A registry over synthetic node states (no network); the copies appeared ``age``
    seconds before the usage is counted."""
    clock = FakeClock()
    db = DatabaseManager.memory(clock=clock)
    cluster = ClusterManager(db, clock=clock, client_factory=_offline_client)
    for address in order or sorted(nodes):
        cluster.add_node(address)
        cluster.record_poll(address, nodes[address], 1.0)
    reg = ModelRegistry(cluster, db, clock=clock, copies=copies, pinned=pinned,
                        policy=PlanPolicy(**policy))
    reg.synchronize_models(refresh=False)
    clock.advance(age)
    for model, node, count in usage:
        for _ in range(count):
            reg.note_usage(model, node)
    reg.synchronize_models(refresh=False)
    return reg, clock


def _capacity_ok(plan, nodes, headroom):
    added: dict[str, int] = {}
    for a in plan["actions"]:
        if a["action"] == "add":
            added[a["node"]] = added.get(a["node"], 0) + a["size"]
    for node, size in added.items():
        disk = nodes[node]["disk"]
        assert disk["free_bytes"] - size >= disk["total_bytes"] * headroom, node


NODES = {
    "10.0.0.1:5000": _status({"hot:latest": 2 * GB, "cold:latest": GB, "pin:latest": GB}, 10 * GB),
    "10.0.0.2:5000": _status({"cold:latest": GB, "pin:latest": GB, "solo:latest": GB}, 6 * GB),
    "10.0.0.3:5000": _status({"cold:latest": GB, "pin:latest": GB}, 4 * GB),
    "10.0.0.4:5000": _status({}, 3 * GB),
}


def test_plan_is_deterministic_and_changes_nothing():
    usage = [("hot", "10.0.0.1:5000", 150)]
    reg1, clock = build(NODES, pinned=["pin"], usage=usage, hot_usage=100, age=8 * DAY)
    reg2, _ = build(NODES, order=sorted(NODES, reverse=True), pinned=["pin"], usage=usage,
                    hot_usage=100, age=8 * DAY)
    before = reg1.db.all("models")
    plan1 = reg1.optimize_model_distribution()
    assert plan1 == reg1.optimize_model_distribution() == reg2.optimize_model_distribution()
    assert reg1.db.all("models") == before
    actions = {(a["action"], a["model"], a["node"]) for a in plan1["actions"]}
    # hot: used a lot, one copy -> one more, on the roomiest idle node where it fits.
    assert ("add", "hot:latest", "10.0.0.2:5000") in actions
    add = next(a for a in plan1["actions"] if a["action"] == "add")
    assert "usage" in add["reason"] and "fit" in add["reason"] and "headroom" in add["reason"]
    # cold: three unused copies, minimum one -> two removes, the last copy stays.
    removes = sorted(a["node"] for a in plan1["actions"]
                     if a["action"] == "remove" and a["model"] == "cold:latest")
    assert len(removes) == 2
    assert all("usage" in a["reason"] for a in plan1["actions"] if a["action"] == "remove")
    # pinned and single copies are never removed.
    assert not any(a["model"] in ("pin:latest", "solo:latest") and a["action"] == "remove"
                   for a in plan1["actions"])


def test_recently_used_copies_are_kept():
    reg, clock = build(NODES, usage=[("cold", "10.0.0.3:5000", 1)], age=8 * DAY)
    plan = reg.optimize_model_distribution()
    removed = {a["node"] for a in plan["actions"] if a["model"] == "cold:latest"}
    assert removed == {"10.0.0.1:5000", "10.0.0.2:5000"}
    clock.advance(8 * DAY)  # now every copy is idle again
    plan = reg.optimize_model_distribution()
    assert len([a for a in plan["actions"] if a["model"] == "cold:latest"]) == 2


@pytest.mark.parametrize("copies", [1, 2, 3])
def test_never_removes_last_copy_or_pinned(copies):
    reg, _ = build(NODES, copies=copies, pinned=["pin"])
    plan = reg.optimize_model_distribution()
    models = {m.name: m for m in reg.plan_inputs()[0]}
    for name, model in models.items():
        removed = [a for a in plan["actions"] if a["model"] == name and a["action"] == "remove"]
        if model.pinned:
            assert removed == []
        assert len(model.holders) - len(removed) >= min(len(model.holders), max(1, copies))
    reg.set_pinned("cold", True)
    plan = reg.optimize_model_distribution()
    assert not any(a["model"] == "cold:latest" and a["action"] == "remove"
                   for a in plan["actions"])


def test_never_exceeds_capacity_across_actions_of_one_plan():
    # Six hot 1.5G models on a full node, two nodes with room for only a few copies.
    models = {f"m{i}:latest": int(1.5 * GB) for i in range(6)}
    nodes = {
        "10.0.0.1:5000": _status(models, 9 * GB + 1),
        "10.0.0.2:5000": _status({}, 4 * GB),
        "10.0.0.3:5000": _status({}, 5 * GB),
    }
    usage = [(m, "10.0.0.1:5000", 200) for m in models]
    reg, _ = build(nodes, usage=usage, hot_usage=100, headroom_fraction=0.1)
    plan = reg.optimize_model_distribution()
    adds = [a for a in plan["actions"] if a["action"] == "add"]
    assert adds, plan
    _capacity_ok(plan, nodes, 0.1)
    per_node = {}
    for a in adds:
        per_node[a["node"]] = per_node.get(a["node"], 0) + 1
    assert per_node == {"10.0.0.2:5000": 2, "10.0.0.3:5000": 3}  # 3 x 1.5G + 0.5G reserve = 5G
    assert any("no room" in s["reason"] for s in plan["skipped"])


def test_busy_holders_get_a_copy_for_headroom():
    nodes = {
        "10.0.0.1:5000": _status({"busy:latest": GB}, 10 * GB, in_flight=4),
        "10.0.0.2:5000": _status({}, 10 * GB, in_flight=1),
        "10.0.0.3:5000": _status({}, 10 * GB, in_flight=3),
    }
    reg, _ = build(nodes, usage=[("busy", "10.0.0.1:5000", 5)])
    plan = reg.optimize_model_distribution()
    assert [(a["action"], a["node"]) for a in plan["actions"]] == [("add", "10.0.0.2:5000")]
    assert plan["actions"][0]["reason"].startswith("headroom")


def test_memory_must_hold_the_model():
    nodes = {
        "10.0.0.1:5000": _status({"big:latest": 8 * GB}, 20 * GB),
        "10.0.0.2:5000": _status({}, 100 * GB, memory=4 * GB),
    }
    reg, _ = build(nodes, copies=2)
    plan = reg.optimize_model_distribution()
    assert plan["actions"] == []
    assert plan["skipped"][0]["model"] == "big:latest"

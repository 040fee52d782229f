"""The optimiser's idle rule: a copy's idle time counts from its last request on the
node or from when it appeared there, never from the epoch (an injected clock)."""

from __future__ import annotations

from olol.registry import PlanModel, PlanNode, PlanPolicy, make_plan
from tests.registry.conftest import GB
from tests.registry.test_plan import DAY, NODES, build


def _removes(plan) -> list[tuple[str, str]]:
    return sorted((a["model"], a["node"]) for a in plan["actions"] if a["action"] == "remove")


def test_a_cluster_a_few_seconds_old_has_nothing_idle():
    reg, clock = build(NODES)
    clock.advance(5.0)
    assert _removes(reg.optimize_model_distribution()) == []
    clock.advance(6 * DAY)  # still within the week since the copies appeared
    assert _removes(reg.optimize_model_distribution()) == []
    clock.advance(DAY)
    plan = reg.optimize_model_distribution()
    cold = [node for model, node in _removes(plan) if model == "cold:latest"]
    assert len(cold) == 2
    reasons = [a["reason"] for a in plan["actions"] if a["action"] == "remove"]
    assert all("never used since it appeared 6" in r for r in reasons), reasons
    assert not any("604800s (never used)" in r for r in reasons)


def test_appearance_is_stored_and_survives_a_new_registry(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("qwen3:0.6b", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    appeared = c.clock()
    assert c.row("qwen3:0.6b")["node_first_seen"] == {a.address: appeared,
                                                      b.address: appeared}
    c.clock.advance(3 * DAY)
    again = c.registry()  # a restart: what it knows comes from the table
    again.synchronize_models()
    assert c.row("qwen3:0.6b")["node_first_seen"] == {a.address: appeared,
                                                      b.address: appeared}
    assert _removes(again.optimize_model_distribution()) == []
    c.clock.advance(5 * DAY)
    assert len(_removes(again.optimize_model_distribution())) == 1


def test_an_explicit_pull_made_a_moment_ago_is_never_proposed_for_removal(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    c.clock.advance(30 * DAY)  # an old cluster: a's copy appeared a month ago
    op = reg.pull_model("qwen3:0.6b", [b.address])  # `olol models pull --node b`
    assert op.wait(30)[b.address] == {"status": "success"}
    assert op.wait(30) and c.row("qwen3:0.6b") is not None
    reg.synchronize_models()
    assert c.row("qwen3:0.6b")["node_first_seen"][b.address] == c.clock()
    plan = reg.optimize_model_distribution()
    # a's copy, never used in a month, is the one to go; never b's, pulled just now
    assert _removes(plan) == [("qwen3:0.6b", a.address)]
    assert reg.apply(plan)["done"] == 1
    assert "qwen3:0.6b" in {e.spec.name for e in b.sim.store.all()}
    assert "qwen3:0.6b" not in {e.spec.name for e in a.sim.store.all()}
    c.clock.advance(8 * DAY)  # b's copy is now the last one: kept however idle
    assert _removes(reg.optimize_model_distribution()) == []


def test_a_copy_with_no_known_appearance_counts_as_just_appeared():
    nodes = [PlanNode(f"n{i}:1", True, 100 * GB, 100 * GB, 64 * GB) for i in range(3)]
    now = 1_700_000_000.0
    model = PlanModel("m:latest", GB, holders=["n0:1", "n1:1", "n2:1"],
                      node_first_seen_ts={"n0:1": now - 30 * DAY})
    plan = make_plan([model], nodes, PlanPolicy(), now)
    assert _removes(plan) == [("m:latest", "n0:1")]
    used = PlanModel("m:latest", GB, holders=["n0:1", "n1:1"],
                     node_first_seen_ts={"n0:1": now - 30 * DAY, "n1:1": now - 30 * DAY},
                     node_last_used_ts={"n0:1": now - DAY, "n1:1": now - 9 * DAY})
    plan = make_plan([used], nodes, PlanPolicy(), now)
    assert _removes(plan) == [("m:latest", "n1:1")]
    assert "last used 777600s ago" in plan["actions"][0]["reason"]

"""remove_model, copy_model and apply(plan) against real agents and simulators."""

from __future__ import annotations

import pytest

from olol.registry import LastCopyError, ModelNotFoundError, PinnedModelError, PlanPolicy
from tests.registry.conftest import GB


def _tags(node) -> set[str]:
    """What the node's Ollama really has (asked directly, not through the registry)."""
    return {e.spec.name for e in node.sim.store.all()}


def test_remove_refuses_last_copy_and_pinned_unless_forced(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b,gemma3:1b", disk=5 * GB)
    b = c.add("qwen3:0.6b", disk=5 * GB)
    reg = c.registry(pinned=["gemma3:1b"])
    reg.synchronize_models()
    with pytest.raises(LastCopyError):
        reg.remove_model("qwen3:0.6b")                   # every copy
    with pytest.raises(PinnedModelError):
        reg.remove_model("gemma3:1b", [a.address])
    with pytest.raises(ModelNotFoundError):
        reg.remove_model("mistral")
    assert reg.remove_model("qwen3:0.6b", [b.address]) == {b.address: {"status": "deleted"}}
    assert "qwen3:0.6b" not in _tags(b)
    assert c.row("qwen3:0.6b")["servers"] == [a.address]
    with pytest.raises(LastCopyError):
        reg.remove_model("qwen3:0.6b", [a.address])
    assert reg.remove_model("qwen3:0.6b", force=True) == {a.address: {"status": "deleted"}}
    assert c.row("qwen3:0.6b") is None
    # A node that does not have it reports the node's own error.
    out = reg.remove_model("gemma3:1b", [a.address, b.address], force=True)
    assert out[a.address] == {"status": "deleted"}
    assert "not found" in out[b.address]["error"]


def test_copy_on_every_holder(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("qwen3:0.6b", disk=5 * GB)
    d = c.add("", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    out = reg.copy_model("qwen3:0.6b", "my-qwen")
    assert out == {a.address: {"status": "copied"}, b.address: {"status": "copied"}}
    assert c.row("my-qwen:latest")["servers"] == sorted([a.address, b.address])
    assert "my-qwen:latest" not in _tags(d)
    with pytest.raises(ModelNotFoundError):
        reg.copy_model("nothing", "x")


def test_apply_runs_the_plan_and_rechecks_safety(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b,all-minilm", disk=5 * GB)
    b = c.add("all-minilm", disk=5 * GB)
    d = c.add("all-minilm", disk=5 * GB)
    reg = c.registry(policy=PlanPolicy(hot_usage=10))
    reg.synchronize_models()
    c.clock.advance(8 * 24 * 3600.0)  # the copies appeared a week and a day ago
    for _ in range(20):
        reg.note_usage("qwen3:0.6b", a.address)
    reg.note_usage("all-minilm", d.address)
    plan = reg.optimize_model_distribution()
    actions = sorted((x["action"], x["model"], x["node"]) for x in plan["actions"])
    assert ("add", "qwen3:0.6b", b.address) in actions or ("add", "qwen3:0.6b", d.address) \
        in actions
    removes = [x for x in actions if x[0] == "remove"]
    assert sorted(x[2] for x in removes) == sorted([a.address, b.address])  # d was used
    result = reg.apply(plan)
    assert result["failed"] == 0 and result["done"] == len(plan["actions"])
    holders = reg.get_model_status("qwen3:0.6b")[0]["nodes"]
    assert len(holders) == 2
    assert reg.get_model_status("all-minilm")[0]["nodes"] == [d.address]
    # Re-checked at apply time: a plan made earlier cannot remove the last copy now.
    stale_plan = {"actions": [{"action": "remove", "model": "all-minilm:latest",
                               "node": d.address, "reason": "test"}]}
    result = reg.apply(stale_plan)
    assert result["skipped"] == 1 and "minimum" in result["results"][0]["detail"]
    assert "all-minilm:latest" in _tags(d)
    reg.set_pinned("qwen3:0.6b")
    result = reg.apply({"actions": [{"action": "remove", "model": "qwen3:0.6b",
                                     "node": holders[0], "reason": "test"}]})
    assert result["results"][0]["detail"] == "model is pinned"

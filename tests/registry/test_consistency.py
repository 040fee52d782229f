"""The models table stays true through node failures, restarts and returns."""

from __future__ import annotations

from tests.registry.conftest import GB, start_sim, wait_until


def test_sync_builds_rows_with_roadmap_fields_and_usage(make_cluster):
    c = make_cluster()
    a = c.add("llama3.2:1b[size=1.3G,params=1.2B,quant=Q8_0],qwen3:0.6b", disk=5 * GB)
    b = c.add("llama3.2:1b[size=1.3G,params=1.2B,quant=Q8_0]", disk=5 * GB)
    reg = c.registry()
    summary = reg.synchronize_models()
    assert summary["models"] == 2 and summary["nodes_up"] == sorted([a.address, b.address])
    row = c.row("llama3.2:1b")
    assert row["servers"] == sorted([a.address, b.address]) and row["stale_servers"] == []
    assert row["size_gb"] == 1.3 and row["size"] >= 1_300_000_000
    assert row["parameter_count"] == "1.2B"
    assert row["quantization"] == "Q8_0" and row["family"] == "llama"
    assert row["first_seen"] and row["usage_count"] == 0 and row["last_used"] is None
    reg.note_usage("llama3.2:1b", a.address)
    reg.note_usage("Llama3.2:1B", a.address)
    assert c.row("llama3.2:1b")["usage_count"] == 0        # RAM until flushed
    assert reg.get_model_status("llama3.2:1b")[0]["usage_count"] == 2
    first_seen = row["first_seen"]
    c.clock.advance(60)
    reg.synchronize_models()
    row = c.row("llama3.2:1b")
    assert row["usage_count"] == 2 and row["last_used"] is not None
    assert row["first_seen"] == first_seen
    reg.synchronize_models()
    assert c.row("llama3.2:1b")["usage_count"] == 2         # flushed once, not twice


def test_node_killed_during_a_pull(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB, pull_speed=3 * GB)
    b = c.add("qwen3:0.6b,all-minilm", disk=5 * GB, pull_speed=1 * GB)
    reg = c.registry(copies=2)
    reg.synchronize_models()
    op = reg.pull_model("llama3.2:3b", [a.address, b.address])
    assert wait_until(lambda: any(e.get("node") == b.address and e.get("completed")
                                  for e in op.events(timeout=0.01)))
    b.kill()
    events = list(op.events(timeout=30))
    final = events[-1]
    assert final["error"].startswith(f"pull of llama3.2:3b failed on {b.address}")
    assert list(final["failed"]) == [b.address]
    assert op.wait(1)[a.address] == {"status": "success"}
    assert any(e.get("status") == "node failed" and e["node"] == b.address for e in events)
    assert any(e.get("status") == "node succeeded" and e["node"] == a.address for e in events)
    # The model is recorded where it landed only; the dead node's models are stale.
    row = c.row("llama3.2:3b")
    assert row["servers"] == [a.address] and row["stale_servers"] == []
    assert c.row("all-minilm:latest")["servers"] == []
    assert c.row("all-minilm:latest")["stale_servers"] == [b.address]
    qwen = c.row("qwen3:0.6b")
    assert qwen["servers"] == [a.address] and qwen["stale_servers"] == [b.address]
    status = {s["name"]: s for s in reg.get_model_status()}
    assert status["all-minilm:latest"]["stale"] == [b.address]
    assert status["all-minilm:latest"]["nodes"] == []


def test_node_that_restarts_with_fewer_models(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b,all-minilm", disk=5 * GB)
    c.add("qwen3:0.6b", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    assert c.row("all-minilm:latest")["servers"] == [a.address]
    port = a.sim.port
    a.sim.stop(timeout=1)
    a.sim = start_sim("qwen3:0.6b", a.disk, port=port)  # same host, models lost
    summary = reg.synchronize_models()
    if summary["nodes_down"]:  # the agent's first call may hit its closed connection
        assert c.row("all-minilm:latest")["stale_servers"] == [a.address]
        summary = reg.synchronize_models()
    assert ["all-minilm:latest", a.address] in summary["removed"]
    assert c.row("all-minilm:latest") is None       # no copy anywhere, not stale
    assert a.address in c.row("qwen3:0.6b")["servers"]


def test_node_that_comes_back(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("qwen3:0.6b,gemma3:1b", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    port = int(b.address.rsplit(":", 1)[1])
    b.stop_agent()
    summary = reg.synchronize_models()
    assert summary["nodes_down"] == [b.address]
    assert c.row("gemma3:1b")["stale_servers"] == [b.address]
    assert c.row("gemma3:1b")["servers"] == []
    assert c.row("qwen3:0.6b")["servers"] == [a.address]
    # Still stale on the next sync while it stays down (kept, never erased).
    reg.synchronize_models()
    assert c.row("gemma3:1b")["stale_servers"] == [b.address]
    b.start_agent(port)
    # The client channel reconnects with backoff: a later sync finds the node up.
    assert wait_until(lambda: reg.synchronize_models()["nodes_down"] == [], timeout=15,
                      step=0.2)
    assert c.row("gemma3:1b")["servers"] == [b.address]
    assert c.row("gemma3:1b")["stale_servers"] == []
    assert c.row("qwen3:0.6b")["servers"] == sorted([a.address, b.address])


def test_removed_member_leaves_the_table(make_cluster):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("gemma3:1b", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    c.cluster.remove_node(b.address)
    reg.synchronize_models()
    assert c.row("gemma3:1b") is None
    assert c.row("qwen3:0.6b")["servers"] == [a.address]

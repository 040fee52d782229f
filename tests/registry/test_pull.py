"""Cluster-wide pulls: placement by fit, the aggregated progress stream, joining."""

from __future__ import annotations

import pytest

from olol.api.names import InvalidModelName
from olol.cluster import UnknownNodeError
from tests.registry.conftest import GB, wait_until


def _node_records(events, node):
    return [e for e in events if e.get("node") == node]


def _assert_node_stream_ordered(records):
    """One node's records: manifest first, each digest's bytes only grow to its total,
    verification after the layers, and the node's success last."""
    statuses = [r["status"] for r in records]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "node succeeded"
    assert statuses.index("verifying sha256 digest") > max(
        i for i, r in enumerate(records) if "digest" in r)
    seen: dict[str, int] = {}
    order: list[str] = []
    for r in records:
        if "digest" not in r:
            continue
        if r["digest"] not in seen:
            order.append(r["digest"])
        else:
            # a digest's records are contiguous: digest by digest
            assert order[-1] == r["digest"]
        done = r.get("completed", 0)
        assert done >= seen.get(r["digest"], 0)
        seen[r["digest"]] = done
    last = {r["digest"]: r for r in records if "digest" in r}
    assert all(r["completed"] == r["total"] for r in last.values())
    node_completed = [r["node_completed"] for r in records]
    assert node_completed == sorted(node_completed)
    assert records[-1]["node_completed"] == records[-1]["node_total"] > 0


def test_placement_respects_fit(make_cluster):
    c = make_cluster()
    small = c.add("qwen3:0.6b[size=523M]", disk=2 * GB)       # ~1.5G free
    medium = c.add("qwen3:0.6b[size=523M]", disk=3 * GB)      # ~2.5G free
    large = c.add("qwen3:0.6b[size=523M]", disk=10 * GB)      # ~9.5G free
    reg = c.registry(copies=2)
    reg.synchronize_models()
    op = reg.pull_model("llama3.2:3b")  # 2.0G: does not fit on the small node
    assert sorted(op.nodes) == sorted([medium.address, large.address])
    outcome = op.wait(timeout=20)
    assert outcome == {medium.address: {"status": "success"}, large.address: {"status": "success"}}
    events = list(op.events(timeout=5))
    assert events[-1] == {"status": "success", "nodes": op.nodes}
    assert small.address not in {e.get("node") for e in events}
    row = c.row("llama3.2:3b")
    assert row["servers"] == sorted([medium.address, large.address])
    assert row["size_gb"] == pytest.approx(2.0, abs=0.01)
    # Now the size is known: a 4.1G model fits only on the large node.
    op = reg.pull_model("mistral", )
    assert op.nodes == [large.address]
    assert op.wait(timeout=20) == {large.address: {"status": "success"}}


def test_no_room_anywhere_ends_with_an_error_record(make_cluster):
    c = make_cluster()
    a = c.add("", disk=1 * GB)
    b = c.add("", disk=1 * GB)
    reg = c.registry(copies=1)
    reg.synchronize_models()
    # Size unknown to the cluster: the roomiest node is tried and its Ollama refuses.
    op = reg.pull_model("mistral:latest")
    assert len(op.nodes) == 1
    events = list(op.events(timeout=10))
    final = events[-1]
    assert final["error"].startswith(f"pull of mistral:latest failed on {op.nodes[0]}")
    assert "no space left on device" in final["failed"][op.nodes[0]]
    assert c.row("mistral:latest") is None
    # A model whose size is known (listed on a node) is not sent where it cannot fit.
    big = c.add("mistral:latest[size=4.1G]", disk=5 * GB)
    reg2 = c.registry(copies=2)
    reg2.synchronize_models()
    op = reg2.pull_model("mistral:latest")
    assert op.nodes == [big.address]
    assert {a.address, b.address}.isdisjoint(e.get("node") for e in op.events(timeout=10))


def test_aggregated_stream_is_complete_and_ordered(make_cluster):
    c = make_cluster()
    a = c.add("", disk=5 * GB, pull_speed=6 * GB)
    b = c.add("", disk=5 * GB, pull_speed=6 * GB)
    reg = c.registry(copies=2)
    reg.synchronize_models()
    op = reg.pull_model("llama3.2:3b", [a.address, b.address])
    live = list(op.events(timeout=20))
    late = list(op.events(timeout=1))  # a subscriber after the end gets the full replay
    assert live == late
    assert live[0]["status"] == "pulling manifest" and live[0]["nodes"] == [a.address, b.address]
    assert live[-1] == {"status": "success", "nodes": [a.address, b.address]}
    for node in (a, b):
        records = _node_records(live, node.address)
        _assert_node_stream_ordered(records)
        assert len([r for r in records if "completed" in r and r["completed"] < r["total"]]) > 1
    progress = [e for e in live if "cluster_completed" in e]
    assert [e["cluster_completed"] for e in progress] == sorted(
        e["cluster_completed"] for e in progress)
    assert progress[-1]["cluster_completed"] == progress[-1]["cluster_total"]
    assert progress[-1]["cluster_total"] == 2 * progress[-1]["node_total"]
    assert not any("error" in e for e in live)


def test_duplicate_pull_joins_the_running_one(make_cluster):
    c = make_cluster()
    a = c.add("", disk=5 * GB, pull_speed=4 * GB)
    reg = c.registry()
    reg.synchronize_models()
    first = reg.pull_model("llama3.2:3b", [a.address])
    assert wait_until(lambda: reg.active_pulls() != [])
    second = reg.pull_model("LLAMA3.2:3b")        # same model, placement: joins
    third = reg.pull_model("llama3.2:3b", [a.address])
    assert second is first and third is first
    status = reg.get_model_status("llama3.2:3b")
    assert status[0]["pulling"] == [a.address] and status[0]["nodes"] == []
    assert c.row("llama3.2:3b") is None  # not recorded before the node lists it
    events = list(second.events(timeout=20))
    assert events == list(first.events(timeout=1))
    assert sum(1 for e in events if e.get("status") == "pulling manifest"
               and e.get("node") == a.address) == 1
    assert events[-1]["status"] == "success"
    assert reg.active_pulls() == []
    assert c.row("llama3.2:3b")["servers"] == [a.address]


def test_existing_model_is_updated_where_it_lives(make_cluster):
    c = make_cluster()
    a = c.add("llama3.2:1b[size=1.3G]", disk=5 * GB)
    b = c.add("", disk=5 * GB)
    reg = c.registry(copies=1)
    reg.synchronize_models()
    op = reg.pull_model("llama3.2:1b")
    assert op.nodes == [a.address]
    assert op.wait(timeout=10) == {a.address: {"status": "success"}}
    assert b.address not in c.row("llama3.2:1b")["servers"]


def test_bad_input(make_cluster):
    c = make_cluster()
    c.add("", disk=GB)
    reg = c.registry()
    with pytest.raises(InvalidModelName):
        reg.pull_model("bad name!")
    with pytest.raises(UnknownNodeError):
        reg.pull_model("llama3.2:1b", ["127.0.0.1:1"])

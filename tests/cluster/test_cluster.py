"""ClusterManager against real node agents in front of real simulators."""

from __future__ import annotations

import pytest

from olol.cluster import ClusterManager, NodeUnhealthyError, UnknownNodeError, normalize_address
from olol.rpc.client import NodeClient, NodeError
from olol.store import DatabaseManager
from tests.cluster.conftest import free_port, make_agent, make_sim, short_client

# -- membership ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "  ", "host", "host:", ":80", "host:0", "host:65536",
                                 "http://host:80", "a b:80", "host:80/x", None, 42])
def test_bad_addresses_are_rejected_with_a_clear_message(cluster, bad):
    with pytest.raises(ValueError, match="address"):
        cluster.add_node(bad)
    assert cluster.list_nodes() == []


@pytest.mark.parametrize("good", ["127.0.0.1:50051", " node-1.lan:9000 ", "[::1]:50051",
                                  "gpu7:1"])
def test_good_addresses_are_accepted(good):
    assert normalize_address(good) == good.strip()


def test_add_remove_and_persist_across_reopen(tmp_path, clock):
    folder = tmp_path / "data"
    db = DatabaseManager(folder, clock=clock)
    cluster = ClusterManager(db, clock=clock)
    first = cluster.add_node("10.0.0.1:50051", source="config")
    assert first.address == "10.0.0.1:50051" and first.source == "config"
    assert not first.healthy
    cluster.add_node("10.0.0.2:50051")
    clock.advance(60)
    again = cluster.add_node("10.0.0.1:50051", source="cli")  # idempotent
    assert again.source == "config" and again.first_seen == first.first_seen
    assert db.count("servers") == 2
    assert cluster.remove_node("10.0.0.2:50051") is True
    assert cluster.remove_node("10.0.0.2:50051") is False
    cluster.close()
    db.close()

    db2 = DatabaseManager(folder, clock=clock)
    try:
        reloaded = ClusterManager(db2, clock=clock)
        nodes = reloaded.list_nodes()
        assert [n.address for n in nodes] == ["10.0.0.1:50051"]
        row = db2.search_one("servers", {"address": "10.0.0.1:50051"})
        assert row["source"] == "config" and row["first_seen"] == first.first_seen
        assert set(row) >= {"address", "healthy", "load", "last_check", "first_seen",
                            "hardware_info"}
        # Loaded from the store: nothing is dispatched there before a good poll.
        assert nodes[0].suspect and reloaded.healthy_nodes() == []
    finally:
        db2.close()


def test_sync_from_store_makes_ram_follow_the_table(db, clock):
    cluster = ClusterManager(db, clock=clock)
    cluster.add_node("10.0.0.1:1")
    db.insert("servers", {"address": "10.0.0.9:9", "source": "api"})
    db.remove("servers", {"address": "10.0.0.1:1"})
    changes = cluster.sync_from_store()
    assert changes == {"added": ["10.0.0.9:9"], "removed": ["10.0.0.1:1"]}
    assert [n.address for n in cluster.list_nodes()] == ["10.0.0.9:9"]


def test_sync_config_nodes_only_touches_config_nodes(cluster):
    cluster.add_node("10.0.0.5:5", source="api")
    assert cluster.sync_config_nodes(["10.0.0.1:1", "10.0.0.2:2"])["added"] == [
        "10.0.0.1:1", "10.0.0.2:2"]
    result = cluster.sync_config_nodes(["10.0.0.2:2", "10.0.0.3:3"])
    assert result == {"added": ["10.0.0.3:3"], "removed": ["10.0.0.1:1"]}
    assert [n.address for n in cluster.list_nodes()] == ["10.0.0.2:2", "10.0.0.3:3",
                                                         "10.0.0.5:5"]
    assert {n.address: n.source for n in cluster.list_nodes()}["10.0.0.5:5"] == "api"


def test_client_is_cached_per_node_and_closed_on_removal(db, clock):
    made: list = []

    class Recorder:
        def __init__(self, address):
            self.address, self.closed = address, False
            made.append(self)

        def close(self):
            self.closed = True

    cluster = ClusterManager(db, clock=clock, client_factory=Recorder)
    cluster.add_node("10.0.0.1:1")
    assert cluster.client("10.0.0.1:1") is cluster.client("10.0.0.1:1")
    assert len(made) == 1
    with pytest.raises(UnknownNodeError):
        cluster.client("10.0.0.2:2")
    cluster.remove_node("10.0.0.1:1")
    assert made[0].closed
    with pytest.raises(UnknownNodeError):
        cluster.client("10.0.0.1:1")


def test_default_client_is_a_node_client(db, clock, agent_a):
    cluster = ClusterManager(db, clock=clock, token=None)
    cluster.add_node(agent_a.address)
    try:
        client = cluster.client(agent_a.address)
        assert isinstance(client, NodeClient) and client.address == agent_a.address
        assert client.version(timeout=5)["version"]
    finally:
        cluster.close()


def test_snapshots_do_not_leak_live_state(cluster):
    cluster.add_node("10.0.0.1:1")
    snap = cluster.node("10.0.0.1:1")
    snap.healthy = True
    snap.available_models["x:latest"] = {}
    fresh = cluster.node("10.0.0.1:1")
    assert not fresh.healthy and fresh.available_models == {}
    assert cluster.node("10.0.0.9:9") is None


# -- refresh against real agents ----------------------------------------------------------


def test_refresh_fills_state_from_the_node(cluster, clock, db, agent_a, sim_a):
    cluster.add_node(agent_a.address)
    state = cluster.refresh(agent_a.address, timeout=5)
    assert state.healthy and not state.suspect and state.consecutive_failures == 0
    assert set(state.available_models) == {"llama3.2:1b", "nomic-embed-text:latest"}
    entry = state.available_models["llama3.2:1b"]
    assert entry["name"] == "llama3.2:1b" and entry["size"] > 0 and len(entry["digest"]) == 64
    assert entry["details"]["family"] == "llama"
    assert state.parallel == 4
    assert state.ram_free and state.ram_free > 0
    assert state.vram_free is None  # no GPU on this machine
    assert 0.0 <= state.cpu_load <= 1.0
    assert state.latency_ms is not None and state.latency_ms >= 0
    assert state.last_check == clock()
    row = db.search_one("servers", {"address": agent_a.address})
    assert row["healthy"] is True and row["hardware_info"]["agent"]["parallel"] == 4
    assert row["last_check"] is not None


def test_refresh_sees_a_model_loaded_by_a_generate(cluster, agent_b, sim_b):
    cluster.add_node(agent_b.address)
    with NodeClient(agent_b.address, timeout=10) as direct:
        records = list(direct.generate({"model": "qwen2.5:0.5b", "prompt": "hi",
                                        "stream": False}, timeout=10))
        assert records[-1]["done"] is True
    state = cluster.refresh(agent_b.address, timeout=5)
    assert "qwen2.5:0.5b" in state.loaded_models
    loaded = state.loaded_models["qwen2.5:0.5b"]
    assert loaded["size_vram"] > 0 and loaded["expires_at"]
    assert state.parallel == 2
    nodes = cluster.nodes_with_model("Qwen2.5:0.5b")
    assert [n.address for n in nodes] == [agent_b.address]


def test_refresh_of_a_dead_node_counts_a_failure_and_raises(cluster, db):
    address = f"127.0.0.1:{free_port()}"
    cluster.add_node(address)
    with pytest.raises(NodeError):
        cluster.refresh(address, timeout=2)
    state = cluster.node(address)
    assert not state.healthy and state.consecutive_failures == 1 and state.last_error
    assert db.search_one("servers", {"address": address})["healthy"] is False


def test_refresh_when_the_nodes_ollama_is_down_is_a_failure(cluster):
    sim = make_sim("llama3.2:1b")
    agent = make_agent(sim)
    try:
        cluster.add_node(agent.address)
        assert cluster.refresh(agent.address, timeout=5).healthy
        sim.stop()
        with pytest.raises(NodeUnhealthyError, match="ollama unreachable"):
            cluster.refresh(agent.address, timeout=5)
        assert not cluster.node(agent.address).healthy
    finally:
        agent.stop(0)
        sim.stop()


# -- unions and routing helpers -----------------------------------------------------------


def test_unions_merge_healthy_nodes(cluster, agent_a, agent_b):
    cluster.add_node(agent_a.address)
    cluster.add_node(agent_b.address)
    dead = f"127.0.0.1:{free_port()}"
    cluster.add_node(dead)
    cluster.refresh(agent_a.address, timeout=5)
    cluster.refresh(agent_b.address, timeout=5)
    with pytest.raises(NodeError):
        cluster.refresh(dead, timeout=2)
    with NodeClient(agent_a.address, timeout=10) as direct:
        list(direct.generate({"model": "llama3.2:1b", "prompt": "x", "stream": False},
                             timeout=10))
    cluster.refresh(agent_a.address, timeout=5)

    tags = cluster.models_union()
    names = [m["name"] for m in tags]
    assert sorted(names) == ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"]
    assert len(names) == len(set(names))  # one entry per model even if on two nodes
    assert list(tags[0]) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert [m["modified_at"] for m in tags] == sorted((m["modified_at"] for m in tags),
                                                      reverse=True)

    ps = cluster.ps_union()
    assert "llama3.2:1b" in [m["name"] for m in ps]
    one = next(m for m in ps if m["name"] == "llama3.2:1b")
    assert set(one) == {"name", "model", "size", "digest", "details", "expires_at",
                        "size_vram", "context_length"}

    assert cluster.has_model("llama3.2:1b") and cluster.has_model("nomic-embed-text")
    assert not cluster.has_model("mistral") and not cluster.has_model("bad name!")
    # loaded first
    assert cluster.nodes_with_model("llama3.2:1b")[0].address == agent_a.address
    assert {n.address for n in cluster.healthy_nodes()} == {agent_a.address, agent_b.address}


def test_suspect_success_and_note_loaded(cluster, agent_a):
    cluster.add_node(agent_a.address)
    cluster.refresh(agent_a.address, timeout=5)
    assert cluster.has_model("llama3.2:1b")
    cluster.mark_suspect(agent_a.address, "stream broke")
    state = cluster.node(agent_a.address)
    assert state.suspect and state.suspect_reason == "stream broke"
    assert cluster.healthy_nodes() == [] and cluster.nodes_with_model("llama3.2:1b") == []
    # a suspect node's models stay listed: one failed dispatch must not hide them
    assert cluster.has_model("llama3.2:1b")
    assert "llama3.2:1b" in [m["name"] for m in cluster.models_union()]
    cluster.record_success(agent_a.address)
    assert [n.address for n in cluster.healthy_nodes()] == [agent_a.address]

    cluster.note_loaded(agent_a.address, "nomic-embed-text")
    state = cluster.node(agent_a.address)
    assert "nomic-embed-text:latest" in state.loaded_models
    # noted entries steer the scheduler but never appear in /api/ps
    assert "nomic-embed-text:latest" not in [m["name"] for m in cluster.ps_union()]
    assert cluster.nodes_with_model("nomic-embed-text")[0].address == agent_a.address


def test_node_dict_is_json_friendly(cluster, agent_a):
    import json

    cluster.add_node(agent_a.address)
    cluster.refresh(agent_a.address, timeout=5)
    data = cluster.node(agent_a.address).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["address"] == agent_a.address and data["healthy"] is True
    assert "llama3.2:1b" in data["models"]


def test_short_client_factory_builds_working_clients(agent_a):
    client = short_client(agent_a.address)
    try:
        assert client.status(timeout=5)["agent"]["parallel"] == 4
    finally:
        client.close()


def test_live_ps_asks_the_nodes_now_and_falls_back_to_the_last_poll(cluster):
    from tests.cluster.conftest import make_agent, make_sim

    fresh_sim, gone_sim = make_sim("llama3.2:1b"), make_sim("qwen2.5:0.5b")
    fresh, gone = make_agent(fresh_sim), make_agent(gone_sim)
    try:
        for agent in (fresh, gone):
            cluster.add_node(agent.address)
        with NodeClient(gone.address, timeout=10) as direct:
            list(direct.generate({"model": "qwen2.5:0.5b", "prompt": "x", "stream": False}))
        cluster.refresh(fresh.address, timeout=5)
        cluster.refresh(gone.address, timeout=5)
        assert [m["name"] for m in cluster.ps_union()] == ["qwen2.5:0.5b"]
        # the model is loaded after the last poll, and one node goes away
        with NodeClient(fresh.address, timeout=10) as direct:
            list(direct.generate({"model": "llama3.2:1b", "prompt": "x", "stream": False}))
        gone.stop(0)
        live = {m["name"]: m for m in cluster.live_ps(timeout=1.0)}
        assert set(live) == {"llama3.2:1b", "qwen2.5:0.5b"}  # new one seen, gone one kept
        assert live["llama3.2:1b"]["expires_at"] and live["llama3.2:1b"]["size"] > 0
    finally:
        fresh.stop(0)
        gone.stop(0)
        fresh_sim.stop()
        gone_sim.stop()

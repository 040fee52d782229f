"""The cluster's shared node snapshots: rebuilt once per change, never stale."""

from __future__ import annotations

from olol.cluster import ClusterManager
from tests.registry.test_plan import _status

GB = 1_000_000_000


def _offline(address):
    raise AssertionError("no node is called here")


def test_every_change_is_seen_by_the_next_reader(db, clock):
    cluster = ClusterManager(db, clock=clock, client_factory=_offline)
    for address in ("10.0.0.1:5000", "10.0.0.2:5000"):
        cluster.add_node(address)
        cluster.record_poll(address, _status({"a:latest": GB}, 10 * GB), 1.0)
    first = cluster.healthy_nodes()
    assert [n.address for n in first] == ["10.0.0.1:5000", "10.0.0.2:5000"]
    assert cluster.healthy_nodes()[0] is first[0]  # shared until something changes
    cluster.note_loaded("10.0.0.1:5000", "a")
    assert "a:latest" in cluster.healthy_nodes()[0].loaded_models
    assert "a:latest" not in first[0].loaded_models  # an earlier snapshot stays as it was
    cluster.mark_suspect("10.0.0.2:5000", "a call failed")
    assert [n.address for n in cluster.healthy_nodes()] == ["10.0.0.1:5000"]
    assert cluster.has_model("a")  # a suspect node still offers its models
    cluster.record_success("10.0.0.2:5000")
    assert len(cluster.healthy_nodes()) == 2
    cluster.record_poll_failure("10.0.0.1:5000", "boom", failure_threshold=1, open_s=30.0)
    assert [n.address for n in cluster.healthy_nodes()] == ["10.0.0.2:5000"]
    clock.advance(31.0)  # the circuit's end is read at each call, not cached
    assert [n.address for n in cluster.healthy_nodes()] == ["10.0.0.2:5000"]  # still unhealthy
    cluster.record_poll("10.0.0.1:5000", _status({"b:latest": GB}, 10 * GB), 1.0)
    nodes = cluster.healthy_nodes()
    assert [n.address for n in nodes] == ["10.0.0.1:5000", "10.0.0.2:5000"]
    assert set(nodes[0].available_models) == {"b:latest"}
    cluster.remove_node("10.0.0.2:5000")
    assert [n.address for n in cluster.healthy_nodes()] == ["10.0.0.1:5000"]

"""The health sweep at scale: every node polled at once, hung nodes fail alone."""

from __future__ import annotations

from olol.cluster import ClusterManager
from olol.health import HealthMonitor
from olol.rpc.client import NodeClient
from tests.cluster.fake_agents import FakeAgents, node_status


def test_many_hung_nodes_neither_fail_nor_delay_the_healthy_ones(db, clock):
    # With a 2-thread pool, polling one node per thread, 24 hung nodes held the threads
    # past the sweep's deadline and the healthy nodes queued behind them were reported
    # as failed. Every poll is in flight at once now.
    status = node_status(["llama3.2:1b", "qwen3:0.6b"], loaded=["qwen3:0.6b"])
    with FakeAgents(24, None, threads=32) as hung, FakeAgents(8, status) as good:
        cluster = ClusterManager(db, clock=clock,
                                 client_factory=lambda a: NodeClient(a, timeout=5.0))
        monitor = HealthMonitor(cluster, db, clock=clock, timeout_s=1.0, max_workers=2,
                                failure_threshold=1, stats_interval_s=0.0)
        try:
            for address in hung.addresses + good.addresses:
                cluster.add_node(address)
            results = monitor.poll_all()
            for address in good.addresses:
                assert results[address]["ok"], results[address]
                assert cluster.node(address).healthy
                assert "llama3.2:1b" in cluster.node(address).available_models
            for address in hung.addresses:
                assert not results[address]["ok"]
                assert "DEADLINE_EXCEEDED" in results[address]["error"]
            # the sweep wrote the servers rows through the cluster's RAM view of the store
            rows = {r["address"]: r for r in cluster.sync_manager.read_from_ram("servers")}
            assert all(rows[a]["healthy"] for a in good.addresses)
            assert not any(rows[a]["healthy"] for a in hung.addresses)
            assert cluster.sync_manager.force_sync("servers")["servers"] == {
                "added": 0, "removed": 0, "changed": 0}
        finally:
            monitor.stop()
            cluster.close()


def test_a_cluster_larger_than_max_in_flight_is_swept_in_rounds(db, clock):
    status = node_status(["llama3.2:1b"])
    with FakeAgents(10, status) as good:
        cluster = ClusterManager(db, clock=clock,
                                 client_factory=lambda a: NodeClient(a, timeout=5.0))
        monitor = HealthMonitor(cluster, db, clock=clock, timeout_s=2.0, max_in_flight=3)
        try:
            for address in good.addresses:
                cluster.add_node(address)
            results = monitor.poll_all()
            assert sorted(results) == sorted(good.addresses)
            assert all(r["ok"] for r in results.values())
            again = monitor.poll_all()  # no poll was left marked in flight
            assert all(r["ok"] for r in again.values()) and len(again) == 10
        finally:
            monitor.stop()
            cluster.close()

"""SyncManager is the one RAM view of the servers and models tables: the proxy builds
it once, and the cluster, the registry and the health sweep read and write through it."""

from __future__ import annotations

from olol.cluster import ClusterManager
from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.registry import ModelRegistry
from olol.store import DatabaseManager, SyncManager
from tests.registry.test_plan import _status

GB = 1_000_000_000
NO_DRIFT = {"added": 0, "removed": 0, "changed": 0}


def _offline(address):
    raise AssertionError("no node is called here")


def test_the_proxy_builds_one_view_and_passes_it_in(clock):
    db = DatabaseManager.memory(clock=clock)
    db.insert("servers", {"address": "10.0.0.9:5000", "healthy": True, "source": "api"})
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0"), clock=clock, db=db,
                  client_factory=_offline)
    try:
        assert isinstance(proxy.sync_manager, SyncManager)
        assert proxy.cluster.sync_manager is proxy.sync_manager
        assert proxy.registry.sync_manager is proxy.sync_manager
        rows = proxy.sync_manager.read_from_ram("servers")
        assert [r["address"] for r in rows] == ["10.0.0.9:5000"]
        assert [n.address for n in proxy.cluster.list_nodes()] == ["10.0.0.9:5000"]
    finally:
        db.close()


def test_cluster_and_registry_share_the_view_and_the_store_wins(db, clock):
    view = SyncManager(db, tables=("servers", "models"))
    view.load_initial_state()
    cluster = ClusterManager(db, clock=clock, client_factory=_offline, sync_manager=view)
    registry = ModelRegistry(cluster, db, clock=clock)
    assert registry.sync_manager is view  # the cluster's view, not a copy of its own
    for address, models in (("10.0.0.1:5000", {"a:latest": GB}),
                            ("10.0.0.2:5000", {"a:latest": GB, "b:latest": GB})):
        cluster.add_node(address)
        cluster.record_poll(address, _status(models, 10 * GB), 1.0)
        cluster.persist(address)
    registry.synchronize_models(refresh=False)
    assert sorted(r["address"] for r in view.read_from_ram("servers")) == [
        "10.0.0.1:5000", "10.0.0.2:5000"]
    assert {r["name"]: r["servers"] for r in view.read_from_ram("models")} == {
        "a:latest": ["10.0.0.1:5000", "10.0.0.2:5000"], "b:latest": ["10.0.0.2:5000"]}
    assert view.force_sync() == {"servers": NO_DRIFT, "models": NO_DRIFT}
    # A write behind the view's back is not read until the view is re-derived...
    db.update("models", {"pinned": True}, {"name": "b:latest"})
    assert not registry.is_pinned("b")
    # ...which the next table synchronization does first: the store wins.
    registry.synchronize_models(refresh=False)
    assert registry.is_pinned("b")
    assert registry.get_model_status("b")[0]["pinned"] is True
    # Membership changes go through the view too.
    assert cluster.remove_node("10.0.0.1:5000")
    assert [r["address"] for r in view.read_from_ram("servers")] == ["10.0.0.2:5000"]
    db.remove("servers", {"address": "10.0.0.2:5000"})
    assert cluster.sync_from_store() == {"added": [], "removed": ["10.0.0.2:5000"]}
    assert view.force_sync() == {"servers": NO_DRIFT, "models": NO_DRIFT}
    registry.close()

"""HealthMonitor: concurrent sweeps, circuit breaker, records, scheduling."""

from __future__ import annotations

import threading

import pytest

from olol.cluster import ClusterManager
from olol.health import JOB_ID, HealthMonitor
from olol.rpc.client import NodeClient
from tests.cluster.conftest import free_port, make_agent, make_sim, short_client, wait_until


@pytest.fixture
def monitors():
    made: list[HealthMonitor] = []
    yield made
    for m in made:
        m.stop()


def monitor_for(monitors, cluster, db, clock, **kw) -> HealthMonitor:
    kw.setdefault("timeout_s", 1.0)
    kw.setdefault("stats_interval_s", 0.0)
    m = HealthMonitor(cluster, db, clock=clock, **kw)
    monitors.append(m)
    return m


def test_a_hung_and_a_dead_node_do_not_stall_the_sweep(cluster, db, clock, agent_a, silent,
                                                       monitors):
    dead = f"127.0.0.1:{free_port()}"
    for address in (silent.address, dead, agent_a.address):
        cluster.add_node(address)
    monitor = monitor_for(monitors, cluster, db, clock, timeout_s=0.5, failure_threshold=1)
    results = monitor.poll_all()
    assert results[agent_a.address]["ok"] and results[agent_a.address]["healthy"]
    assert not results[silent.address]["ok"]
    assert "DEADLINE_EXCEEDED" in results[silent.address]["error"]
    assert not results[dead]["ok"]
    assert "UNAVAILABLE" in results[dead]["error"]
    assert [n.address for n in cluster.healthy_nodes()] == [agent_a.address]
    rows = {r["address"]: r for r in db.all("servers")}
    assert rows[agent_a.address]["healthy"] is True
    assert rows[silent.address]["healthy"] is False
    assert rows[silent.address]["last_error"].startswith("DEADLINE_EXCEEDED")


def test_polls_run_concurrently_on_named_threads(db, clock, agent_a, agent_b, monitors):
    """Every poll must wait at a barrier for all the others: serial polling would break it."""
    barrier = threading.Barrier(3, timeout=5.0)
    threads: list[str] = []

    class BarrierClient:
        def __init__(self, address):
            self.inner = short_client(address)

        def status(self, timeout=None):
            threads.append(threading.current_thread().name)
            barrier.wait()
            return self.inner.status(timeout=timeout)

        def close(self):
            self.inner.close()

    cluster = ClusterManager(db, clock=clock, client_factory=BarrierClient)
    second_agent = make_agent(make_sim("llama3.2:1b"))
    try:
        for address in (agent_a.address, agent_b.address, second_agent.address):
            cluster.add_node(address)
        monitor = monitor_for(monitors, cluster, db, clock, timeout_s=5.0)
        results = monitor.poll_all()
        assert all(r["ok"] for r in results.values()), results
        assert len(threads) == 3 and all(t.startswith("olol-health") for t in threads)
    finally:
        cluster.close()
        second_agent.stop(0)


def test_threshold_circuit_probe_and_recovery(cluster, db, clock, monitors):
    sim = make_sim("llama3.2:1b")
    port = sim.port
    agent = make_agent(sim)
    try:
        cluster.add_node(agent.address)
        monitor = monitor_for(monitors, cluster, db, clock, failure_threshold=3, open_s=30.0)
        assert monitor.poll_all()[agent.address]["healthy"]

        sim.stop()  # the node's Ollama goes away: the agent reports it unreachable
        for expected_failures in (1, 2):
            clock.advance(5)
            result = monitor.poll_all()[agent.address]
            assert not result["ok"] and "ollama unreachable" in result["error"]
            state = cluster.node(agent.address)
            # below the threshold the node stays healthy (and usable)
            assert state.healthy and state.consecutive_failures == expected_failures
        clock.advance(5)
        assert monitor.poll_all()[agent.address]["healthy"] is False
        state = cluster.node(agent.address)
        assert state.circuit_open_until == clock() + 30.0
        assert cluster.healthy_nodes() == []
        assert cluster.models_union() == [] and not cluster.has_model("llama3.2:1b")

        clock.advance(10)  # circuit still open: not polled at all
        assert monitor.poll_all()[agent.address] == {"skipped": "circuit open",
                                                     "healthy": False}
        assert cluster.node(agent.address).consecutive_failures == 3

        clock.advance(25)  # open_s passed: one probe, which fails and re-opens
        assert not monitor.poll_all()[agent.address]["ok"]
        assert cluster.node(agent.address).circuit_open_until == clock() + 30.0

        sim = make_sim("llama3.2:1b", port=port)  # Ollama is back on the same port
        clock.advance(31)
        assert wait_until(lambda: monitor.poll_all()[agent.address].get("ok", False),
                          timeout=10, step=0.1)
        state = cluster.node(agent.address)
        assert state.healthy and state.consecutive_failures == 0
        assert state.circuit_open_until == 0.0 and not state.suspect
        assert [n.address for n in cluster.healthy_nodes()] == [agent.address]
        assert [m["name"] for m in cluster.models_union()] == ["llama3.2:1b"]
    finally:
        agent.stop(0)
        sim.stop()


def test_a_good_poll_clears_suspect(cluster, db, clock, agent_a, monitors):
    cluster.add_node(agent_a.address)
    monitor = monitor_for(monitors, cluster, db, clock)
    monitor.poll_all()
    cluster.mark_suspect(agent_a.address, "dispatch failed")
    assert cluster.healthy_nodes() == []
    monitor.poll_all()
    assert [n.address for n in cluster.healthy_nodes()] == [agent_a.address]


def test_server_stats_rows_and_pruning(cluster, db, clock, agent_a, monitors):
    dead = f"127.0.0.1:{free_port()}"
    cluster.add_node(agent_a.address)
    cluster.add_node(dead)
    monitor = monitor_for(monitors, cluster, db, clock, failure_threshold=1,
                          stats_interval_s=60.0, retention_hours=24.0)
    monitor.poll_all()
    good = db.search("server_stats", {"server": agent_a.address})
    # no GPU on this node: no gpu_* samples
    assert {r["type"]: r["value"] for r in good}.keys() == {"health", "load", "latency", "slots"}
    assert next(r for r in good if r["type"] == "health")["value"] == 1
    assert next(r for r in good if r["type"] == "latency")["value"] >= 0
    slots = next(r for r in good if r["type"] == "slots")
    assert slots["value"] == 0 and slots["total"] == 4  # the agent's parallel slots
    bad = db.search("server_stats", {"server": dead})
    assert [(r["type"], r["value"]) for r in bad] == [("health", 0)]

    clock.advance(10)  # inside stats_interval_s and no change: no new samples
    monitor.poll_all()
    assert db.count("server_stats") == 5
    clock.advance(60)
    monitor.poll_all()
    assert db.count("server_stats") == 10

    clock.advance(23 * 3600)
    assert monitor.prune_stats() == 0
    clock.advance(3600 - 30)  # the first samples are now just over 24 h old
    assert monitor.prune_stats() == 5
    assert db.count("server_stats") == 5
    assert monitor.prune_stats(max_age_hours=0) == 5


class _FakeNvml:
    """An NVML with two cards (the agent's hardware probe reads it as pynvml)."""

    import pynvml

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = 0

    def nvmlInit(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return "580.1"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h):
        class M:
            total, used, free = 80 << 30, (10 + 20 * h) << 30, (70 - 20 * h) << 30
        return M

    def nvmlDeviceGetUtilizationRates(self, h):
        class U:
            gpu, memory = 30 + 40 * h, 5
        return U

    def _unsupported(self, *a):
        raise self.NVMLError(self.pynvml.NVML_ERROR_NOT_SUPPORTED)

    nvmlDeviceGetTemperature = _unsupported
    nvmlDeviceGetPowerUsage = _unsupported
    nvmlDeviceGetEnforcedPowerLimit = _unsupported


def test_gpu_nodes_get_gpu_samples_and_a_changed_retention_prunes_at_the_next_sweep(
        cluster, db, clock, monitors):
    from olol.agent.agent import Agent, AgentConfig
    from olol.agent.hardware import HardwareProbe, NvmlProbe

    sim = make_sim()
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url, parallel=3,
                              status_timeout=1.0),
                  hardware=HardwareProbe(None, NvmlProbe(_FakeNvml()))).start()
    try:
        cluster.add_node(agent.address)
        monitor = monitor_for(monitors, cluster, db, clock, stats_interval_s=60.0,
                              retention_hours=24.0)
        monitor.run_once()
        got = {r["type"]: r for r in db.search("server_stats", {"server": agent.address})}
        assert got["slots"]["value"] == 0 and got["slots"]["total"] == 3
        assert got["gpu_util"]["value"] == 50.0 and got["gpu_util"]["gpus"] == 2  # mean
        assert got["gpu_memory"]["value"] == 40 << 30  # 10 + 30 GiB used
        assert got["gpu_memory"]["total"] == 160 << 30 and got["gpu_memory"]["gpus"] == 2
        clock.advance(2 * 3600)
        monitor.run_once()  # a prune runs (every 10 min), nothing is 24 h old
        assert db.count("server_stats", {"server": agent.address}) == 12
        monitor.retention_hours = 1.0  # what the run-time setting does
        clock.advance(1)
        monitor.run_once()  # 1 s later: the changed retention prunes now, not in 10 min
        assert db.count("server_stats", {"server": agent.address}) == 6
    finally:
        agent.stop(0)
        sim.stop()


def test_node_removed_during_sweep_is_ignored(cluster, db, clock, agent_a, monitors):
    gate = threading.Event()

    class SlowClient:
        def __init__(self, address):
            self.inner = NodeClient(address, timeout=5)

        def status(self, timeout=None):
            gate.wait(5)
            return self.inner.status(timeout=timeout)

        def close(self):
            self.inner.close()

    cluster2 = ClusterManager(db, clock=clock, client_factory=SlowClient)
    cluster2.add_node(agent_a.address)
    monitor = monitor_for(monitors, cluster2, db, clock, timeout_s=5.0)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(monitor.poll_all()), name="test-sweep")
    t.start()
    assert wait_until(lambda: bool(monitor._in_flight), timeout=5)
    cluster2.remove_node(agent_a.address)
    gate.set()
    t.join(timeout=10)
    assert not t.is_alive()
    assert out == {} and db.count("servers") == 0 and db.count("server_stats") == 0
    cluster2.close()


def test_scheduled_job_runs_and_stops(cluster, db, agent_a, monitors):
    from apscheduler.schedulers.background import BackgroundScheduler

    cluster.add_node(agent_a.address)
    shared = BackgroundScheduler()
    shared.start()
    try:
        monitor = HealthMonitor(cluster, db, interval_s=60.0, timeout_s=2.0)
        monitors.append(monitor)
        monitor.start(shared)
        job = shared.get_job(JOB_ID)
        assert job.max_instances == 1 and job.coalesce is True
        assert wait_until(lambda: monitor.sweeps >= 1, timeout=10)  # first sweep runs at once
        assert cluster.node(agent_a.address).healthy
        monitor.stop()
        assert shared.get_job(JOB_ID) is None and shared.running  # shared one left running
    finally:
        shared.shutdown(wait=True)


def test_own_scheduler_lifecycle(cluster, db, agent_a):
    cluster.add_node(agent_a.address)
    monitor = HealthMonitor(cluster, db, interval_s=60.0, timeout_s=2.0)
    monitor.start()
    try:
        with pytest.raises(RuntimeError):
            monitor.start()
        assert wait_until(lambda: monitor.sweeps >= 1, timeout=10)
    finally:
        monitor.stop()
    assert not any(t.name.startswith("olol-health") for t in threading.enumerate()
                   if t.is_alive())
    with pytest.raises(RuntimeError):
        monitor.poll_all()
    assert monitor.run_once() == {} and monitor.job_errors == 1


def test_bad_settings_are_rejected(cluster, db):
    with pytest.raises(ValueError):
        HealthMonitor(cluster, db, interval_s=0)
    with pytest.raises(ValueError):
        HealthMonitor(cluster, db, failure_threshold=0)

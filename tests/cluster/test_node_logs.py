"""Node state changes in the logs and in ``olol nodes ls``: each change logged once with
its reason in plain words, each recovery once; a proxy with a wrong node token says so
in exactly one line and in the REASON column."""

from __future__ import annotations

import argparse
import logging

import grpc
import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.cli.nodes import format_table, register
from olol.cluster import ClusterManager
from olol.context import ProxyConfig
from olol.health import HealthMonitor, NodeTransitions, node_state_of
from olol.node_state import NodeState, plain_reason
from olol.proxy import Proxy
from olol.rpc.client import NodeError
from olol.sim import SimConfig, Simulator, parse_models_spec
from olol.store import DatabaseManager
from tests.support import FakeClock, wait_until

GOOD = {"ollama": {"reachable": True, "models": [{"name": "llama3.2:1b"}], "loaded": []},
        "agent": {"parallel": 2}}
REFUSED = NodeError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last "
                    "error: UNKNOWN: ipv4:127.0.0.1:9: Failed to connect to remote host: "
                    "Connection refused", 503)


@pytest.mark.parametrize("raw, words", [
    ("UNAUTHENTICATED: missing or invalid bearer token", "token rejected"),
    ("UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
     "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
     "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
     "certificate: OK", "TLS: certificate signed by unknown authority"),
    ("UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
     "Failed to connect to remote host: Connection refused", "connection refused"),
    ("ollama unreachable: /api/version: ollama unreachable at http://127.0.0.1:1: [Errno 111] "
     "Connection refused; /api/tags: ...",
     "Ollama not reachable: connection refused at http://127.0.0.1:1"),
    ("UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
     "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
     "routines:OPENSSL_internal:WRONG_VERSION_NUMBER", "TLS: the worker does not speak TLS"),
    ("UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
     "Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification "
     "Check failed.", "TLS: certificate not valid for this host name"),
    ("UNAVAILABLE: errors resolving x.invalid:1: [...Domain name not found]",
     "host name not found (DNS)"),
    ("DEADLINE_EXCEEDED: Deadline Exceeded", "no answer in time (timeout)"),
    ("model registry poll failed: UNAUTHENTICATED: missing or invalid bearer token",
     "model registry poll failed: token rejected"),
    ("something new", "something new"),
])
def test_plain_reasons(raw, words):
    assert plain_reason(raw) == words


class Switch:
    """A node client whose status poll fails until told otherwise."""

    def __init__(self) -> None:
        self.error: Exception | None = REFUSED

    def __call__(self, address: str) -> Switch:
        return self

    def status(self, timeout=None) -> dict:
        if self.error is not None:
            raise self.error
        return GOOD

    def close(self) -> None:
        pass


@pytest.fixture
def setup():
    clock = FakeClock()
    db = DatabaseManager.memory(clock=clock)
    switch = Switch()
    cluster = ClusterManager(db, clock=clock, client_factory=switch)
    cluster.add_node("gpu1:50051")
    monitor = HealthMonitor(cluster, db, clock=clock, failure_threshold=2, open_s=0.0,
                            stats_interval_s=0.0)
    yield clock, cluster, monitor, switch
    monitor.stop()
    db.close()


def node_lines(caplog, address: str, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level and address in r.getMessage()
            and r.name.startswith("olol")]


def test_a_change_and_its_recovery_are_each_logged_once(setup, caplog):
    clock, cluster, monitor, switch = setup
    caplog.set_level(logging.INFO)
    for _ in range(4):  # never healthy yet: unhealthy at its first failed poll
        monitor.poll_all()
        clock.advance(5)
    warnings = node_lines(caplog, "gpu1:50051", logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unhealthy: connection refused" in warnings[0].getMessage()
    assert "is the worker running" in warnings[0].getMessage()
    assert cluster.node("gpu1:50051").reason() == "connection refused"

    caplog.clear()
    switch.error = None
    for _ in range(3):
        monitor.poll_all()
        clock.advance(5)
    lines = node_lines(caplog, "gpu1:50051")
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert lines[0].levelno == logging.INFO
    assert "recovered" in message and "after 20 s unhealthy (connection refused)" in message

    # healthy -> one failed poll (under the threshold): no change, no line
    caplog.clear()
    switch.error = REFUSED
    monitor.poll_all()
    assert node_lines(caplog, "gpu1:50051", logging.WARNING) == []
    # the second one crosses it: one line
    clock.advance(5)
    monitor.poll_all()
    monitor.poll_all()
    mine = [r for r in node_lines(caplog, "gpu1:50051", logging.WARNING)
            if r.name == "olol.health"]
    assert len(mine) == 1 and "unhealthy: connection refused" in mine[0].getMessage()


def test_a_new_reason_for_a_down_node_is_told(setup, caplog):
    clock, _cluster, monitor, switch = setup
    caplog.set_level(logging.INFO)
    monitor.poll_all()
    switch.error = NodeError(grpc.StatusCode.UNAUTHENTICATED,
                             "missing or invalid bearer token", 401)
    clock.advance(5)
    monitor.poll_all()
    monitor.poll_all()
    messages = [r.getMessage() for r in node_lines(caplog, "gpu1:50051", logging.WARNING)]
    assert len(messages) == 2
    assert "still unhealthy, now: token rejected" in messages[1]


def test_suspect_from_a_failed_dispatch_and_back(setup, caplog):
    clock, cluster, monitor, switch = setup
    switch.error = None
    monitor.poll_all()
    caplog.set_level(logging.INFO)
    caplog.clear()
    # a dispatch failed between two sweeps (scheduler.handle_server_failure)
    cluster.mark_suspect("gpu1:50051", "the node sent no first record within 120 s")
    clock.advance(5)
    monitor.poll_all()  # sees it suspect first, then the good poll clears it
    messages = [r.getMessage() for r in node_lines(caplog, "gpu1:50051")]
    assert len(messages) == 2, messages
    assert "is suspect: the node sent no first record within 120 s" in messages[0]
    assert "recovered" in messages[1]


def test_node_states_and_the_table_reason_column():
    now = 100.0
    fresh = NodeState("a:1")
    assert node_state_of(fresh, now) == ("unknown", None)
    down = NodeState("b:1", last_check=90.0,
                     last_error="UNAUTHENTICATED: missing or invalid bearer token")
    assert node_state_of(down, now) == ("unhealthy", "token rejected")
    odd = NodeState("c:1", healthy=True, suspect=True, suspect_reason="Socket closed",
                    last_check=90.0)
    assert node_state_of(odd, now)[0] == "suspect"
    ok = NodeState("d:1", healthy=True, last_check=90.0)
    assert node_state_of(ok, now) == ("healthy", None)
    table = format_table([n.to_dict() for n in (fresh, down, odd, ok)]).splitlines()
    assert table[0].split()[-1] == "REASON"
    assert table[1].endswith("not checked yet")
    assert table[2].endswith("token rejected")
    assert "connection closed by the worker" in table[3]
    assert table[4].endswith("-")
    # an older proxy sends no reason: it is worked out from the raw error
    old = down.to_dict()
    del old["reason"]
    assert format_table([old]).splitlines()[1].endswith("token rejected")


def test_transitions_forget_removed_nodes():
    clock = FakeClock()
    seen = []

    class Observer:
        def node_state_changed(self, address, old, new, reason):
            seen.append((address, old, new))

        def node_removed(self, address):
            seen.append((address, "removed"))

    t = NodeTransitions(clock, Observer())
    t.observe([NodeState("a:1", healthy=True, last_check=1.0)])
    t.observe([])
    assert seen == [("a:1", None, "healthy"), ("a:1", "removed")]
    assert t.state("a:1") is None


# ---------------------------------------------------------------------- live
def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="olol")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_a_wrong_node_token_is_one_clear_line_and_a_reason(tmp_path, caplog, capsys):
    sim = Simulator(SimConfig(models=parse_models_spec("llama3.2:1b")), host="127.0.0.1",
                    port=0).start()
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url,
                              token="the-right-one")).start()
    caplog.set_level(logging.INFO)
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data",
                              nodes=[agent.address], node_token="a-wrong-one",
                              health_interval_s=0.2, failure_threshold=2)).start()
    try:
        # several sweeps, the circuit's probes and a registry sync go by
        assert wait_until(lambda: proxy.health.sweeps >= 8, timeout=20)
        lines = node_lines(caplog, agent.address, logging.WARNING)
        assert len(lines) == 1, [r.getMessage() for r in lines]
        message = lines[0].getMessage()
        assert f"node {agent.address} is unhealthy: token rejected" in message
        assert "node_token" in message  # what to check
        capsys.readouterr()
        assert run_cli(["nodes", "ls", "--url", proxy.url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[-1] == "REASON"
        row = next(line for line in table if line.startswith(agent.address))
        assert row.split()[1] == "no" and row.endswith("token rejected")
        assert run_cli(["nodes", "ls", "--json", "--url", proxy.url]) == 0
        assert '"reason": "token rejected"' in capsys.readouterr().out
    finally:
        proxy.stop(grace_s=1)
        agent.stop(0)
        sim.stop()

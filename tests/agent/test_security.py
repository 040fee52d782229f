"""Tokens, admin token, TLS, mutual TLS and the loopback-only default."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from olol.agent.agent import Agent, AgentConfig, AgentConfigError
from olol.rpc.client import NodeClient, NodeError, TLSConfig


@pytest.fixture(scope="module")
def locked(sim):
    a = Agent(AgentConfig(ollama_url=sim.url, token="s3cret", admin_token="adm1n")).start()
    yield a
    a.stop(0)


def test_token_refused_and_accepted(locked):
    for token in (None, "wrong"):
        with NodeClient(locked.address, token=token) as c, pytest.raises(NodeError) as info:
            c.version()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.http_status == 401
    with NodeClient(locked.address, token="s3cret") as c:
        assert "version" in c.version()
        assert list(c.generate({"model": "llama3.2:1b", "prompt": "x", "stream": False}))


def test_the_multiplexed_call_needs_the_token_too(locked):
    body = {"model": "llama3.2:1b", "prompt": "x", "stream": True}
    for token in (None, "wrong"):
        with NodeClient(locked.address, token=token, mux_lone=True) as c, \
                pytest.raises(NodeError) as info:
            list(c.generate(body))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.http_status == 401
        assert c._mux is not None and c._mux.supported  # refused, not unknown
    with NodeClient(locked.address, token="s3cret", mux_lone=True) as c:
        assert list(c.generate(body))[-1]["done"] is True
        assert len(locked.servicer.mux_sessions()) == 1


def test_health_stays_open(locked):
    with grpc.insecure_channel(locked.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_admin_token_required_for_model_commands(locked):
    with NodeClient(locked.address, token="s3cret") as c:
        with pytest.raises(NodeError) as info:
            list(c.pull({"model": "llama3.2:1b"}))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.message == "admin token required"
        with pytest.raises(NodeError):
            list(c.model_command("delete", {"model": "llama3.2:1b"}))
        with pytest.raises(NodeError):
            c.copy({"source": "llama3.2:1b", "destination": "x:1"})
    with NodeClient(locked.address, token="adm1n") as admin:
        assert list(admin.pull({"model": "llama3.2:1b"}))[-1]["status"] == "success"
        assert "version" in admin.version()  # the admin token works everywhere


def test_tls_server(sim, pki):
    cfg = AgentConfig(ollama_url=sim.url, tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with Agent(cfg) as agent:
        with NodeClient(agent.address, tls=TLSConfig(root_cert=pki["ca"])) as c:
            assert "version" in c.version()
        with NodeClient(agent.address, timeout=2) as plain, pytest.raises(NodeError) as info:
            plain.version()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(sim, pki):
    cfg = AgentConfig(ollama_url=sim.url, tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                      tls_client_ca=pki["ca"])
    with Agent(cfg) as agent:
        good = TLSConfig(root_cert=pki["ca"], client_cert=pki["client_cert"],
                         client_key=pki["client_key"])
        with NodeClient(agent.address, tls=good) as c:
            assert c.status()["agent"]["version"]
        with NodeClient(agent.address, tls=TLSConfig(root_cert=pki["ca"]), timeout=2) as c:
            with pytest.raises(NodeError) as info:
                c.version()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_plaintext_binds_loopback_only(sim, caplog):
    with pytest.raises(AgentConfigError, match="without TLS"):
        Agent(AgentConfig(listen="0.0.0.0:0", ollama_url=sim.url))
    with caplog.at_level(logging.WARNING, logger="olol.agent.agent"):
        with Agent(AgentConfig(listen="0.0.0.0:0", ollama_url=sim.url,
                               insecure_bind_any=True)) as agent:
            with NodeClient(agent.address) as c:
                assert "version" in c.version()
    assert any("WITHOUT TLS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kwargs,match", [
    ({"listen": "nope"}, "HOST:PORT"),
    ({"parallel": 0}, "parallel"),
    ({"tls_cert": "/x.pem"}, "go together"),
    ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "no such file"),
])
def test_bad_config_is_refused_before_start(kwargs, match):
    with pytest.raises(AgentConfigError, match=match):
        Agent(AgentConfig(**kwargs))

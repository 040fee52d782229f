"""Model commands take one path: the coordinator sends them all through the agents'
``RemoteModelCommand`` (real agents and simulators; the agent records what it serves)."""

from __future__ import annotations

import pytest

import olol.agent.agent as agent_module
from olol.rpc import node_pb2
from olol.rpc.client import NodeError
from tests.registry.conftest import GB, wait_until

MODEL_RPCS = ("Pull", "Push", "Create", "Copy", "Delete", "RemoteModelCommand")


@pytest.fixture
def served(monkeypatch):
    """Every model command the agents serve: (rpc, action)."""
    calls: list[tuple[str, str]] = []
    original = agent_module.BudgetedServicer

    def recording(name):
        def method(self, request, context):
            action = request.action if name == "RemoteModelCommand" else ""
            calls.append((name, action.lower()))
            return getattr(original, name)(self, request, context)
        return method

    recorder = type("RecordingServicer", (original,),
                    {name: recording(name) for name in MODEL_RPCS})
    monkeypatch.setattr(agent_module, "BudgetedServicer", recorder)
    return calls


def test_registry_and_client_model_commands_use_remote_model_command(make_cluster, served):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    b = c.add("", disk=5 * GB)
    reg = c.registry()
    reg.synchronize_models()
    op = reg.pull_model("qwen3:0.6b", [b.address])
    assert op.wait(30)[b.address] == {"status": "success"}
    assert wait_until(lambda: op.done)
    assert reg.copy_model("qwen3:0.6b", "mine", [b.address]) == {
        b.address: {"status": "copied"}}
    assert reg.remove_model("mine", [b.address], force=True) == {
        b.address: {"status": "deleted"}}
    client = c.cluster.client(b.address)
    created = list(client.create({"model": "made", "from": "qwen3:0.6b"}))
    assert created[-1].get("status") == "success"
    try:
        list(client.push({"model": "made"}))
    except NodeError:
        pass  # the outcome of a push is the simulator's business; its path is ours
    assert {rpc for rpc, _ in served} == {"RemoteModelCommand"}
    assert {action for _, action in served} >= {"pull", "copy", "delete", "create", "push"}
    assert c.row("qwen3:0.6b")["servers"] == sorted([a.address, b.address])


def test_failures_keep_ollamas_message_and_status(make_cluster, served):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    client = c.cluster.client(a.address)
    with pytest.raises(NodeError) as err:
        client.delete({"model": "nothing-here"})
    assert err.value.http_status == 404 and "not found" in err.value.message
    with pytest.raises(NodeError) as err:
        list(client.model_command("explode", {"model": "qwen3:0.6b"}))
    assert err.value.http_status == 400 and "unknown model command" in err.value.message
    assert {rpc for rpc, _ in served} == {"RemoteModelCommand"}


def test_the_agent_still_serves_the_deprecated_calls_of_older_coordinators(make_cluster,
                                                                          served):
    c = make_cluster()
    a = c.add("qwen3:0.6b", disk=5 * GB)
    stub = c.cluster.client(a.address)._stub
    reply = stub.Copy(node_pb2.OllamaRequest(
        body=b'{"source": "qwen3:0.6b", "destination": "old:latest"}'), timeout=10)
    assert reply.http_status == 200
    reply = stub.Delete(node_pb2.OllamaRequest(body=b'{"model": "old:latest"}'), timeout=10)
    assert reply.http_status == 200
    assert [rpc for rpc, _ in served] == ["Copy", "Delete"]
    assert "old:latest" not in {e.spec.name for e in a.sim.store.all()}

"""``Forward``: the agent relays a call it has no typed RPC for, as bytes, and only
what its rules allow (GET/POST under /api/ and /v1/, never model management)."""

from __future__ import annotations

import grpc
import orjson
import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.agent.forward import check_target
from olol.rpc.client import NodeClient, NodeError

MODEL = "llama3.2:1b"


def test_post_is_relayed_with_status_type_and_streamed_pieces(client, sim):
    body = orjson.dumps({"model": MODEL, "prompt": "hello", "options": {"temperature": 0}})
    call = client.forward("POST", "/api/x-sim/echo", body, content_type="application/json",
                          model=MODEL, timeout=30)
    status, content_type, first = call.head()
    rest = b"".join(call.pieces())
    assert (status, content_type) == (200, "application/x-ndjson")
    records = [orjson.loads(line) for line in (first + rest).split(b"\n") if line]
    assert len(records) > 2 and records[-1]["done"] is True


def test_node_errors_and_empty_answers_keep_their_status(client):
    call = client.forward("POST", "/v1/images/generations",
                          orjson.dumps({"model": "missing", "prompt": "x"}),
                          content_type="application/json", timeout=30)
    status, content_type, first = call.head()
    assert status == 404 and content_type.startswith("application/json")
    assert orjson.loads(first + b"".join(call.pieces()))["error"]["message"] == \
        "model 'missing' not found"
    call = client.forward("GET", "/api/status?verbose=1", timeout=30)
    status, _, first = call.head()
    assert status == 200 and orjson.loads(first + b"".join(call.pieces()))["cloud"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"),
    ("POST", "/api/copy"), ("POST", "/api/delete"), ("POST", "/api/blobs/sha256:00"),
    ("POST", "/api/signout"), ("GET", "/api/user/keys/x"), ("POST", "/API/PULL"),
    ("GET", "/etc/passwd"), ("GET", "/"), ("GET", "/api/../etc/passwd"),
    ("GET", "/api//tags"), ("GET", "/_sim/stats"), ("GET", "http://evil/api/tags"),
    ("GET", "/api/tags\r\nHost: evil"), ("GET", "/api/tags#x"), ("DELETE", "/api/x"),
    ("PUT", "/v1/x"), ("GET", "/v1/" + "a" * 3000),
    # percent-encoded: Ollama routes on the decoded path
    ("POST", "/api/%70ull"), ("POST", "/api/%64elete"), ("POST", "/api/blobs%2Fsha256:00"),
    ("GET", "/api/%2e%2e/%2e%2e/etc/passwd"), ("GET", "/api/x%2F%2Fy"), ("GET", "/api/%0a"),
])
def test_paths_outside_the_rules_are_refused(client, method, path):
    assert check_target(method, path) is not None
    call = client.forward(method, path, timeout=10)
    with pytest.raises(NodeError) as info:
        call.head()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.http_status == 403


@pytest.mark.parametrize("path", ["/api/status", "/v1/images/generations", "/api/x?y=1&z=%20",
                                  "/v1/models/llama3.2:1b"])
def test_paths_inside_the_rules_are_allowed(path):
    assert check_target("GET", path) is None


def test_forward_needs_the_token():
    from olol.sim import Simulator
    from tests.support import make_sim
    sim: Simulator = make_sim()
    agent = Agent(AgentConfig(ollama_url=sim.url, token="s3cret", admin_token="adm1n")).start()
    try:
        with NodeClient(agent.address, token="wrong") as c, pytest.raises(NodeError) as info:
            c.forward("GET", "/api/status", timeout=10).head()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with NodeClient(agent.address, token="s3cret") as c:
            status, _, _ = c.forward("GET", "/api/status", timeout=10).head()
        assert status == 200
    finally:
        agent.stop(0)
        sim.stop()

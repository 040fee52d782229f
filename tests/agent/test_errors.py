"""Error mapping: Ollama's status and message reach the coordinator intact."""

from __future__ import annotations

import grpc
import pytest
import requests

from olol.agent.agent import Agent, AgentConfig
from olol.rpc.client import NodeClient, NodeError, node_error

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def _err(fn) -> NodeError:
    with pytest.raises(NodeError) as info:
        fn()
    return info.value


def test_unknown_model_is_not_found_with_ollamas_words(sim, client):
    direct = requests.post(sim.url + "/api/generate", json={"model": "nope:1b", "prompt": "x"},
                           timeout=10)
    err = _err(lambda: list(client.generate({"model": "nope:1b", "prompt": "x"})))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.http_status == 404
    assert err.message == direct.json()["error"] == "model 'nope:1b' not found"


def test_missing_model_in_chat_is_invalid_argument(client):
    err = _err(lambda: list(client.chat({"messages": []})))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.http_status == 400
    assert err.message == "model is required"


def test_embed_unknown_model(client):
    err = _err(lambda: client.embed({"model": "ghost", "input": "x"}))
    assert err.http_status == 404
    assert err.message == 'model "ghost" not found, try pulling it first'


def test_busy_is_resource_exhausted(sim, client):
    sim.faults.fail_next(1, status=503, error=BUSY)
    err = _err(lambda: list(client.generate({"model": "llama3.2:1b", "prompt": "x"})))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.http_status == 503
    assert err.message == BUSY


def test_other_status_is_internal_and_keeps_the_status(sim, client):
    sim.faults.fail_next(1, status=500, error="runner crashed")
    err = _err(lambda: client.embed({"model": "nomic-embed-text", "input": "x"}))
    assert err.code == grpc.StatusCode.INTERNAL and err.http_status == 500
    assert err.message == "runner crashed"


def test_error_record_after_stream_start_ends_with_error_status(client):
    stream = client.pull({"model": "nonexist:1b", "stream": True})
    first = next(stream)
    assert first == {"status": "pulling manifest"}
    err = _err(lambda: next(stream))
    assert err.message == "pull model manifest: file does not exist"
    assert err.mid_stream and err.code == grpc.StatusCode.INTERNAL


def test_stream_cut_by_ollama_is_unavailable(sim, client):
    sim.faults.drop_next_stream(1, after_chunks=2)
    stream = client.generate({"model": "llama3.2:1b", "prompt": "x",
                              "options": {"num_predict": 20}})
    got = []
    err = _err(lambda: got.extend(stream))
    assert len(got) == 2
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.retryable


def test_ollama_unreachable_is_unavailable_502():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with Agent(AgentConfig(ollama_url=f"http://127.0.0.1:{port}")) as agent:
        with NodeClient(agent.address) as client:
            err = _err(lambda: client.tags())
            assert err.code == grpc.StatusCode.UNAVAILABLE and err.http_status == 502
            status = client.status()
    assert status["ollama"]["reachable"] is False and status["ollama"]["error"]


def test_node_down_is_unavailable_503():
    with NodeClient("127.0.0.1:1", timeout=2.0) as client:
        err = _err(client.version)
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.http_status == 503


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "m"

    def trailing_metadata(self):
        return ()


@pytest.mark.parametrize("code,status", [
    (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.INVALID_ARGUMENT, 400),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 503), (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.UNAUTHENTICATED, 401), (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.INTERNAL, 500), (grpc.StatusCode.UNKNOWN, 500),
])
def test_code_to_http_without_metadata(code, status):
    assert node_error(_FakeRpcError(code)).http_status == status

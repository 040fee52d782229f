"""A sick Ollama seen through the agent: cut streams, and answers built from a stream
with progress messages (``aggregate``), which show a hung Ollama from a slow one."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest
import requests

from olol.agent.ollama import OllamaClient, OllamaUnavailable
from olol.rpc.client import NodeError
from tests.agent.test_relay import direct_lines, stable
from tests.support import wait_until

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "options": {"seed": 3, "num_predict": 12}}
GEN = {"model": "llama3.2:1b", "prompt": "Why?", "options": {"seed": 5, "num_predict": 10}}


def _err(fn) -> NodeError:
    with pytest.raises(NodeError) as info:
        fn()
    return info.value


@pytest.mark.parametrize("how", ["close", "end"])
def test_a_stream_cut_before_its_first_record_is_unavailable(sim, client, how):
    # "end": the body ends cleanly right after the 200 headers, with no record at all;
    # the agent used to end its call cleanly too (and the coordinator answered 502).
    sim.faults.drop_next_stream(1, after_chunks=0, how=how)
    got: list = []
    err = _err(lambda: got.extend(client.chat(dict(CHAT, stream=True))))
    assert got == []
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.retryable and not err.mid_stream


def test_a_stream_that_ends_without_its_final_record_is_unavailable(sim, client):
    sim.faults.drop_next_stream(1, after_chunks=2, how="end")
    got: list = []
    err = _err(lambda: got.extend(client.generate(dict(GEN, stream=True))))
    assert len(got) == 2 and not any(r["done"] for r in got)
    assert err.code == grpc.StatusCode.UNAVAILABLE


def test_a_chunked_body_cut_before_its_first_chunk_is_seen_by_every_reader():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer_headers_then_close():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    t = threading.Thread(target=answer_headers_then_close, name="t-cut-server", daemon=True)
    t.start()
    try:
        ollama = OllamaClient(f"http://127.0.0.1:{server.getsockname()[1]}")
        call = ollama.call("POST", "/api/chat", b"{}")
        assert call.send() == 200
        with pytest.raises(OllamaUnavailable):
            list(call.lines())
    finally:
        t.join(timeout=5)
        server.close()


@pytest.mark.parametrize("endpoint,body", [
    ("chat", dict(CHAT, stream=False)),
    ("chat", dict(CHAT, stream=False, think=True)),
    ("chat", dict(CHAT, stream=False, messages=[{"role": "user", "content": "weather?"}],
                  tools=[{"type": "function", "function": {
                      "name": "get_weather", "description": "d",
                      "parameters": {"type": "object",
                                     "properties": {"city": {"type": "string"}}}}}])),
    ("generate", dict(GEN, stream=False)),
    ("generate", dict(GEN, stream=False, think=True)),
    ("generate", {"model": "llama3.2:1b", "stream": False}),  # a load: one record
])
def test_an_aggregated_answer_is_the_non_streamed_answer(sim, client, endpoint, body):
    call = client.chat if endpoint == "chat" else client.generate
    stream = call(body, aggregate=60.0)
    relayed = list(stream)
    direct = direct_lines(sim, f"/api/{endpoint}", body)
    assert len(relayed) == 1 and len(direct) == 1
    assert stable(relayed[0]) == stable(direct[0])
    assert list(relayed[0]) == list(direct[0])  # the same fields in the same order
    assert stream.received == 1  # a quick answer: no progress message


def test_an_aggregated_answer_shows_progress_while_ollama_generates(slow_sim, slow_client):
    body = {"model": "llama3.2:1b", "prompt": "x", "stream": False,
            "options": {"num_predict": 25, "seed": 1}}  # half a second at 50 tokens/s
    stream = slow_client.generate(body, aggregate=0.05)
    records = list(stream)
    assert len(records) == 1 and records[0]["done"] and records[0]["eval_count"] == 25
    assert stream.received >= 3  # progress messages, then the answer
    direct = requests.post(slow_sim.url + "/api/generate", json=body, timeout=10).json()
    assert records[0]["response"] == direct["response"]


def test_a_hung_ollama_sends_no_progress(slow_sim, slow_client):
    slow_sim.faults.hang_next(1)
    stream = slow_client.chat(dict(CHAT, stream=False), aggregate=0.01)
    result: dict = {}

    def read():
        try:
            result["records"] = list(stream)
        except NodeError as exc:
            result["error"] = exc

    t = threading.Thread(target=read, name="t-hung-reader", daemon=True)
    t.start()
    assert wait_until(lambda: slow_sim.faults.hanging() == 1)
    t.join(timeout=0.5)  # whatever the agent does meanwhile, it sends nothing
    assert stream.received == 0 and t.is_alive()
    stream.cancel()
    t.join(timeout=5)
    assert result["error"].code == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: slow_sim.faults.hanging() == 0)  # the agent hung up


def test_an_error_record_while_aggregating_is_an_error_before_any_answer(sim, client):
    sim.faults.drop_next_stream(1, after_chunks=3, how="error", error="runner crashed")
    err = _err(lambda: list(client.chat(dict(CHAT, stream=False), aggregate=60.0)))
    assert err.code == grpc.StatusCode.INTERNAL and err.http_status == 500
    assert err.message == "runner crashed" and not err.mid_stream


def test_an_aggregated_stream_cut_is_unavailable(sim, client):
    sim.faults.drop_next_stream(1, after_chunks=3, how="end")
    err = _err(lambda: list(client.generate(dict(GEN, stream=False), aggregate=60.0)))
    assert err.code == grpc.StatusCode.UNAVAILABLE

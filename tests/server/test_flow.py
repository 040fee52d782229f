"""The queued flow through the front door, with a scripted dispatcher publishing exact
event sequences on the hub: streaming, non-streaming, errors before and after the
first record, model rewriting, headers, cancellation on disconnect, queue full."""

from __future__ import annotations

import json
import socket

import ollama
import openai
import pytest
import requests

from olol.hub import DONE, ERROR
from tests.server.conftest import (
    ScriptedDispatcher,
    build_ctx,
    generate_script,
    serve,
    wait_until,
)

GEN = {"model": "llama3.2:1b", "prompt": "say hi"}


@pytest.fixture()
def served(agent):
    with serve(build_ctx([agent.address])) as s:
        yield s


def test_stream_is_ndjson_flushed_per_record(served):
    with ScriptedDispatcher(served.ctx, generate_script(["Hel", "lo", "!"])) as disp:
        r = requests.post(f"{served.url}/api/generate", json=GEN, stream=True, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/x-ndjson"
        request_id = r.headers["X-OLOL-Request-Id"]
        assert int(r.headers["X-OLOL-Queue-Position"]) >= 1
        lines = list(r.iter_lines())
    assert all(lines), "no blank lines"
    records = [json.loads(line) for line in lines]
    assert [rec["response"] for rec in records] == ["Hel", "lo", "!", ""]
    assert records[-1]["done"] is True
    record = disp.claimed[0]
    assert record["id"] == request_id
    assert (record["kind"], record["endpoint"], record["api"]) == ("sync", "generate", "ollama")
    assert record["stream"] is True and record["prompt"] == "say hi"
    assert record["model_key"] == "llama3.2:1b" and record["body"] == GEN
    assert len(served.ctx.hub) == 0


def test_official_client_stream_and_non_stream_with_model_rewrite(served):
    # the node answered for "llama3.2:1b"; the caller spelled it differently
    script = generate_script(["a", "b"], model="llama3.2:1b")
    with ScriptedDispatcher(served.ctx, script):
        client = ollama.Client(host=served.url)
        parts = list(client.generate(model="LLAMA3.2:1b", prompt="x", stream=True))
        assert "".join(p.response for p in parts) == "ab"
        assert {p.model for p in parts} == {"LLAMA3.2:1b"}
        whole = client.generate(model="llama3.2:1b", prompt="x")
        assert whole.response == "ab" and whole.done and whole.eval_count == 2


def test_priority_and_session_headers_reach_the_record(served):
    with ScriptedDispatcher(served.ctx, generate_script(["x"])) as disp:
        r = requests.post(f"{served.url}/api/generate", json={**GEN, "stream": False},
                          headers={"X-OLOL-Priority": "500", "X-OLOL-Session": "conv-1"},
                          timeout=10)
        assert r.status_code == 200
    assert disp.claimed[0]["priority"] == 100  # clamped
    assert disp.claimed[0]["session"] == "conv-1"


def test_error_before_first_record_becomes_the_status(served):
    def script(record):
        return [(ERROR, {"status": 503, "error": "no node can run it", "started": False}, 0)]

    with ScriptedDispatcher(served.ctx, script):
        r = requests.post(f"{served.url}/api/generate", json=GEN, timeout=10)
        assert r.status_code == 503
        assert r.json() == {"error": "no node can run it"}
        assert "X-OLOL-Request-Id" in r.headers
        with pytest.raises(ollama.ResponseError) as err:
            list(ollama.Client(host=served.url).generate(model="llama3.2:1b", prompt="x",
                                                         stream=True))
        assert err.value.status_code == 503


def test_error_after_start_ends_the_stream_with_an_error_line(served):
    def script(record):
        return [
            ("chunk", {"model": "llama3.2:1b", "response": "par", "done": False}, 0),
            (ERROR, {"status": 500, "error": "node lost", "started": True}, 0),
        ]

    with ScriptedDispatcher(served.ctx, script):
        r = requests.post(f"{served.url}/api/generate", json=GEN, timeout=10)
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines()]
        assert lines == [{"model": "llama3.2:1b", "response": "par", "done": False},
                         {"error": "node lost"}]
        r = requests.post(f"{served.url}/api/generate", json={**GEN, "stream": False},
                          timeout=10)
        assert r.status_code == 500 and r.json() == {"error": "node lost"}


def test_client_disconnect_cancels_the_request(served):
    def script(record):
        events = [("chunk", {"model": "llama3.2:1b", "response": "x", "done": False}, 0.05)
                  for _ in range(200)]
        return events + [(DONE, {"model": "llama3.2:1b", "response": "", "done": True}, 0)]

    with ScriptedDispatcher(served.ctx, script) as disp:
        host, port = served.url.removeprefix("http://").split(":")
        payload = json.dumps(GEN).encode()
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
            )
            assert b"200 OK" in sock.recv(4096)
        assert wait_until(lambda: bool(disp.claimed), timeout=5)
        request_id = disp.claimed[0]["id"]
        assert wait_until(lambda: False in disp.publish_results, timeout=10)
    assert wait_until(lambda: len(served.ctx.hub) == 0, timeout=5)
    assert served.ctx.queue.get(request_id)["status"] == "cancelled"


def test_queue_full_is_503_with_retry_after(agent):
    ctx = build_ctx([agent.address], queue_kw={"max_depth": 1})
    with serve(ctx) as s:
        # no dispatcher: a job fills the only slot
        r = requests.post(f"{s.url}/olol/v1/jobs", json={"endpoint": "generate", "body": GEN},
                          timeout=5)
        assert r.status_code == 202
        r = requests.post(f"{s.url}/api/generate", json={**GEN, "stream": False}, timeout=5)
        assert r.status_code == 503
        assert r.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
        assert int(r.headers["Retry-After"]) >= 1
        r = requests.post(f"{s.url}/v1/completions", json={"model": "llama3.2:1b",
                                                            "prompt": "x"}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["type"] == "api_error"
        assert "Retry-After" in r.headers
        assert len(ctx.hub) == 0


def test_client_gone_while_queued_cancels_the_request(served):
    # no dispatcher: the request waits in the queue until its client goes away
    host, port = served.url.removeprefix("http://").split(":")
    payload = json.dumps({**GEN, "stream": False}).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        assert wait_until(lambda: len(served.ctx.queue.peek(limit=10)) == 1, timeout=5)
        request_id = served.ctx.queue.peek(limit=10)[0]["id"]
    assert wait_until(lambda: served.ctx.queue.get(request_id)["status"] == "cancelled",
                      timeout=10)
    assert wait_until(lambda: len(served.ctx.hub) == 0, timeout=5)


def test_openai_chat_stream_and_not(served):
    def script(record):
        chunks = [("chunk", {"model": "llama3.2:1b", "created_at": "2024-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": w}, "done": False}, 0)
                  for w in ("Hi", " there")]
        final = {"model": "llama3.2:1b", "created_at": "2024-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2}
        return chunks + [(DONE, final, 0)]

    with ScriptedDispatcher(served.ctx, script) as disp:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "hello"}]
        stream = client.chat.completions.create(model="llama3.2:1b", messages=msgs,
                                                stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hi there"
        assert chunks[-1].choices[0].finish_reason == "stop"
        done = client.chat.completions.create(model="llama3.2:1b", messages=msgs)
        assert done.choices[0].message.content == "Hi there"
        assert done.usage.total_tokens == 6 and done.model == "llama3.2:1b"
    assert {r["api"] for r in disp.claimed} == {"openai"}
    assert disp.claimed[0]["body"]["messages"] == msgs


def test_openai_embeddings_float_and_base64(served):
    def script(record):
        n = len(record["body"]["input"]) if isinstance(record["body"]["input"], list) else 1
        return [(DONE, {"model": "nomic-embed-text", "embeddings": [[0.5, -0.25]] * n,
                        "prompt_eval_count": 2}, 0)]

    with ScriptedDispatcher(served.ctx, script):
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        out = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])  # base64
        assert [d.embedding for d in out.data] == [[0.5, -0.25], [0.5, -0.25]]
        out = client.embeddings.create(model="nomic-embed-text", input="a",
                                       encoding_format="float")
        assert out.data[0].embedding == [0.5, -0.25]


def test_openai_stream_error_after_start_raises_in_the_client(served):
    def script(record):
        return [
            ("chunk", {"model": "llama3.2:1b", "message": {"role": "assistant",
                                                          "content": "par"}, "done": False}, 0),
            (ERROR, {"status": 500, "error": "node lost", "started": True}, 0),
        ]

    with ScriptedDispatcher(served.ctx, script):
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="llama3.2:1b", messages=[{"role": "user", "content": "x"}], stream=True)
        with pytest.raises(openai.APIError) as err:
            list(stream)
        assert "node lost" in str(err.value)

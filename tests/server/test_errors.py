"""Bad input gets Ollama's (or OpenAI's) own error, never a stack trace or a 500."""

from __future__ import annotations

import ollama
import openai
import pytest
import requests

from tests.server.conftest import build_ctx, serve


@pytest.fixture(scope="module")
def served(agent):
    ctx = build_ctx([agent.address], max_body_bytes=64 * 1024)
    with serve(ctx) as s:
        yield s


def post(served, path: str, data: bytes | None = None, **kw):
    return requests.post(f"{served.url}{path}", data=data, timeout=5, **kw)


@pytest.mark.parametrize(
    ("path", "raw", "status", "message"),
    [
        ("/api/generate", b"", 400, "missing request body"),
        ("/api/chat", b"{", 400, "unexpected EOF"),
        ("/api/generate", b"[1]",
         400, "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/embeddings", b'{"prompt": "x"}', 400, "model is required"),
        ("/api/generate", b'{"model": ""}', 404, "model '' not found"),
        ("/api/generate", b'{"model": "nope:1b", "prompt": "x"}', 404, "model 'nope:1b' not found"),
        ("/api/chat", b'{"model": "nope", "messages": []}', 404, "model 'nope' not found"),
        ("/api/embed", b'{"model": "nope", "input": "x"}',
         404, 'model "nope" not found, try pulling it first'),
        ("/api/embeddings", b'{"model": "nope", "prompt": "x"}',
         404, 'model "nope" not found, try pulling it first'),
        ("/api/embed", b'{"model": "nomic-embed-text", "input": 3}', 400, "invalid input type"),
        ("/api/generate", b'{"model": "llama3.2:1b", "prompt": "x", "stream": "yes"}',
         400, "json: cannot unmarshal string into Go struct field GenerateRequest.stream "
              "of type bool"),
        ("/api/generate", b'{"model": "llama3.2:1b", "options": {"num_ctx": "big"}}',
         400, 'option "num_ctx" must be of type integer'),
        ("/api/show", b'{}', 400, "model is required"),
        ("/api/show", b'{"model": "nope"}', 404, "model 'nope' not found"),
    ],
)
def test_native_errors_are_ollamas(served, path, raw, status, message):
    r = post(served, path, raw)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"error": message}


def test_nothing_was_queued_for_rejected_requests(served):
    post(served, "/api/generate", b'{"model": "nope", "prompt": "x"}')
    assert served.ctx.queue.list_jobs(limit=10) == []
    assert len(served.ctx.hub) == 0


def test_body_over_the_limit_is_413(served):
    big = b'{"model": "llama3.2:1b", "prompt": "' + b"x" * (70 * 1024) + b'"}'
    r = post(served, "/api/generate", big)
    assert r.status_code == 413
    assert "too large" in r.json()["error"]
    r = post(served, "/v1/chat/completions", big)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "api_error"


def test_bad_priority_and_session_headers(served):
    body = b'{"model": "llama3.2:1b", "prompt": "x"}'
    r = post(served, "/api/generate", body, headers={"X-OLOL-Priority": "urgent"})
    assert r.status_code == 400 and "X-OLOL-Priority" in r.json()["error"]
    r = post(served, "/api/generate", body, headers={"X-OLOL-Session": "s" * 500})
    assert r.status_code == 400 and "X-OLOL-Session" in r.json()["error"]


def test_unknown_route_and_wrong_method_like_gin(served):
    r = requests.get(f"{served.url}/api/nothing", timeout=5)
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["Content-Type"].startswith("text/plain")
    r = requests.get(f"{served.url}/api/generate", timeout=5)
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    assert "POST" in r.headers["Allow"]
    r = requests.post(f"{served.url}/api/tags", timeout=5)
    assert r.status_code == 405


def test_official_ollama_client_raises_with_status(served):
    client = ollama.Client(host=served.url)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope:7b", prompt="hi")
    assert err.value.status_code == 404
    assert err.value.error == "model 'nope:7b' not found"
    with pytest.raises(ollama.ResponseError) as err:
        list(client.chat(model="nope", messages=[{"role": "user", "content": "x"}], stream=True))
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nope", input="x")
    assert err.value.status_code == 404
    assert err.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope")
    assert err.value.status_code == 404


def test_official_openai_client_errors(served):
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["message"] == "model 'nope' not found"
    assert err.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="llama3.2:1b", messages=[])
    assert err.value.body["message"] == "[] is too short - 'messages'"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="nomic-embed-text", input=[])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope:1b")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_openai_bad_json_is_openai_shaped(served):
    r = post(served, "/v1/chat/completions", b"{not json")
    assert r.status_code == 400
    body = r.json()["error"]
    assert body["type"] == "invalid_request_error" and body["message"]


def test_unexpected_failure_is_a_logged_500_without_trace(served, monkeypatch, caplog):
    def broken() -> list:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(served.ctx.cluster, "models_union", broken)
    r = requests.get(f"{served.url}/api/tags", timeout=5)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    r = requests.get(f"{served.url}/v1/models", timeout=5)
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "internal error"
    assert "secret internals" not in r.text
    assert any("unhandled error" in rec.message for rec in caplog.records)

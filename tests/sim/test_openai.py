"""The /v1 surface driven by the official ``openai`` client and raw SSE reads."""

from __future__ import annotations

import json

import openai
import pytest
import requests


@pytest.fixture
def oa(sim):
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0, timeout=10)


def test_chat_completion_stream_matches_non_stream(oa):
    msgs = [{"role": "user", "content": "hello"}]
    whole = oa.chat.completions.create(model="llama3.2:1b", messages=msgs, seed=5)
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens > 0
    chunks = list(oa.chat.completions.create(model="llama3.2:1b", messages=msgs, seed=5,
                                             stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_chat_max_tokens_and_tools(oa):
    out = oa.chat.completions.create(model="llama3.2:1b", max_tokens=2, seed=1,
                                     messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].finish_reason == "length"
    tools = [{"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object",
                                           "properties": {"zone": {"type": "string"}}}}}]
    out = oa.chat.completions.create(model="llama3.2:1b", tools=tools,
                                     messages=[{"role": "user", "content": "call get_time"}])
    assert out.choices[0].finish_reason == "tool_calls"
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time" and "zone" in json.loads(call.function.arguments)


def test_completions(oa):
    out = oa.completions.create(model="llama3.2:1b", prompt="Once", seed=2)
    assert out.object == "text_completion" and out.choices[0].text
    streamed = list(oa.completions.create(model="llama3.2:1b", prompt="Once", seed=2,
                                          stream=True))
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_embeddings_base64_and_float(oa, sim):
    res = oa.embeddings.create(model="nomic-embed-text", input=["a", "b"])  # SDK asks base64
    assert len(res.data) == 2 and len(res.data[0].embedding) == 64
    raw = requests.post(sim.url + "/v1/embeddings", timeout=5,
                        json={"model": "nomic-embed-text", "input": "a",
                              "encoding_format": "float"}).json()
    assert raw["data"][0]["embedding"] == pytest.approx(res.data[0].embedding, abs=1e-6)
    bad = requests.post(sim.url + "/v1/embeddings", timeout=5,
                        json={"model": "nomic-embed-text", "input": []})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_models_and_errors(oa):
    ids = {m.id for m in oa.models.list()}
    assert "llama3.2:1b" in ids
    assert oa.models.retrieve("llama3.2:1b").id == "llama3.2:1b"
    with pytest.raises(openai.NotFoundError) as err:
        oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["message"] == "model 'nope' not found"
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="llama3.2:1b", messages=[])
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("nope")


def test_sse_framing(sim):
    r = requests.post(sim.url + "/v1/chat/completions", timeout=5, json={
        "model": "llama3.2:1b", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    finish = json.loads(events[-2][6:])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"


def test_openai_fault_uses_openai_shape(sim):
    sim.faults.fail_next(1, status=500, error="boom")
    r = requests.post(sim.url + "/v1/chat/completions", timeout=5, json={
        "model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "boom", "type": "api_error", "param": None,
                                  "code": None}}

"""``/v1/messages`` and ``/v1/responses`` through the front door's queue, with a scripted
dispatcher publishing exact event sequences: what is queued, priority, errors before
and after the first record in each API's shape, backpressure, thinking relaxed."""

from __future__ import annotations

import anthropic
import openai
import pytest
import requests

from olol.hub import DONE, ERROR
from tests.server.conftest import ScriptedDispatcher, build_ctx, serve

MODEL = "llama3.2:1b"
USER = [{"role": "user", "content": "hello"}]


def chat_script(words=("Hi", " there"), model=MODEL):
    def script(record):
        events = [("chunk", {"model": model, "created_at": "2024-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": w}, "done": False}, 0)
                  for w in words]
        events.append((DONE, {"model": model, "created_at": "2024-01-01T00:00:00Z",
                              "message": {"role": "assistant", "content": ""}, "done": True,
                              "done_reason": "stop", "prompt_eval_count": 4,
                              "eval_count": len(words)}, 0))
        return events
    return script


@pytest.fixture()
def served(agent):
    with serve(build_ctx([agent.address])) as s:
        yield s


def clients(url):
    return (anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=10),
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10))


def test_messages_are_queued_as_native_chats_with_priority(served):
    ac, _ = clients(served.url)
    with ScriptedDispatcher(served.ctx, chat_script()) as disp:
        message = ac.messages.create(
            model=MODEL, max_tokens=20, system="be brief", messages=USER,
            extra_headers={"X-OLOL-Priority": "7"})
        assert message.content[0].text == "Hi there"
        assert message.stop_reason == "end_turn" and message.model == MODEL
        assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 2)
        with ac.messages.stream(model=MODEL, max_tokens=20, messages=USER) as stream:
            assert "".join(stream.text_stream) == "Hi there"
            assert stream.get_final_message().usage.output_tokens == 2
    first = disp.claimed[0]
    assert (first["kind"], first["endpoint"], first["api"]) == ("sync", "chat", "anthropic")
    assert first["priority"] == 7 and first["prompt"] == "hello"
    assert first["body"] == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, *USER],
        "options": {"num_predict": 20}, "stream": False,
    }
    assert disp.claimed[1]["body"]["stream"] is True
    assert len(served.ctx.hub) == 0


def test_responses_are_queued_as_native_chats_with_priority(served):
    _, oc = clients(served.url)
    with ScriptedDispatcher(served.ctx, chat_script()) as disp:
        response = oc.responses.create(model=MODEL, input="hello", instructions="be brief",
                                       extra_headers={"X-OLOL-Priority": "-3"})
        assert response.output_text == "Hi there" and response.status == "completed"
        assert response.id.startswith("resp_") and response.usage.total_tokens == 6
        with oc.responses.stream(model=MODEL, input="hello") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert deltas == ["Hi", " there"] and final.output_text == "Hi there"
    first = disp.claimed[0]
    assert first["priority"] == -3 and first["endpoint"] == "chat"
    assert first["body"]["messages"] == [{"role": "system", "content": "be brief"}, *USER]
    assert first["body"]["options"] == {"temperature": 1.0}


def test_errors_before_the_answer_in_each_apis_shape(served):
    r = requests.post(f"{served.url}/v1/messages", json={
        "model": "nope:1b", "max_tokens": 5, "messages": USER}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"type": "error", "error": {"type": "not_found_error",
                                                   "message": "model 'nope:1b' not found"}}
    r = requests.post(f"{served.url}/v1/responses", json={"model": "nope:1b", "input": "x"},
                      timeout=10)
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "model 'nope:1b' not found",
                                 "type": "not_found_error", "param": None, "code": None}
    for body in (b"", b"{", b"[]", b'{"model": 5}'):
        r = requests.post(f"{served.url}/v1/messages", data=body, timeout=10)
        assert r.status_code == 400 and r.json()["type"] == "error", body
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = requests.post(f"{served.url}/v1/responses", data=body, timeout=10)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = requests.get(f"{served.url}/v1/messages", timeout=10)
    assert (r.status_code, r.text) == (405, "405 method not allowed")


def test_node_error_before_the_first_record_keeps_its_status(served):
    def script(record):
        return [(ERROR, {"status": 503, "error": "no node can run it", "started": False}, 0)]

    ac, oc = clients(served.url)
    with ScriptedDispatcher(served.ctx, script):
        with pytest.raises(anthropic.InternalServerError) as info:
            ac.messages.create(model=MODEL, max_tokens=5, messages=USER, stream=True)
        assert info.value.status_code == 503
        assert info.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(openai.InternalServerError) as err:
            oc.responses.create(model=MODEL, input="x")
        assert err.value.status_code == 503


def test_errors_after_the_stream_started(served):
    def script(record):
        return [("chunk", {"model": MODEL, "message": {"role": "assistant", "content": "par"},
                           "done": False}, 0),
                (ERROR, {"status": 500, "error": "node lost", "started": True}, 0)]

    ac, oc = clients(served.url)
    with ScriptedDispatcher(served.ctx, script):
        stream = ac.messages.create(model=MODEL, max_tokens=5, messages=USER, stream=True)
        with pytest.raises(anthropic.APIStatusError, match="node lost"):
            list(stream)
        events = list(oc.responses.create(model=MODEL, input="x", stream=True))
        assert events[-1].type == "response.failed"
        assert events[-1].response.error.message == "node lost"
        assert events[-1].response.status == "failed"
    assert len(served.ctx.hub) == 0


def test_queue_full_is_overloaded(agent):
    ctx = build_ctx([agent.address], queue_kw={"max_depth": 1})
    with serve(ctx) as s:
        r = requests.post(f"{s.url}/olol/v1/jobs", json={"endpoint": "chat", "body": {
            "model": MODEL, "messages": USER}}, timeout=5)
        assert r.status_code == 202
        r = requests.post(f"{s.url}/v1/messages", json={
            "model": MODEL, "max_tokens": 5, "messages": USER}, timeout=5)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json() == {"type": "error", "error": {
            "type": "overloaded_error",
            "message": "server busy, please try again.  maximum pending requests exceeded"}}
        ac, oc = clients(s.url)
        with pytest.raises(anthropic.InternalServerError) as info:
            ac.messages.create(model=MODEL, max_tokens=5, messages=USER)
        assert info.value.body["error"]["type"] == "overloaded_error"
        r = requests.post(f"{s.url}/v1/responses", json={"model": MODEL, "input": "x"},
                          timeout=5)
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert r.json()["error"]["type"] == "api_error"
        assert "server busy" in r.json()["error"]["message"]
        assert len(ctx.hub) == 0


def test_thinking_is_relaxed_for_a_model_without_it(served):
    def script(record):
        if record["body"].get("think"):
            return [(ERROR, {"status": 400, "error": f'"{MODEL}" does not support thinking',
                             "started": False}, 0)]
        return chat_script()(record)

    ac, oc = clients(served.url)
    with ScriptedDispatcher(served.ctx, script) as disp:
        message = ac.messages.create(model=MODEL, max_tokens=5, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
        assert message.content[0].text == "Hi there"
        with ac.messages.stream(model=MODEL, max_tokens=5, messages=USER,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
            assert "".join(stream.text_stream) == "Hi there"
        # the Responses API keeps Ollama's 400 (Ollama relaxes only for Anthropic)
        with pytest.raises(openai.BadRequestError, match="does not support thinking"):
            oc.responses.create(model=MODEL, input="x", reasoning={"effort": "high"})
    assert [bool(r["body"].get("think")) for r in disp.claimed] == [True, False, True, False,
                                                                     True]

"""The simulator's ``/v1/messages``, ``/v1/responses``, ``/v1/images/generations``,
``GET /api/status`` and ``x-sim/echo`` routes, with the official clients."""

from __future__ import annotations

import base64

import anthropic
import httpx
import ollama
import openai
import pytest

MODEL = "llama3.2:1b"
GREEDY = {"temperature": 0}


def ac(sim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="unused", max_retries=0, timeout=30)


def oc(sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0, timeout=30)


def native(sim, messages, **options):
    return ollama.Client(host=sim.url).chat(model=MODEL, messages=messages,
                                            options={**GREEDY, **options})


def test_messages_whole_and_streamed_match_a_native_chat(sim):
    want = native(sim, [{"role": "user", "content": "Explain queues."}], num_predict=30)
    msg = ac(sim).messages.create(model=MODEL, max_tokens=30, extra_body=GREEDY,
                                  messages=[{"role": "user", "content": "Explain queues."}])
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.model == MODEL
    assert msg.content[0].text == want.message.content
    assert msg.usage.output_tokens == want.eval_count
    with ac(sim).messages.stream(model=MODEL, max_tokens=30, extra_body=GREEDY,
                                 messages=[{"role": "user", "content": "Explain queues."}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 2 and "".join(pieces) == want.message.content
    assert final.stop_reason == msg.stop_reason


def test_messages_thinking_tools_and_relaxed_thinking(sim):
    tool = {"name": "get_weather", "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}
    msg = ac(sim).messages.create(model="qwen3:0.6b", max_tokens=200, tools=[tool],
                                  thinking={"type": "enabled", "budget_tokens": 1024},
                                  messages=[{"role": "user", "content": "get weather in Paris?"}])
    kinds = [b.type for b in msg.content]
    assert "thinking" in kinds and kinds[-1] == "tool_use" and msg.stop_reason == "tool_use"
    # a model that cannot think answers without thinking (Ollama relaxes it there)
    plain = ac(sim).messages.create(model="gemma3:1b", max_tokens=20,
                                    thinking={"type": "enabled", "budget_tokens": 1024},
                                    messages=[{"role": "user", "content": "hi"}])
    assert [b.type for b in plain.content] == ["text"]


def test_messages_errors_have_anthropics_shape(sim):
    with pytest.raises(anthropic.NotFoundError) as err:
        ac(sim).messages.create(model="missing", max_tokens=5,
                                messages=[{"role": "user", "content": "x"}])
    assert err.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'missing' not found"}}
    with pytest.raises(anthropic.BadRequestError) as err:
        ac(sim).messages.create(model=MODEL, max_tokens=0,
                                messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    raw = httpx.post(sim.url + "/v1/messages", content=b"{", timeout=10)
    assert raw.status_code == 400 and raw.json()["type"] == "error"


def test_responses_whole_and_streamed(sim):
    want = native(sim, [{"role": "user", "content": "Say hi"}])
    resp = oc(sim).responses.create(model=MODEL, input="Say hi", temperature=0)
    assert resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == want.message.content
    events = list(oc(sim).responses.create(model=MODEL, input="Say hi", temperature=0,
                                           stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == want.message.content == events[-1].response.output_text
    with pytest.raises(openai.NotFoundError):
        oc(sim).responses.create(model="missing", input="x")
    with pytest.raises(openai.BadRequestError):
        oc(sim).responses.create(model=MODEL, input="x", previous_response_id="resp_1")


def test_image_generation_is_a_deterministic_png(sim):
    one = oc(sim).images.generate(model=MODEL, prompt="a cat", extra_body={"seed": 3})
    two = oc(sim).images.generate(model=MODEL, prompt="a cat", extra_body={"seed": 3})
    other = oc(sim).images.generate(model=MODEL, prompt="a dog", extra_body={"seed": 3})
    png = base64.b64decode(one.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    assert one.data[0].b64_json == two.data[0].b64_json != other.data[0].b64_json
    for body, status in (({"model": MODEL}, 400), ({"prompt": "x"}, 400),
                         ({"model": "missing", "prompt": "x"}, 404),
                         ({"model": "nomic-embed-text", "prompt": "x"}, 400)):
        r = httpx.post(sim.url + "/v1/images/generations", json=body, timeout=10)
        assert r.status_code == status and r.json()["error"]["message"]


def test_status_and_echo_stand_ins(sim):
    assert httpx.get(sim.url + "/api/status").json() == {"cloud": {"disabled": False,
                                                                   "source": "none"}}
    body = {"model": MODEL, "prompt": "p", "options": GREEDY}
    echo = httpx.post(sim.url + "/api/x-sim/echo", json={**body, "stream": False}).json()
    assert echo["response"] == ollama.Client(host=sim.url).generate(
        model=MODEL, prompt="p", options=GREEDY).response
    with httpx.stream("POST", sim.url + "/v1/x-sim/echo",
                      json={"model": MODEL, "prompt": "p", "stream": True}) as r:
        assert r.headers["content-type"] == "text/event-stream"
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"

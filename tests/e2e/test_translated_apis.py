"""``/v1/messages`` (Anthropic) and ``/v1/responses`` (OpenAI Responses) through a live
proxy in front of simulated Ollama nodes, with the official ``anthropic`` and ``openai``
clients: text, streaming, system prompts, multi-turn tools, images, stop sequences and
max_tokens, thinking, errors, backpressure, priority and coalescing."""

from __future__ import annotations

import base64
import json
import threading

import anthropic
import ollama
import openai
import pytest

from tests.support import record_sim_calls, wait_until

MODEL = "llama3.2:1b"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image").decode()
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}
SLOW = "llama3.2:1b[tps=200],nomic-embed-text[embed]"
#: The anthropic SDK (2.x) has no sampling parameters; Claude Code and older clients
#: send them, so they go in the body as they would.
GREEDY = {"temperature": 0}


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30)


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def direct_chat(cluster, messages, **options):
    """The same conversation asked of a node directly (greedy: deterministic)."""
    return ollama.Client(host=cluster.sims[0].url).chat(
        model=MODEL, messages=messages, options={"temperature": 0, **options})


def test_anthropic_text_system_and_stream_match_the_node(cluster):
    ac = anthropic_client(cluster.url)
    want = direct_chat(cluster, [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "Explain queues."}],
                       num_predict=40)
    message = ac.messages.create(model=MODEL, max_tokens=40, extra_body=GREEDY,
                                 system="You are terse.",
                                 messages=[{"role": "user", "content": "Explain queues."}])
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == want.message.content
    assert message.usage.output_tokens == want.eval_count
    assert message.usage.input_tokens == want.prompt_eval_count
    assert message.stop_reason == ("max_tokens" if want.done_reason == "length" else "end_turn")
    with ac.messages.stream(model=MODEL, max_tokens=40, extra_body=GREEDY,
                            system=[{"type": "text", "text": "You are terse."}],
                            messages=[{"role": "user", "content": "Explain queues."}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 2 and "".join(pieces) == want.message.content
    assert final.content[0].text == want.message.content
    assert final.usage.output_tokens == want.eval_count


def test_anthropic_max_tokens_and_stop_sequences(cluster):
    ac = anthropic_client(cluster.url)
    calls = record_sim_calls(cluster.sims[0], "chat")
    calls_b = record_sim_calls(cluster.sims[1], "chat")
    short = ac.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY,
                               messages=[{"role": "user", "content": "Tell me a story."}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    full = direct_chat(cluster, [{"role": "user", "content": "Tell me a story."}]).message.content
    word = full.split()[3]
    stopped = ac.messages.create(model=MODEL, max_tokens=200, stop_sequences=[word],
                                 extra_body={"temperature": 0, "top_p": 0.5, "top_k": 3},
                                 messages=[{"role": "user", "content": "Tell me a story."}])
    assert word not in stopped.content[0].text and full.startswith(stopped.content[0].text)
    sent = [c for c in calls + calls_b if c and c["options"].get("stop")][0]
    assert sent["options"] == {"num_predict": 200, "temperature": 0, "top_p": 0.5, "top_k": 3,
                               "stop": [word]}


def test_anthropic_tools_round_trip_and_images(cluster):
    ac = anthropic_client(cluster.url)
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "input_schema": WEATHER}]
    ask = {"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG_B64}},
        {"type": "text", "text": "Use get_weather for the city in this picture."},
    ]}
    calls = record_sim_calls(cluster.sims[0], "chat"), record_sim_calls(cluster.sims[1], "chat")
    first = ac.messages.create(model=MODEL, max_tokens=50, tools=tools, messages=[ask])
    assert first.stop_reason == "tool_use"
    use = [b for b in first.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str) and use.id
    sent = [c for c in calls[0] + calls[1] if c][-1]
    assert sent["messages"][0]["images"] == [PNG_B64]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER
    # the tool's result goes back; the model answers in text
    second = ac.messages.create(model=MODEL, max_tokens=50, tools=tools, messages=[
        ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "21 degrees and sunny"}]},
    ])
    assert second.stop_reason == "end_turn" and second.content[0].text
    sent = [c for c in calls[0] + calls[1] if c][-1]
    assert sent["messages"][-1] == {"role": "tool", "content": "21 degrees and sunny",
                                    "tool_call_id": use.id, "tool_name": "get_weather"}
    # streamed, the tool call arrives as a tool_use block with its JSON input
    with ac.messages.stream(model=MODEL, max_tokens=50, tools=tools, messages=[ask]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"]
    assert isinstance(final.content[0].input["city"], str)


def test_anthropic_thinking(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b,qwen2.5:0.5b[nothink]")
    ac = anthropic_client(c.url)
    thought = ac.messages.create(model=MODEL, max_tokens=30,
                                 thinking={"type": "enabled", "budget_tokens": 1024},
                                 messages=[{"role": "user", "content": "Think first."}])
    assert [b.type for b in thought.content] == ["thinking", "text"]
    assert thought.content[0].thinking
    with ac.messages.stream(model=MODEL, max_tokens=30,
                            thinking={"type": "enabled", "budget_tokens": 1024},
                            messages=[{"role": "user", "content": "Think first."}]) as stream:
        kinds = [e.content_block.type for e in stream if e.type == "content_block_start"]
    assert kinds == ["thinking", "text"]
    # a model without thinking: Ollama relaxes thinking for Anthropic clients
    relaxed = ac.messages.create(model="qwen2.5:0.5b", max_tokens=30,
                                 thinking={"type": "enabled", "budget_tokens": 1024},
                                 messages=[{"role": "user", "content": "Think first."}])
    assert [b.type for b in relaxed.content] == ["text"]


def test_responses_text_instructions_and_stream_match_the_node(cluster):
    oc = openai_client(cluster.url)
    want = direct_chat(cluster, [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is a proxy?"}],
                       num_predict=30)
    response = oc.responses.create(model=MODEL, instructions="Be brief.",
                                   input="What is a proxy?", temperature=0,
                                   max_output_tokens=30)
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == want.message.content
    assert response.usage.output_tokens == want.eval_count
    assert response.instructions == "Be brief." and response.max_output_tokens == 30
    with oc.responses.stream(model=MODEL, instructions="Be brief.", input="What is a proxy?",
                             temperature=0, max_output_tokens=30) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 2 and "".join(deltas) == want.message.content
    assert final.output_text == want.message.content
    # multi-turn as input items
    convo = oc.responses.create(model=MODEL, temperature=0, input=[
        {"role": "user", "content": "What is a proxy?"},
        {"role": "assistant", "content": response.output_text},
        {"role": "user", "content": [{"type": "input_text", "text": "And a queue?"},
                                     {"type": "input_image", "detail": "auto",
                                      "image_url": f"data:image/png;base64,{PNG_B64}"}]},
    ])
    assert convo.output_text


def test_responses_function_calls_round_trip(cluster):
    oc = openai_client(cluster.url)
    tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
              "parameters": WEATHER}]
    ask = {"role": "user", "content": "Call get_weather for Paris."}
    first = oc.responses.create(model=MODEL, tools=tools, input=[ask])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    second = oc.responses.create(model=MODEL, tools=tools, input=[
        ask,
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
         "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    ])
    assert second.output_text and second.output[0].type == "message"
    with oc.responses.stream(model=MODEL, tools=tools, input=[ask]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]


def test_errors_in_each_apis_shape(cluster):
    ac, oc = anthropic_client(cluster.url), openai_client(cluster.url)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.NotFoundError) as info:
        ac.messages.create(model="missing:7b", max_tokens=5, messages=msgs)
    assert info.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'missing:7b' not found"}}
    with pytest.raises(anthropic.NotFoundError):
        ac.messages.create(model="missing:7b", max_tokens=5, messages=msgs, stream=True)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens is required"):
        ac.messages.create(model=MODEL, max_tokens=0, messages=msgs)
    with pytest.raises(anthropic.BadRequestError, match="messages is required"):
        ac.messages.create(model=MODEL, max_tokens=5, messages=[])
    with pytest.raises(openai.NotFoundError, match="model 'missing:7b' not found"):
        oc.responses.create(model="missing:7b", input="x")
    with pytest.raises(openai.NotFoundError):
        oc.responses.create(model="missing:7b", input="x", stream=True)
    with pytest.raises(openai.BadRequestError, match="stateless"):
        oc.responses.create(model=MODEL, input="x", previous_response_id="resp_1")
    with pytest.raises(openai.BadRequestError, match="unknown input item type"):
        oc.responses.create(model=MODEL, input=[{"type": "bogus"}])
    # an embedding model cannot chat: the node's 400 comes back in each API's shape
    with pytest.raises(anthropic.BadRequestError, match="does not support"):
        ac.messages.create(model="nomic-embed-text", max_tokens=5, messages=msgs)
    with pytest.raises(openai.BadRequestError, match="does not support"):
        oc.responses.create(model="nomic-embed-text", input="x")


def test_full_queue_is_overloaded_and_priority_orders_the_queue(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1, max_queue_depth=5)
    sim = c.sims[0]
    ac, oc = anthropic_client(c.url), openai_client(c.url)
    order = record_sim_calls(sim, "chat")
    sim.faults.hang_next(1)
    results: dict[str, object] = {}

    def ask(label: str, priority: int) -> None:
        try:
            if label.startswith("r"):
                out = oc.responses.create(model=MODEL, input=label, max_output_tokens=3,
                                          extra_headers={"X-OLOL-Priority": str(priority)})
                results[label] = out.output_text
            else:
                msg = ac.messages.create(model=MODEL, max_tokens=3,
                                         messages=[{"role": "user", "content": label}],
                                         extra_headers={"X-OLOL-Priority": str(priority)})
                results[label] = msg.content[0].text
        except Exception as exc:  # noqa: BLE001 - checked below
            results[label] = exc

    threads = [threading.Thread(target=ask, args=("blocker", 0), name="blocker")]
    threads[0].start()
    assert wait_until(lambda: sim.faults.hanging() == 1)
    for label, priority in (("m-low", 0), ("r-low", 0), ("m-high", 5), ("r-high", 5)):
        t = threading.Thread(target=ask, args=(label, priority), name=f"ask-{label}")
        t.start()
        threads.append(t)
        waiting = len(threads) - 1  # in arrival order: FIFO would serve them so
        assert wait_until(lambda n=waiting: len(c.proxy.queue.peek_summaries()) >= n)
    # the queue is full (the running blocker counts): each API answers 503 in its own shape
    with pytest.raises(anthropic.InternalServerError) as info:
        ac.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert info.value.response.headers["Retry-After"]
    with pytest.raises(openai.InternalServerError) as err:
        oc.responses.create(model=MODEL, input="x")
    assert err.value.status_code == 503 and "server busy" in err.value.message
    sim.faults.release()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(v, str) for v in results.values()), results
    served = [call["messages"][-1]["content"] for call in order if call]
    assert served[0] == "blocker"
    assert sorted(served[1:3]) == ["m-high", "r-high"]
    assert sorted(served[3:5]) == ["m-low", "r-low"]


def test_identical_greedy_messages_share_one_inference(make_cluster):
    c = make_cluster(nodes=1, models=SLOW, parallel=1)
    sim = c.sims[0]
    sim.faults.hang_next(1)
    blocker = threading.Thread(target=lambda: anthropic_client(c.url).messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "block"}]),
        name="blocker")
    blocker.start()
    assert wait_until(lambda: sim.faults.hanging() == 1)
    before = sim.stats()["generations_started"]
    answers: list[str] = []

    def ask() -> None:
        msg = anthropic_client(c.url).messages.create(
            model=MODEL, max_tokens=20, extra_body=GREEDY,
            messages=[{"role": "user", "content": "same question"}])
        answers.append(msg.content[0].text)

    threads = [threading.Thread(target=ask, name=f"ask-{i}") for i in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(c.proxy.queue.peek_summaries(model=MODEL)) >= 4)
    sim.faults.release()
    for t in threads + [blocker]:
        t.join(timeout=30)
    assert len(answers) == 4 and len(set(answers)) == 1
    assert sim.stats()["generations_started"] - before == 2


def test_keys_anthropic_clients_send_the_key_as_a_bearer_token(make_cluster):
    from olol.keys import KeyStore

    c = make_cluster(nodes=1, keys_enabled=True)
    keys = c.proxy.context.keys or KeyStore(c.proxy.db, c.proxy.clock)
    _, key = keys.create("user", admin=False)
    msgs = [{"role": "user", "content": "hi"}]
    # auth_token (ANTHROPIC_AUTH_TOKEN for Claude Code) sends Authorization: Bearer
    keyed = anthropic.Anthropic(base_url=c.url, auth_token=key, max_retries=0, timeout=30)
    assert keyed.messages.create(model=MODEL, max_tokens=5, messages=msgs).content
    assert openai.OpenAI(base_url=f"{c.url}/v1", api_key=key, max_retries=0).responses.create(
        model=MODEL, input="hi", max_output_tokens=5).output_text
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(c.url).messages.create(model=MODEL, max_tokens=5, messages=msgs)
    with pytest.raises(openai.AuthenticationError):
        openai_client(c.url).responses.create(model=MODEL, input="hi")


def test_the_anthropic_clients_own_key_header_is_accepted(make_cluster):
    """The anthropic SDK sends ``x-api-key`` by default: accepted like a bearer token,
    and a missing or bad key is refused in Anthropic's error shape, on the headers."""
    import requests

    from olol.keys import KeyStore

    c = make_cluster(nodes=1, keys_enabled=True)
    keys = c.proxy.context.keys or KeyStore(c.proxy.db, c.proxy.clock)
    _, key = keys.create("claude", admin=False)
    msgs = [{"role": "user", "content": "hi"}]
    keyed = anthropic.Anthropic(base_url=c.url, api_key=key, max_retries=0, timeout=30)
    assert keyed.messages.create(model=MODEL, max_tokens=5, messages=msgs).content
    r = requests.post(c.url + "/v1/messages", headers={"x-api-key": "olol-wrong"}, timeout=10,
                      json={"model": MODEL, "max_tokens": 5, "messages": msgs})
    assert r.status_code == 401
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    # the queue names the API, so metrics and logs name the route
    done = [rec for rec in c.proxy.queue.list_jobs(kind="sync", limit=5)
            if rec["status"] == "completed"]
    assert done and done[0]["api"] == "anthropic"

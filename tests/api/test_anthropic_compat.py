"""The Anthropic Messages layer: requests → native chat bodies, native answers → messages
and stream events, checked against Ollama's mapping (anthropic/anthropic.go) and parsed
with the official ``anthropic`` SDK's own types."""

import base64

import anthropic
import orjson
import pydantic
import pytest

from olol.api.anthropic import estimate_input_tokens, messages_to_ollama, wants_stream
from olol.api.anthropic_answers import (
    MessagesStreamTranslator,
    ollama_chat_to_message,
    stop_reason,
    stream_error_event,
)
from olol.api.errors import ApiError, anthropic_error_body

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def body(**extra):
    return {
        "model": "llama3.2",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def test_full_request_translation():
    out = messages_to_ollama(
        body(
            system=[{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
            messages=[
                {"role": "user", "content": [
                    {"type": "text", "text": "what is "},
                    {"type": "text", "text": "this?"},
                    {"type": "image",
                     "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "let me look"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "20C"}]},
                    {"type": "text", "text": "and tomorrow?"},
                ]},
            ],
            temperature=0.2,
            top_p=0.5,
            top_k=7,
            stop_sequences=["END"],
            stream=True,
            tools=[{"name": "get_weather", "description": "weather",
                    "input_schema": {"type": "object",
                                     "properties": {"city": {"type": "string"}}}}],
            thinking={"type": "enabled", "budget_tokens": 1024},
            metadata={"user_id": "u"},
        )
    )
    assert out["model"] == "llama3.2" and out["stream"] is True
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": [PNG_B64]},
        {"role": "assistant", "content": "let me look", "thinking": "hmm",
         "tool_calls": [{"id": "toolu_1",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        # tool results come before the user's own words (Ollama's convertMessage)
        {"role": "tool", "content": "20C", "tool_call_id": "toolu_1", "tool_name": "get_weather"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    assert out["options"] == {
        "num_predict": 64, "temperature": 0.2, "top_p": 0.5, "top_k": 7, "stop": ["END"],
    }
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    assert out["think"] is True


def test_request_defaults():
    out = messages_to_ollama(body(system="sys"))
    assert out == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "options": {"num_predict": 64},
        "stream": False,
    }
    assert wants_stream(body()) is False and wants_stream(body(stream=True)) is True


@pytest.mark.parametrize(
    "extra, think",
    [
        ({"thinking": {"type": "disabled"}}, False),
        ({"output_config": {"effort": "medium"}}, "medium"),
        ({"output_config": {"effort": " XHigh "}}, "high"),
        ({"output_config": {"effort": "bogus"}}, None),
        ({"thinking": {"type": "enabled"}, "output_config": {"effort": "low"}}, True),
    ],
)
def test_thinking_mapping(extra, think):
    assert messages_to_ollama(body(**extra)).get("think") == think


def test_tool_choice_none_drops_tools():
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert "tools" not in messages_to_ollama(body(tools=tools, tool_choice={"type": "none"}))
    assert "tools" in messages_to_ollama(body(tools=tools, tool_choice={"type": "auto"}))


def test_tool_result_in_assistant_turn_follows_it_and_string_content():
    out = messages_to_ollama(body(messages=[
        {"role": "user", "content": "x"},
        {"role": "Assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t9", "content": "done"},
            {"type": "text", "text": "ok"},
            {"type": "mystery", "text": "ignored"},
            None,
        ]},
    ]))
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "ok"},
        {"role": "tool", "content": "done", "tool_call_id": "t9"},
    ]


@pytest.mark.parametrize(
    "request_body, message",
    [
        (body(model=""), "model is required"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model is required"),
        (body(max_tokens=0), "max_tokens is required and must be positive"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]},
         "max_tokens is required and must be positive"),
        (body(messages=[]), "messages is required"),
        (body(max_tokens="5"),
         "json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"),
        (body(messages=[{"role": "user", "content": 5}]),
         "json: cannot unmarshal number into Go value of type []anthropic.ContentBlock"),
        (body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
         "json: cannot unmarshal number into Go struct field ContentBlock.text of type string"),
        (body(stop_sequences="END"),
         "json: cannot unmarshal string into Go struct field MessagesRequest.stop_sequences "
         "of type []string"),
        (body(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]),
         "invalid image source type: url. Only base64 images are supported."),
        (body(messages=[{"role": "user", "content": [{"type": "image"}]}]),
         "invalid image source"),
        (body(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "data": "@@@"}}]}]),
         "invalid base64 image data: illegal base64 data"),
        (body(messages=[{"role": "assistant", "content": [
            {"type": "tool_use", "name": "f", "input": {}}]}]),
         "tool_use block missing required 'id' field"),
        (body(messages=[{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "input": {}}]}]),
         "tool_use block missing required 'name' field"),
        (body(tools=[{"name": "f", "input_schema": "nope"}]),
         'invalid input_schema for tool "f": json: cannot unmarshal string into Go value of '
         "type api.ToolFunctionParameters"),
        (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
         "server tool 'web_search_20250305' is not supported: this server runs no web search"),
        ([1], "json: cannot unmarshal array into Go value of type anthropic.MessagesRequest"),
    ],
)
def test_request_errors_are_400(request_body, message):
    with pytest.raises(ApiError) as info:
        messages_to_ollama(request_body)
    assert (info.value.status, info.value.message) == (400, message)
    assert info.value.anthropic_body() == {
        "type": "error", "error": {"type": "invalid_request_error", "message": message},
    }


@pytest.mark.parametrize(
    "status, kind",
    [(400, "invalid_request_error"), (401, "authentication_error"),
     (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
     (429, "rate_limit_error"), (503, "overloaded_error"), (529, "overloaded_error"),
     (500, "api_error"), (504, "api_error"), (499, "api_error")],
)
def test_error_types(status, kind):
    assert anthropic_error_body(status, "m") == {
        "type": "error", "error": {"type": kind, "message": "m"},
    }


def test_estimate_is_rough_but_positive():
    assert estimate_input_tokens(body()) >= 1
    long = body(system="x" * 400, messages=[{"role": "user", "content": [
        {"type": "text", "text": "y" * 400},
        {"type": "image", "source": {"type": "base64", "data": "A" * 4000}}]}])
    assert 200 <= estimate_input_tokens(long) <= 210  # the image counts nothing


FINAL = {"model": "m", "created_at": "2024-01-01T00:00:00Z", "done": True,
         "done_reason": "stop", "prompt_eval_count": 9, "eval_count": 4}


def test_whole_answer_parses_with_the_sdk():
    record = {**FINAL, "message": {"role": "assistant", "content": "Hello", "thinking": "hm"}}
    out = ollama_chat_to_message(record, "my-model", "msg_1")
    message = anthropic.types.Message.model_validate(out)
    assert message.model == "my-model" and message.id == "msg_1"
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Hello"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)


def test_whole_answer_with_tool_calls_and_empty():
    record = {**FINAL, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a", "function": {"name": "f", "arguments": {"x": 1}}},
        {"function": {"name": "g", "arguments": {}}},
    ]}}
    out = ollama_chat_to_message(record, "m", "msg_2")
    assert out["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "toolu_01", "name": "g", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"
    empty = ollama_chat_to_message({**FINAL, "message": {"role": "assistant", "content": ""}},
                                   "m", "msg_3")
    assert empty["content"] == []


@pytest.mark.parametrize(
    "reason, calls, expected",
    [("stop", False, "end_turn"), ("length", False, "max_tokens"), ("stop", True, "tool_use"),
     ("other", False, "stop_sequence"), ("", False, None), (None, False, None)],
)
def test_stop_reasons(reason, calls, expected):
    assert stop_reason(reason, calls) == expected


def chunk(content="", thinking="", tool_calls=None):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": "m", "created_at": "2024-01-01T00:00:00Z", "message": message,
            "done": False}


def parse_sse(data: bytes):
    events = []
    for frame in data.decode().split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        name = name_line.removeprefix("event: ")
        payload = orjson.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name
        events.append(payload)
    return events


def run_stream(records, estimate=7):
    translator = MessagesStreamTranslator("m", "msg_9", estimate)
    events = []
    for record in records:
        events += parse_sse(translator.feed_sse(record))
    for event in events:
        if event["type"] != "ping":  # the SDK skips pings before parsing
            EVENT.validate_python(event)  # every other event is one the SDK knows
    return events


def test_stream_thinking_text_and_tool_call():
    events = run_stream([
        chunk(thinking="let me "),
        chunk(thinking="think"),
        chunk(content="Hi"),
        chunk(content=" there"),
        chunk(tool_calls=[{"id": "call_1", "function": {"name": "f", "arguments": {"a": 1}}}]),
        {**FINAL, "message": {"role": "assistant", "content": ""}},
    ])
    summary = [(e["type"], e.get("index"), (e.get("delta") or {}).get("type")) for e in events]
    assert summary == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert events[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert events[0]["message"]["content"] == [] and events[0]["message"]["id"] == "msg_9"
    assert events[10]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f",
                                           "input": {}}
    assert orjson.loads(events[11]["delta"]["partial_json"]) == {"a": 1}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"] == {"input_tokens": 9, "output_tokens": 4}


def test_stream_text_only_and_content_on_the_final_record():
    events = run_stream([chunk(content="a"), {**FINAL, "done_reason": "length",
                                              "message": {"role": "assistant", "content": "b"}}])
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert texts == ["a", "b"]
    assert [e["type"] for e in events][-4:] == [
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


def test_stream_duplicate_tool_call_ids_are_sent_once():
    call = {"id": "call_1", "function": {"name": "f", "arguments": {}}}
    events = run_stream([chunk(tool_calls=[call]), chunk(tool_calls=[call]), FINAL])
    assert sum(e["type"] == "content_block_start" for e in events) == 1


def test_stream_error_event():
    frame = stream_error_event("node lost", 503)
    assert frame.startswith(b"event: error\ndata: ")
    assert parse_sse(frame) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "node lost"}}
    ]

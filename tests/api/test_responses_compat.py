"""The OpenAI Responses layer: requests → native chat bodies, native answers → response
objects and typed stream events, checked against Ollama's mapping (openai/responses.go)
and parsed with the official ``openai`` SDK's own types."""

import base64

import openai
import orjson
import pydantic
import pytest

from olol.api.errors import ApiError
from olol.api.responses_answers import ResponsesStreamTranslator, ollama_chat_to_response
from olol.api.responses_api import responses_to_ollama, wants_stream

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
EVENT = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)


def test_string_input_and_defaults():
    out = responses_to_ollama({"model": "m", "input": "hi", "instructions": "be brief"})
    assert out == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hi"}],
        "options": {"temperature": 1.0},
        "stream": False,
    }
    assert wants_stream({"stream": True}) is True and wants_stream({}) is False


def test_full_item_translation():
    out = responses_to_ollama({
        "model": "m",
        "stream": True,
        "temperature": 0.3,
        "top_p": 0.9,
        "max_output_tokens": 50,
        "reasoning": {"effort": "minimal"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "tools": [
            {"type": "function", "name": "get_weather", "description": "w",
             "parameters": {"type": "object"}, "strict": None},
            {"type": "namespace", "name": "fs", "tools": [
                {"type": "function", "name": "read", "parameters": None}]},
        ],
        "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look: "},
                {"type": "input_image", "detail": "auto",
                 "image_url": f"data:image/png;base64,{PNG_B64}"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "hmm"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "checking"}]},
            {"type": "function_call_output", "call_id": "call_1", "output": "20C"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"role": "user", "content": "thanks"},
        ],
    })
    assert out["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "look: ", "images": [PNG_B64]},
        # the assistant message replayed between the call and its output joins the call
        {"role": "assistant", "content": "checking", "thinking": "hmm",
         "tool_calls": [{"id": "call_1", "function": {"name": "get_weather",
                                                      "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "20C", "tool_call_id": "call_1", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"},
    ]
    assert out["options"] == {"temperature": 0.3, "top_p": 0.9, "num_predict": 50}
    assert out["think"] == "low" and out["stream"] is True
    assert out["format"] == {"type": "object"}
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather", "fs.read"]
    assert out["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "w", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "extra, key, value",
    [
        ({"reasoning": {"effort": "none"}}, "think", False),
        ({"reasoning": {"effort": "xhigh"}}, "think", "max"),
        ({"text": {"format": {"type": "json_object"}}}, "format", "json"),
        ({"text": {"format": {"type": "text"}}}, "format", None),
        ({"tools": [{"type": "function", "name": "f"}], "tool_choice": "none"}, "tools", None),
    ],
)
def test_mappings(extra, key, value):
    assert responses_to_ollama({"model": "m", "input": "x", **extra}).get(key) == value


def test_function_output_as_parts_and_trailing_reasoning():
    out = responses_to_ollama({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "function_call_output", "call_id": "c",
         "output": [{"type": "input_text", "text": "a"}, {"type": "output_text", "text": "b"}]},
        {"type": "reasoning", "encrypted_content": "later"},
    ]})
    assert out["messages"][1:] == [
        {"role": "tool", "content": "ab", "tool_call_id": "c"},
        {"role": "assistant", "content": "", "thinking": "later"},
    ]


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"input": "x"}, "model is required"),
        ({"model": "m"}, "input is required"),
        ({"model": "m", "input": ""}, "input is required"),
        ({"model": "m", "instructions": "only this"}, "input is required"),
        ({"model": "m", "input": "x", "previous_response_id": "resp_1"},
         "previous_response_id and conversation are not supported: this server is "
         "stateless; send the whole conversation in input"),
        ({"model": "m", "input": 5},
         "input must be a string or array: json: cannot unmarshal number into Go value of "
         "type []json.RawMessage"),
        ({"model": "m", "input": [{"content": "x"}]},
         "input[0]: input item missing required 'type' field"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]},
         'input[0]: unknown input item type: "item_reference"'),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "refusal"}]}]},
         "input[0]: content[0]: unknown content type: refusal"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "f"}]}]},
         "file inputs are not currently supported"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/y.png"}]}]},
         "image URLs are not currently supported, please use base64 encoded data instead"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/gif;base64,AAAA"}]}]},
         "invalid image input"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                   "arguments": "{bad"}]},
         "failed to parse function call arguments: invalid character 'b' looking for "
         "beginning of object key string"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                   "arguments": "[1]"}]},
         "failed to parse function call arguments: json: cannot unmarshal array into Go "
         "value of type api.ToolCallFunctionArguments"),
        ({"model": "m", "input": "x", "reasoning": {"effort": "huge"}},
         'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", '
         '"xhigh", "ultra", "max", or "none")'),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]},
         'unsupported tool type "web_search": this server runs function tools only'),
        ({"model": "m", "input": "x", "max_output_tokens": "5"},
         "json: cannot unmarshal string into Go struct field ResponsesRequest.max_output_tokens "
         "of type int"),
        ({"model": "m", "input": [7]},
         "input[0]: json: cannot unmarshal number into Go value of type "
         "openai.ResponsesInputItem"),
    ],
)
def test_request_errors_are_400(request_body, message):
    with pytest.raises(ApiError) as info:
        responses_to_ollama(request_body)
    assert (info.value.status, info.value.message) == (400, message)
    assert info.value.openai_body()["error"]["type"] == "invalid_request_error"


FINAL = {"model": "m", "created_at": "2024-01-01T00:00:00Z", "done": True,
         "done_reason": "stop", "prompt_eval_count": 9, "eval_count": 4}
REQUEST = {"model": "my-model", "input": "x", "instructions": "be brief", "temperature": 0.5,
           "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}


def test_whole_answer_parses_with_the_sdk():
    record = {**FINAL, "message": {"role": "assistant", "content": "Hello", "thinking": "hm"}}
    out = ollama_chat_to_response(record, "my-model", "resp_1", REQUEST, created_at=100,
                                  completed_at=101)
    response = openai.types.responses.Response.model_validate(out)
    assert response.output_text == "Hello"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.status == "completed" and response.model == "my-model"
    assert response.instructions == "be brief" and response.temperature == 0.5
    assert response.usage.total_tokens == 13
    assert (out["created_at"], out["completed_at"]) == (100, 101)
    assert out["top_p"] == 1.0 and out["store"] is False and out["tools"][0]["name"] == "f"


def test_whole_answer_with_tool_calls_has_no_message_item():
    record = {**FINAL, "message": {"role": "assistant", "content": "ignored", "tool_calls": [
        {"id": "call_a", "function": {"name": "f", "arguments": {"x": 1}}}]}}
    out = ollama_chat_to_response(record, "m", "resp_2", REQUEST, created_at=1, completed_at=2)
    response = openai.types.responses.Response.model_validate(out)
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert (call.call_id, call.name, orjson.loads(call.arguments)) == ("call_a", "f", {"x": 1})


def chunk(content="", thinking="", tool_calls=None):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": "m", "message": message, "done": False}


def parse_sse(data: bytes):
    events = []
    for frame in data.decode().split("\n\n"):
        if frame:
            name_line, data_line = frame.split("\n")
            payload = orjson.loads(data_line.removeprefix("data: "))
            assert payload["type"] == name_line.removeprefix("event: ")
            events.append(payload)
    return events


def run_stream(records, request=REQUEST):
    translator = ResponsesStreamTranslator("my-model", "resp_7", request, 100, lambda: 105.0)
    events = []
    for record in records:
        events += parse_sse(translator.feed_sse(record))
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return translator, events


def test_stream_text():
    _, events = run_stream([chunk(content="Hel"), chunk(content="lo"), FINAL])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["completed_at"] == 105
    assert done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"]["input_tokens"] == 9
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["created_at"] == 100


def test_stream_thinking_then_tool_call():
    call = {"id": "call_1", "function": {"name": "f", "arguments": {"a": 1}}}
    _, events = run_stream([chunk(thinking="hm"), chunk(tool_calls=[call]),
                            chunk(tool_calls=[call]), chunk(content="dropped"), FINAL])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    assert output[1]["arguments"] == '{"a":1}' and output[1]["call_id"] == "call_1"
    assert [e["output_index"] for e in events[2:10]] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_stream_text_then_tool_call_closes_the_message():
    call = {"id": "call_1", "function": {"name": "f", "arguments": {}}}
    _, events = run_stream([chunk(content="let me check"), chunk(tool_calls=[call]), FINAL])
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call"]
    assert "response.output_text.done" in [e["type"] for e in events]


def test_stream_failed_after_start():
    translator, events = run_stream([chunk(content="par")])
    failed = parse_sse(translator.failed_sse("node lost", 502))
    assert [e["type"] for e in failed] == ["response.failed"]
    EVENT.validate_python(failed[0])
    assert failed[0]["response"]["error"] == {"code": "server_error", "message": "node lost"}
    assert failed[0]["sequence_number"] == len(events)

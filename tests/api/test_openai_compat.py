import base64
import struct

import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from olol.api.errors import ApiError
from olol.api.openai_compat import (
    SSE_DONE,
    ChatStreamTranslator,
    CompletionStreamTranslator,
    chat_completion_to_ollama,
    completion_to_ollama,
    embedding_encoding_format,
    embeddings_to_ollama,
    include_usage,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_generate_to_openai,
    ollama_model_to_openai,
    ollama_show_to_openai_model,
    ollama_tags_to_openai_models,
    openai_stream_error_event,
    parse_ollama_time,
    sse_event,
)

PNG_B64 = base64.b64encode(b"\x89PNG fake").decode()
CREATED_AT = "2024-06-04T14:38:31.837534521-07:00"


def fails(fn, body, message):
    with pytest.raises(ApiError) as info:
        fn(body)
    assert (info.value.status, info.value.message) == (400, message)
    assert info.value.openai_body()["error"]["type"] == "invalid_request_error"


# --- requests -------------------------------------------------------------------------


def test_chat_request_full_translation():
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
        ],
        "temperature": 0.2,
        "top_p": 0.5,
        "seed": 7,
        "stop": "END",
        "max_tokens": 64,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        "reasoning_effort": "minimal",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = chat_completion_to_ollama(body)
    assert out["model"] == "llama3.2" and out["stream"] is True
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?"},
        {"role": "user", "content": "", "images": [PNG_B64]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "20C", "tool_name": "get_weather"},
    ]
    assert out["options"] == {
        "temperature": 0.2,
        "top_p": 0.5,
        "seed": 7,
        "stop": ["END"],
        "num_predict": 64,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
    }
    assert out["format"] == {"type": "object"}
    assert out["tools"] == body["tools"]
    assert out["think"] == "low"
    assert include_usage(body) is True


def test_chat_request_defaults():
    out = chat_completion_to_ollama({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert out["stream"] is False
    assert out["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert "format" not in out and "tools" not in out and "think" not in out
    assert include_usage({"model": "m"}) is False


@pytest.mark.parametrize(
    "extra, key, value",
    [
        ({"response_format": {"type": "json_object"}}, "format", "json"),
        ({"response_format": {"type": " JSON_OBJECT "}}, "format", "json"),
        ({"reasoning_effort": "none"}, "think", False),
        ({"reasoning_effort": "high"}, "think", "high"),
        ({"reasoning_effort": "xhigh"}, "think", "max"),
        ({"reasoning": {"effort": "medium"}}, "think", "medium"),
        (
            {"max_completion_tokens": 12},
            "options",
            {"temperature": 1.0, "top_p": 1.0, "num_predict": 12},
        ),
        (
            {"stop": ["a", 3, "b"]},
            "options",
            {"temperature": 1.0, "top_p": 1.0, "stop": ["a", "b"]},
        ),
    ],
)
def test_chat_request_mappings(extra, key, value):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    assert chat_completion_to_ollama(body)[key] == value


def test_tool_choice_none_drops_tools():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
    }
    assert "tools" not in chat_completion_to_ollama(body)


def msgs(*messages):
    return {"model": "m", "messages": list(messages)}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "m"}, "[] is too short - 'messages'"),
        ({"model": "m", "messages": []}, "[] is too short - 'messages'"),
        (msgs({"role": "user", "content": "x"}) | {"model": ""}, "model is required"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model is required"),
        (msgs({"role": "user", "content": 5}), "invalid message content type: float64"),
        (msgs({"role": "user"}), "invalid message content type: <nil>"),
        (msgs({"role": "user", "content": [{"type": "video"}]}), "invalid message format"),
        (msgs({"role": "user", "content": ["text"]}), "invalid message format"),
        (
            msgs(
                {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}
            ),
            "invalid image input",
        ),
        (
            msgs(
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": "data:image/png;base64,@@@"}],
                }
            ),
            "invalid message format",
        ),
        (
            msgs(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}],
                }
            ),
            "invalid tool call arguments",
        ),
        (
            msgs({"role": "user", "content": "x"}) | {"reasoning_effort": "extreme"},
            'invalid reasoning value: \'extreme\' (must be "none", "minimal", "low", '
            '"medium", "high", "max", "xhigh", or "ultra")',
        ),
        (
            msgs({"role": "user", "content": "x"}) | {"stream": "yes"},
            "json: cannot unmarshal string into Go struct field ChatCompletionRequest.stream "
            "of type bool",
        ),
        (
            msgs({"role": "user", "content": "x"}) | {"temperature": "hot"},
            "json: cannot unmarshal string into Go struct field ChatCompletionRequest.temperature "
            "of type float64",
        ),
        (
            msgs({"role": "user", "content": "x"}) | {"max_tokens": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field "
            "ChatCompletionRequest.max_tokens of type int",
        ),
        ([1], "json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"),
    ],
)
def test_chat_request_errors(body, message):
    fails(chat_completion_to_ollama, body, message)


def test_completion_request():
    out = completion_to_ollama(
        {
            "model": "m",
            "prompt": "once",
            "suffix": "end",
            "max_tokens": 5,
            "stop": ["\n"],
            "logprobs": 2,
            "seed": 1,
            "stream": True,
        }
    )
    assert out == {
        "model": "m",
        "prompt": "once",
        "suffix": "end",
        "stream": True,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {
            "num_predict": 5,
            "stop": ["\n"],
            "temperature": 1.0,
            "seed": 1,
            "top_p": 1.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
        },
    }
    fails(
        completion_to_ollama,
        {"model": "m", "prompt": ["a", "b"]},
        "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string",
    )
    fails(
        completion_to_ollama,
        {"model": "m", "prompt": "x", "stop": ["a", 1]},
        "invalid type for 'stop' field: float64",
    )
    fails(completion_to_ollama, {"prompt": "x"}, "model is required")


def test_embeddings_request():
    assert embeddings_to_ollama({"model": "e", "input": "hi"}) == {"model": "e", "input": "hi"}
    assert embeddings_to_ollama({"model": "e", "input": ""})["input"] == [""]
    assert embeddings_to_ollama(
        {"model": "e", "input": ["a", "b"], "dimensions": 8, "encoding_format": "base64"}
    ) == {"model": "e", "input": ["a", "b"], "dimensions": 8}
    assert embedding_encoding_format({"encoding_format": "BASE64"}) == "base64"
    assert embedding_encoding_format({}) == "float"
    fails(embeddings_to_ollama, {"model": "e", "input": []}, "invalid input")
    fails(embeddings_to_ollama, {"model": "e"}, "invalid input")
    fails(embeddings_to_ollama, {"model": "e", "input": [1, 2, 3]}, "invalid input type")
    fails(embeddings_to_ollama, {"model": "e", "input": [[1, 2]]}, "invalid input type")
    fails(
        embeddings_to_ollama,
        {"model": "e", "input": "x", "encoding_format": "int8"},
        "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
    )
    fails(embeddings_to_ollama, {"input": "x"}, "model is required")


# --- responses ------------------------------------------------------------------------

FINAL_CHAT = {
    "model": "llama3.2",
    "created_at": CREATED_AT,
    "message": {"role": "assistant", "content": "Hello there", "thinking": "greet"},
    "done": True,
    "done_reason": "stop",
    "total_duration": 1_000,
    "load_duration": 10,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 100,
    "eval_count": 12,
    "eval_duration": 500,
}
TOOL_CHAT = {
    "model": "llama3.2",
    "created_at": CREATED_AT,
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc",
                "function": {
                    "index": 0,
                    "name": "get_weather",
                    "arguments": {"city": "Paris", "unit": "c"},
                },
            }
        ],
    },
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 30,
    "eval_count": 9,
}


def test_chat_completion_round_trip_parses_with_openai_models():
    out = ollama_chat_to_openai(FINAL_CHAT, "llama3.2", "chatcmpl-123", 1700000000)
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.content == "Hello there"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage.prompt_tokens == 26 and parsed.usage.total_tokens == 38
    assert out["choices"][0]["message"]["reasoning"] == "greet"
    assert parsed.system_fingerprint == "fp_ollama" and parsed.created == 1700000000


def test_chat_completion_with_tool_calls():
    out = ollama_chat_to_openai(TOOL_CHAT, "llama3.2", "chatcmpl-1", 1)
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].finish_reason == "tool_calls"
    call = parsed.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_abc", "get_weather")
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
    assert list(orjson.loads(call.function.arguments)) == ["city", "unit"]


def test_length_finish_reason():
    out = ollama_chat_to_openai({**FINAL_CHAT, "done_reason": "length"}, "m", "id", 1)
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == "length"


def chat_stream():
    return [
        {
            "model": "m",
            "created_at": CREATED_AT,
            "done": False,
            "message": {"role": "assistant", "content": "", "thinking": "hmm"},
        },
        {
            "model": "m",
            "created_at": CREATED_AT,
            "done": False,
            "message": {"role": "assistant", "content": "Hel"},
        },
        {
            "model": "m",
            "created_at": CREATED_AT,
            "done": False,
            "message": {"role": "assistant", "content": "lo"},
        },
        {
            "model": "m",
            "created_at": CREATED_AT,
            "done": True,
            "done_reason": "stop",
            "message": {"role": "assistant", "content": ""},
            "prompt_eval_count": 5,
            "eval_count": 3,
        },
    ]


def test_chat_stream_translation():
    translator = ChatStreamTranslator("m", "chatcmpl-9", 1234, include_usage=True)
    chunks = [c for record in chat_stream() for c in translator.feed(record)]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert [c.id for c in parsed] == ["chatcmpl-9"] * 5
    assert all(c.created == 1234 for c in parsed)
    assert parsed[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in parsed[1:4])
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "hmm",
    }
    assert "".join(c.choices[0].delta.content or "" for c in parsed[:3]) == "Hello"
    assert chunks[3]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert parsed[4].choices == [] and parsed[4].usage.total_tokens == 8
    assert all(c.choices[0].finish_reason is None for c in parsed[:3])


def test_chat_stream_without_usage_and_with_tool_calls():
    translator = ChatStreamTranslator("m", "id", 1, include_usage=False)
    records = [
        {**TOOL_CHAT, "done": False, "done_reason": None},
        {
            "model": "m",
            "created_at": CREATED_AT,
            "done": True,
            "done_reason": "stop",
            "message": {"role": "assistant", "content": ""},
        },
    ]
    chunks = [c for r in records for c in translator.feed(r)]
    assert len(chunks) == 2
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    call = parsed[0].choices[0].delta.tool_calls[0]
    assert (call.index, call.id, call.function.name) == (0, "call_abc", "get_weather")
    assert parsed[1].choices[0].finish_reason == "tool_calls"
    sse = ChatStreamTranslator("m", "id", 1, include_usage=False).feed_sse(records[1])
    assert sse.endswith(SSE_DONE) and sse.count(b"data: ") == 2


def test_final_record_with_content_is_not_lost():
    translator = ChatStreamTranslator("m", "id", 1, include_usage=False)
    chunks = translator.feed({**FINAL_CHAT})
    assert chunks[0]["choices"][0]["delta"]["content"] == "Hello there"
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_completion_round_trip():
    final = {
        "model": "m",
        "created_at": CREATED_AT,
        "response": "Once upon",
        "done": True,
        "done_reason": "length",
        "context": [1, 2],
        "prompt_eval_count": 4,
        "eval_count": 2,
    }
    parsed = Completion.model_validate(ollama_generate_to_openai(final, "m", "cmpl-5", 9))
    assert parsed.object == "text_completion"
    assert (parsed.choices[0].text, parsed.choices[0].finish_reason) == ("Once upon", "length")
    assert parsed.usage.total_tokens == 6


def test_completion_stream_with_usage():
    translator = CompletionStreamTranslator("m", "cmpl-1", 5, include_usage=True)
    records = [
        {"model": "m", "response": "a", "done": False},
        {
            "model": "m",
            "response": "",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 1,
        },
    ]
    chunks = [c for r in records for c in translator.feed(r)]
    assert len(chunks) == 3
    assert chunks[0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert chunks[0]["choices"][0] == {"text": "a", "index": 0, "finish_reason": None}
    assert Completion.model_validate(chunks[1]).choices[0].finish_reason == "stop"
    last = Completion.model_validate(chunks[2])
    assert last.choices == [] and last.usage.total_tokens == 4


def test_embeddings_float_and_base64():
    vectors = [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]]
    resp = {"model": "e", "embeddings": vectors, "prompt_eval_count": 7}
    as_float = CreateEmbeddingResponse.model_validate(ollama_embed_to_openai(resp, "e"))
    assert [d.embedding for d in as_float.data] == vectors
    assert [d.index for d in as_float.data] == [0, 1]
    assert as_float.usage.prompt_tokens == 7 and as_float.usage.total_tokens == 7
    as_b64 = ollama_embed_to_openai(resp, "e", "base64")
    for item, vector in zip(as_b64["data"], vectors, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert len(raw) == 4 * len(vector)
        assert list(struct.unpack(f"<{len(vector)}f", raw)) == vector


def test_models_list_and_retrieve():
    tags = {
        "models": [
            {
                "name": "llama3.2:latest",
                "model": "llama3.2:latest",
                "modified_at": "2024-01-01T00:00:00.123456789Z",
                "size": 1,
            },
            {
                "name": "user/custom:7b",
                "model": "user/custom:7b",
                "modified_at": "2024-01-01T01:00:00+01:00",
                "size": 2,
            },
        ]
    }
    listed = ollama_tags_to_openai_models(tags)
    assert listed["object"] == "list"
    models = [Model.model_validate(m) for m in listed["data"]]
    assert [(m.id, m.owned_by, m.created) for m in models] == [
        ("llama3.2:latest", "library", 1704067200),
        ("user/custom:7b", "user", 1704067200),
    ]
    assert ollama_tags_to_openai_models({"models": []}) == {"object": "list", "data": None}
    single = Model.model_validate(ollama_model_to_openai(tags["models"][0]))
    assert single.id == "llama3.2:latest"
    shown = ollama_show_to_openai_model({"modified_at": CREATED_AT}, "llama3.2:1b")
    assert Model.model_validate(shown).id == "llama3.2:1b"
    assert shown["created"] == parse_ollama_time(CREATED_AT) == 1717537111


def test_parse_ollama_time_bad_values():
    assert parse_ollama_time(None) == 0
    assert parse_ollama_time("yesterday") == 0


def test_sse_framing():
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"
    event = openai_stream_error_event("runner crashed")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:]) == {
        "error": {"message": "runner crashed", "type": "api_error", "param": None, "code": None}
    }

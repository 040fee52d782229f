import math

import pytest

from olol.api.errors import ApiError
from olol.api.validation import (
    embed_inputs,
    keep_alive_seconds,
    parse_json_body,
    runner_options_key,
    validate_chat,
    validate_copy,
    validate_create,
    validate_delete,
    validate_embed,
    validate_embeddings,
    validate_generate,
    validate_options,
    validate_pull,
    validate_push,
    validate_show,
)


def fails(fn, body, status, message):
    with pytest.raises(ApiError) as info:
        fn(body)
    assert (info.value.status, info.value.message) == (status, message)


# --- parse_json_body ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "missing request body"),
        (b" \n\t", "missing request body"),
        (b"{", "unexpected EOF"),
        (b'{"model": "m"', "unexpected EOF"),
        (b'{"model": "m', "unexpected EOF"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b"{'model': 'm'}", "invalid character '\\'' looking for beginning of object key string"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b'{"a":[1 2]}', "invalid character '2' after array element"),
        (b'{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"a":nul}', "invalid character '}' in literal null (expecting 'l')"),
        (b'{"a":-}', "invalid character '}' in numeric literal"),
        (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"a":1e+}', "invalid character '}' in exponent of numeric literal"),
        (b'{"a":01}', "invalid character '1' after object key:value pair"),
        (b'{"a":"\\q"}', "invalid character 'q' in string escape code"),
        (b'{"a":"\\u12g4"}', "invalid character 'g' in \\u hexadecimal character escape"),
        (b'{"a":"x\ny"}', "invalid character '\\n' in string literal"),
        (b'{"a":NaN}', "invalid character 'N' looking for beginning of value"),
        (b"{,}", "invalid character ',' looking for beginning of object key string"),
    ],
)
def test_broken_json_gets_go_messages(raw, message):
    with pytest.raises(ApiError) as info:
        parse_json_body(raw, 1000)
    assert (info.value.status, info.value.message) == (400, message)


@pytest.mark.parametrize(
    "raw, kind",
    [(b"[1,2]", "array"), (b'"s"', "string"), (b"12", "number"), (b"true", "bool")],
)
def test_non_object_json(raw, kind):
    with pytest.raises(ApiError) as info:
        parse_json_body(raw, 1000, go_type="api.GenerateRequest")
    assert info.value.status == 400
    assert info.value.message == (
        f"json: cannot unmarshal {kind} into Go value of type api.GenerateRequest"
    )


def test_null_body_is_not_an_object():
    with pytest.raises(ApiError) as info:
        parse_json_body(b"null", 100)
    assert info.value.message.startswith("json: cannot unmarshal null")


def test_body_over_limit_is_413():
    with pytest.raises(ApiError) as info:
        parse_json_body(b'{"prompt":"' + b"a" * 100 + b'"}', 50)
    assert info.value.status == 413


def test_valid_bodies_parse_and_trailing_data_is_ignored_like_go():
    assert parse_json_body(b'{"model":"m","n":[1,2.5]}', 100) == {"model": "m", "n": [1, 2.5]}
    assert parse_json_body(b'{"model":"m"} {"x"', 100) == {"model": "m"}
    big = parse_json_body(b'{"n":123456789012345678901234567890}', 100)["n"]
    assert big == pytest.approx(1.2345678901234568e29)
    assert parse_json_body(b'{"p":"caf\xc3\xa9 \xff"}', 100) == {"p": "café \ufffd"}


# --- generate -------------------------------------------------------------------------


def test_generate_ok_and_stream_default_true():
    body = {"model": "Llama3", "prompt": "hi"}
    v = validate_generate(body)
    assert (v.endpoint, v.model, v.normalized_model, v.stream) == (
        "generate",
        "Llama3",
        "llama3:latest",
        True,
    )
    assert v.body is body
    assert validate_generate({"model": "m", "prompt": "x", "stream": False}).stream is False
    assert validate_generate({"model": "m", "prompt": "x", "stream": None}).stream is True


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 404, "model '' not found"),
        ({"model": ""}, 404, "model '' not found"),
        ({"model": "bad name"}, 404, "model 'bad name' not found"),
        (
            {"model": 3},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.model of type string",
        ),
        (
            {"model": "m", "stream": "yes"},
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool",
        ),
        (
            {"model": "m", "prompt": ["a"]},
            400,
            "json: cannot unmarshal array into Go struct field GenerateRequest.prompt of type string",
        ),
        (
            {"model": "m", "context": [1, "2"]},
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.context of type int",
        ),
        (
            {"model": "m", "top_logprobs": 2.5},
            400,
            "json: cannot unmarshal number 2.5 into Go struct field GenerateRequest.top_logprobs "
            "of type int",
        ),
        (
            {"model": "m", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            {"model": "m", "raw": True, "template": "t"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            {"model": "m", "raw": True, "context": [1]},
            400,
            "raw mode does not support template, system, or context",
        ),
        ({"model": "m", "top_logprobs": 21}, 400, "top_logprobs must be between 0 and 20"),
        ({"model": "m", "top_logprobs": -1}, 400, "top_logprobs must be between 0 and 20"),
        ({"model": "m", "keep_alive": "3600"}, 400, 'time: missing unit in duration "3600"'),
        ({"model": "m", "keep_alive": "5x"}, 400, 'time: unknown unit "x" in duration "5x"'),
        ({"model": "m", "keep_alive": "abc"}, 400, 'time: invalid duration "abc"'),
        ({"model": "m", "keep_alive": ""}, 400, 'time: invalid duration ""'),
        ({"model": "m", "keep_alive": True}, 400, "Unsupported type: 'bool'"),
        ({"model": "m", "keep_alive": [1]}, 400, "Unsupported type: '[]interface {}'"),
        (
            {"model": "m", "think": "ultra"},
            400,
            'invalid think value: "ultra" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            {"model": "m", "think": 1},
            400,
            'invalid think value: 1 (must be "high", "medium", "low", "max", true, or false)',
        ),
        ({"model": "m", "images": ["not base64!"]}, 400, "illegal base64 data at input byte 3"),
        (
            {"model": "m", "images": [7]},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.images "
            "of type api.ImageData",
        ),
        (
            {"model": "m", "images": "aGk="},
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.images "
            "of type []api.ImageData",
        ),
        (
            {"model": "m", "format": "yaml"},
            400,
            'invalid format: "yaml"; expected "json" or a valid JSON Schema',
        ),
        (
            {"model": "m", "format": 5},
            400,
            'invalid format: 5; expected "json" or a valid JSON Schema',
        ),
        (
            {"model": "m", "options": "fast"},
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.options "
            "of type map[string]interface {}",
        ),
        (
            {"model": "m", "options": {"num_ctx": "4096"}},
            400,
            'option "num_ctx" must be of type integer',
        ),
        (
            {"model": "m", "options": {"temperature": "hot"}},
            400,
            'option "temperature" must be of type float32',
        ),
        (
            {"model": "m", "options": {"use_mmap": 1}},
            400,
            'option "use_mmap" must be of type boolean',
        ),
        ({"model": "m", "options": {"stop": "\n"}}, 400, 'option "stop" must be of type array'),
        (
            {"model": "m", "options": {"stop": ["a", 1]}},
            400,
            'option "stop" must be of an array of strings',
        ),
        ({"model": "m", "options": {"seed": True}}, 400, 'option "seed" must be of type integer'),
    ],
)
def test_generate_errors(body, status, message):
    fails(validate_generate, body, status, message)


@pytest.mark.parametrize(
    "extra",
    [
        {"keep_alive": "5m"},
        {"keep_alive": "1h30m"},
        {"keep_alive": "-1m"},
        {"keep_alive": 0},
        {"keep_alive": -1},
        {"keep_alive": 1.5},
        {"keep_alive": "300ms"},
        {"keep_alive": "0"},
        {"think": True},
        {"think": False},
        {"think": "high"},
        {"think": "max"},
        {"format": "json"},
        {"format": {"type": "object"}},
        {"format": ""},
        {"images": ["aGVsbG8=", "aGk=\n"]},
        {"raw": True},
        {"raw": False, "system": "s"},
        {
            "options": {
                "unknown_key": "whatever",
                "num_ctx": 4096.0,
                "stop": ["x"],
                "use_mmap": False,
                "temperature": 0,
                "mirostat": "ignored",
            }
        },
        {"top_logprobs": 20, "logprobs": True},
        {"width": "ignored by the server"},
        {"options": {"num_ctx": None}},
    ],
)
def test_generate_accepts_what_ollama_accepts(extra):
    v = validate_generate({"model": "m", "prompt": "p", **extra})
    assert v.normalized_model == "m:latest"


def test_field_names_match_case_insensitively_like_go():
    v = validate_generate({"Model": "llama3", "Stream": False, "prompt": "x"})
    assert (v.model, v.stream) == ("llama3", False)
    fails(
        validate_generate,
        {"model": "m", "STREAM": "no"},
        400,
        "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool",
    )


# --- chat -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 400, "model is required"),
        ({"model": "", "messages": []}, 400, "model is required"),
        ({"model": "a/b/c/d"}, 404, "model 'a/b/c/d' not found"),
        (
            {"model": "m", "messages": {"role": "user"}},
            400,
            "json: cannot unmarshal object into Go struct field ChatRequest.messages "
            "of type []api.Message",
        ),
        (
            {"model": "m", "messages": ["hi"]},
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.messages "
            "of type api.Message",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            400,
            "json: cannot unmarshal number into Go struct field Message.messages.content "
            "of type string",
        ),
        (
            {"model": "m", "messages": [{"role": 1, "content": "x"}]},
            400,
            "json: cannot unmarshal number into Go struct field Message.messages.role "
            "of type string",
        ),
        ({"model": "m", "messages": [{"content": "x"}]}, 400, "messages[0]: role is required"),
        (
            {"model": "m", "messages": [{"role": "user", "images": ["%%%%"]}]},
            400,
            "illegal base64 data at input byte 0",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    }
                ],
            },
            400,
            "json: cannot unmarshal string into Go struct field "
            "ToolCallFunction.messages.tool_calls.function.arguments "
            "of type map[string]interface {}",
        ),
        (
            {"model": "m", "tools": {"type": "function"}},
            400,
            "json: cannot unmarshal object into Go struct field ChatRequest.tools "
            "of type []api.Tool",
        ),
        (
            {"model": "m", "messages": [], "top_logprobs": 50},
            400,
            "top_logprobs must be between 0 and 20",
        ),
        (
            {"model": "m", "options": {"num_predict": "10"}},
            400,
            'option "num_predict" must be of type integer',
        ),
    ],
)
def test_chat_errors(body, status, message):
    fails(validate_chat, body, status, message)


def test_chat_ok_with_tools_and_tool_messages():
    body = {
        "model": "qwen3",
        "messages": [
            {"role": "user", "content": "weather?", "images": ["aGk="]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "20C", "tool_name": "get_weather"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        "think": "low",
    }
    v = validate_chat(body)
    assert (v.endpoint, v.stream, v.normalized_model) == ("chat", True, "qwen3:latest")


# --- embeddings -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["one", ["a", "b"], [], "", None])
def test_embed_input_ok(value):
    body = {"model": "all-minilm", "input": value}
    v = validate_embed(body)
    assert v.stream is False
    expected = (
        {"one": ["one"], "": [], None: []}.get(value, value)
        if not isinstance(value, list)
        else value
    )
    assert embed_inputs(body) == expected


@pytest.mark.parametrize("value", [1, [1, 2], [[1, 2]], ["a", 1], {"text": "a"}, True])
def test_embed_invalid_input_type(value):
    fails(validate_embed, {"model": "m", "input": value}, 400, "invalid input type")


def test_embed_model_errors_and_types():
    fails(validate_embed, {"input": "x"}, 404, "model '' not found")
    fails(
        validate_embed,
        {"model": "m", "dimensions": "8"},
        400,
        "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int",
    )
    fails(
        validate_embed,
        {"model": "m", "truncate": "no"},
        400,
        "json: cannot unmarshal string into Go struct field EmbedRequest.truncate of type bool",
    )


def test_embeddings_legacy():
    assert validate_embeddings({"model": "m", "prompt": "x"}).stream is False
    fails(validate_embeddings, {"prompt": "x"}, 400, "model is required")
    fails(
        validate_embeddings,
        {"model": "b a d"},
        404,
        'model "b a d" not found, try pulling it first',
    )
    fails(
        validate_embeddings,
        {"model": "m", "prompt": 1},
        400,
        "json: cannot unmarshal number into Go struct field EmbeddingRequest.prompt of type string",
    )


# --- model management -----------------------------------------------------------------


def test_show():
    assert validate_show({"name": "llama3"}).normalized_model == "llama3:latest"
    assert validate_show({"model": "a", "name": "b"}).model == "a"
    fails(validate_show, {}, 400, "model is required")
    fails(
        validate_show,
        {"model": "m", "verbose": "yes"},
        400,
        "json: cannot unmarshal string into Go struct field ShowRequest.verbose of type bool",
    )


@pytest.mark.parametrize("fn", [validate_pull, validate_push])
def test_pull_push(fn):
    v = fn({"model": "user/m:7b", "insecure": False})
    assert (v.stream, v.normalized_model) == (True, "user/m:7b")
    assert fn({"name": "m", "stream": False}).stream is False
    fails(fn, {}, 400, "model is required")
    fails(fn, {"model": "bad name"}, 400, "invalid model name")
    fails(
        fn,
        {"model": "m", "insecure": "no"},
        400,
        "json: cannot unmarshal string into Go struct field PullRequest.insecure of type bool",
    )


def test_create():
    assert validate_create({"model": "mine", "from": "llama3"}).stream is True
    assert validate_create({"model": "mine", "files": {"m.gguf": "sha256:ab"}}).model == "mine"
    fails(validate_create, {"model": "mine"}, 400, "neither 'from' or 'files' was specified")
    fails(validate_create, {"from": "llama3"}, 400, "model is required")
    fails(validate_create, {"model": "a b", "from": "x"}, 400, "invalid model name")
    fails(
        validate_create,
        {"model": "m", "files": {"a": 1}},
        400,
        "json: cannot unmarshal number into Go struct field CreateRequest.files of type string",
    )


def test_copy():
    v = validate_copy({"source": "llama3", "destination": "backup"})
    assert (v.model, v.normalized_model, v.stream) == ("llama3", "llama3:latest", False)
    fails(validate_copy, {"source": "a b", "destination": "x"}, 400, 'source "a b" is invalid')
    fails(validate_copy, {"destination": "x"}, 400, 'source "" is invalid')
    fails(validate_copy, {"source": "x", "destination": "y:"}, 400, 'destination "y:" is invalid')


def test_delete():
    assert validate_delete({"model": "llama3:8b"}).normalized_model == "llama3:8b"
    assert validate_delete({"name": "llama3"}).model == "llama3"
    fails(validate_delete, {"model": "a b"}, 400, 'name "a b" is invalid')
    fails(validate_delete, {}, 400, 'name "" is invalid')


# --- options, keep_alive, load/unload -------------------------------------------------


def test_validate_options_ignores_non_dicts_and_unknown_keys():
    validate_options(None)
    validate_options({"numa": "x", "f16_kv": 3})


def test_keep_alive_seconds():
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds("5m") == 300
    assert keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds("1.5s") == 1.5
    assert keep_alive_seconds("300ms") == pytest.approx(0.3)
    assert keep_alive_seconds(10) == 10
    assert keep_alive_seconds(0) == 0
    assert keep_alive_seconds(-1) == math.inf
    assert keep_alive_seconds("-1m") == math.inf
    with pytest.raises(ApiError):
        keep_alive_seconds("10")


def test_load_and_unload_requests():
    load = validate_generate({"model": "m"})
    assert load.is_load_or_unload and not load.is_unload
    unload = validate_generate({"model": "m", "keep_alive": 0})
    assert unload.is_unload
    assert validate_chat({"model": "m", "messages": [], "keep_alive": "0s"}).is_unload
    assert not validate_generate({"model": "m", "prompt": "x", "keep_alive": 0}).is_unload


def test_runner_options_key():
    assert runner_options_key({"model": "m"}) == ()
    assert runner_options_key({"options": {"temperature": 0.1, "seed": 4}}) == ()
    key = runner_options_key({"options": {"num_thread": 8, "num_ctx": 8192.0, "top_k": 3}})
    assert key == (("num_ctx", 8192), ("num_thread", 8))
    assert hash(key) == hash((("num_ctx", 8192), ("num_thread", 8)))
    assert runner_options_key({"options": {"num_gpu": -1}}) == ()
    assert runner_options_key({"options": {"num_gpu": 20}}) == (("num_gpu", 20),)
    assert runner_options_key({"options": {"num_ctx": 4096}}) != runner_options_key(
        {"options": {"num_ctx": 8192}}
    )
    assert runner_options_key(
        {"options": {"use_mmap": False, "main_gpu": 1, "num_batch": 256, "draft_num_predict": 2}}
    ) == (("num_batch", 256), ("main_gpu", 1), ("use_mmap", False), ("draft_num_predict", 2))


def test_integers_beyond_64_bits_are_refused_in_typed_options_and_kept_as_floats_elsewhere():
    from olol.api.errors import ApiError
    from olol.api.validation import parse_json_body, validate_chat

    raw = b'{"model":"m","messages":[],"options":{"seed":123456789012345678901234567890}}'
    with pytest.raises(ApiError) as err:
        validate_chat(parse_json_body(raw, 1 << 20))
    assert err.value.status == 400 and 'option "seed"' in err.value.message
    body = parse_json_body(b'{"model":"m","extra":123456789012345678901234567890}', 1 << 20)
    assert body["extra"] == pytest.approx(1.2345678901234568e29)


def test_absurdly_deep_json_is_a_400_not_a_crash():
    from olol.api.errors import ApiError
    from olol.api.validation import parse_json_body

    raw = b'{"model":"m","format":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(ApiError) as err:
        parse_json_body(raw, 1 << 20)
    assert err.value.status == 400 and err.value.message == "exceeded max depth"

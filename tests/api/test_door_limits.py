"""One decoder, one set of limits at the door: inputs that used to reach the store,
the coalescing key or the OpenAI translation and fail there with 500 now get an answer
in the API's own format (issue 9, item 2)."""

from __future__ import annotations

import json

import pytest

from olol.api import errors
from olol.api.decoding import MAX_DEPTH, parse_json_body
from olol.api.grouping import _digest
from olol.api.names import is_valid_model_name
from olol.api.openai_requests import chat_completion_to_ollama


def nested(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_deeper_than_the_limit_is_a_400(kind):
    ok = json.dumps({"format": nested(MAX_DEPTH - 1, kind)}).encode()
    assert parse_json_body(ok, 1 << 20)["format"] == nested(MAX_DEPTH - 1, kind)
    deep = json.dumps({"format": nested(MAX_DEPTH + 1, kind)}).encode()
    with pytest.raises(errors.ApiError) as info:
        parse_json_body(deep, 1 << 20)
    assert info.value.status == 400 and info.value.message == "exceeded max depth"


def test_many_shallow_brackets_are_not_deep():
    body = json.dumps({"messages": [{"role": "user", "content": "x"}] * 1000}).encode()
    assert len(parse_json_body(body, 1 << 20)["messages"]) == 1000


def test_a_lone_surrogate_becomes_u_fffd_as_go_decodes_it_and_pairs_stay():
    raw = b'{"prompt": "a\\ud800b", "\\udfffkey": ["\\ud83d\\ude00", "\\uD800"]}'
    body = parse_json_body(raw, 1 << 20)
    assert body == {"prompt": "a\ufffdb", "\ufffdkey": ["\U0001F600", "\ufffd"]}
    json.dumps(body).encode("utf-8")  # storable


@pytest.mark.parametrize("value", [1e300, -1e300, 1e20, 2.0**63])
def test_integral_floats_beyond_64_bits_hash_in_the_coalescing_key(value):
    assert len(_digest({"options": {"top_p": value}})) == 64
    assert _digest({"x": 0.0}) == _digest({"x": 0})  # still canonical below 64 bits


def test_openai_null_message_is_a_400_in_openai_words():
    with pytest.raises(errors.ApiError) as info:
        chat_completion_to_ollama({"model": "llama3.2:1b", "messages": [None]})
    assert info.value.status == 400
    assert info.value.message == "invalid message content type: <nil>"


@pytest.mark.parametrize("name", [".", "x/y/.", ".hidden", "a/.b", "m:.1", "-x", "ns/-m"])
def test_names_whose_part_does_not_start_with_a_letter_digit_or_underscore_are_invalid(name):
    assert not is_valid_model_name(name)


@pytest.mark.parametrize("name", ["llama3.2:1b", "_x", "hf.co/user/model:Q4_K_M",
                                  "localhost:5000/ns/m", "user/m-1.5:7b"])
def test_ordinary_names_stay_valid(name):
    assert is_valid_model_name(name)

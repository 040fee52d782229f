"""Structured fuzzing of ``POST /v1/messages`` (Anthropic) and ``POST /v1/responses``
(OpenAI Responses): bodies shaped like real requests (content blocks, input items,
tools, sampling fields) with right and wrong values mixed in, sent to the live proxy.
Every answer must be a 2xx or a 4xx/503 in the API's own error shape — never a 500 —
and the proxy must log no unexpected exception. (The generic route fuzzer only knows
these routes' field names, not the shapes inside them.)"""

from __future__ import annotations

import base64
import json
import os

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import MODEL, Route, exercise
from tests.fuzz.strategies import Plan, floats, ints, json_values, model_names, texts

EXAMPLES = int(os.environ.get("OLOL_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)

MESSAGES = Route("/v1/messages", "POST", "anthropic.messages", ())
RESPONSES = Route("/v1/responses", "POST", "responses.responses", ())
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def maybe(strategy, other=json_values):
    """Mostly the plausible value (seven times in eight), sometimes anything."""
    return st.integers(0, 7).flatmap(lambda n: other if n == 7 else strategy)


small_text = st.one_of(st.sampled_from(["hi", "", "get_weather", "call get_weather"]), texts)
schemas = st.one_of(st.just({"type": "object", "properties": {"city": {"type": "string"}}}),
                    json_values)

# -- Anthropic -----------------------------------------------------------------------------

image_sources = st.fixed_dictionaries({
    "type": maybe(st.sampled_from(["base64", "url", ""])),
    "data": maybe(st.sampled_from([PNG, "@@@", ""])),
}, optional={"media_type": maybe(st.sampled_from(["image/png", "x"]))})
blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(small_text)}),
    st.fixed_dictionaries({"type": st.just("image")}, optional={"source": maybe(image_sources)}),
    st.fixed_dictionaries({"type": st.just("tool_use")}, optional={
        "id": maybe(small_text), "name": maybe(small_text),
        "input": maybe(st.dictionaries(small_text, json_values, max_size=2))}),
    st.fixed_dictionaries({"type": st.just("tool_result")}, optional={
        "tool_use_id": maybe(small_text), "is_error": maybe(st.booleans()),
        "content": maybe(st.one_of(small_text, st.lists(st.one_of(
            st.fixed_dictionaries({"type": st.just("text"), "text": maybe(small_text)}),
            st.fixed_dictionaries({"type": st.just("image"), "source": maybe(image_sources)}),
        ), max_size=2)))}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": maybe(small_text)}),
    st.fixed_dictionaries({"type": maybe(st.sampled_from([
        "server_tool_use", "web_search_tool_result", "document", "redacted_thinking"]))}),
    json_values,
)
anthropic_messages = st.lists(st.fixed_dictionaries({
    "role": maybe(st.sampled_from(["user", "assistant", "User", ""])),
    "content": maybe(st.one_of(small_text, st.lists(blocks, max_size=4))),
}), min_size=1, max_size=4)
anthropic_tools = st.lists(st.fixed_dictionaries({"name": maybe(small_text)}, optional={
    "description": maybe(small_text), "input_schema": maybe(schemas),
    "type": maybe(st.sampled_from(["custom", "web_search_20250305", ""]))}), max_size=2)
anthropic_bodies = st.fixed_dictionaries(
    {"model": maybe(st.one_of(st.just(MODEL), st.just(MODEL), model_names)),
     "max_tokens": maybe(st.one_of(st.integers(1, 8), st.integers(-1, 8), ints, floats)),
     "messages": maybe(anthropic_messages)},
    optional={
        "system": maybe(st.one_of(small_text, st.lists(blocks, max_size=2))),
        "stream": maybe(st.booleans()),
        "temperature": maybe(st.one_of(st.just(0), floats)),
        "top_p": maybe(floats), "top_k": maybe(ints),
        "stop_sequences": maybe(st.lists(small_text, max_size=2)),
        "tools": maybe(anthropic_tools),
        "tool_choice": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(
            ["auto", "any", "tool", "none"]))})),
        "thinking": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(
            ["enabled", "disabled", "x"]))}, optional={"budget_tokens": maybe(ints)})),
        "output_config": maybe(st.fixed_dictionaries({"effort": maybe(st.sampled_from(
            ["low", "xhigh", "max", "none"]))})),
        "metadata": maybe(st.fixed_dictionaries({"user_id": maybe(small_text)})),
    },
)

# -- Responses -----------------------------------------------------------------------------

parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]),
                           "text": maybe(small_text)}),
    st.fixed_dictionaries({"type": st.just("input_image")}, optional={
        "detail": maybe(st.just("auto")),
        "image_url": maybe(st.sampled_from([f"data:image/png;base64,{PNG}",
                                            "https://x/y.png", "data:image/png;base64,@@",
                                            "nonsense"]))}),
    st.fixed_dictionaries({"type": maybe(st.sampled_from(["input_file", "refusal", ""]))}),
    json_values,
)
items = st.one_of(
    st.fixed_dictionaries({"role": maybe(st.sampled_from(
        ["user", "assistant", "system", "developer", ""]))}, optional={
        "type": maybe(st.just("message")),
        "content": maybe(st.one_of(small_text, st.lists(parts, max_size=3)))}),
    st.fixed_dictionaries({"type": st.just("function_call")}, optional={
        "call_id": maybe(small_text), "name": maybe(small_text),
        "arguments": maybe(st.sampled_from(['{"city":"Paris"}', "{bad", "[1]", "", "1"]))}),
    st.fixed_dictionaries({"type": st.just("function_call_output")}, optional={
        "call_id": maybe(small_text),
        "output": maybe(st.one_of(small_text, st.lists(parts, max_size=2)))}),
    st.fixed_dictionaries({"type": maybe(st.sampled_from(
        ["reasoning", "web_search_call", "item_reference", ""]))}, optional={
        "encrypted_content": maybe(small_text)}),
    json_values,
)
response_tools = st.lists(st.fixed_dictionaries({"type": maybe(st.sampled_from(
    ["function", "namespace", "web_search", "file_search"]))}, optional={
    "name": maybe(small_text), "description": maybe(small_text),
    "parameters": maybe(schemas), "strict": maybe(st.booleans()),
    "tools": maybe(st.lists(st.fixed_dictionaries({"type": st.just("function"),
                                                   "name": maybe(small_text)}), max_size=2))}),
    max_size=2)
responses_bodies = st.fixed_dictionaries(
    {"model": maybe(st.one_of(st.just(MODEL), st.just(MODEL), model_names)),
     "input": maybe(st.one_of(small_text, st.lists(items, max_size=4)))},
    optional={
        "instructions": maybe(small_text),
        "stream": maybe(st.booleans()),
        "temperature": maybe(st.one_of(st.just(0), floats)),
        "top_p": maybe(floats),
        "max_output_tokens": maybe(st.one_of(st.integers(-1, 8), ints)),
        "reasoning": maybe(st.fixed_dictionaries({}, optional={
            "effort": maybe(st.sampled_from(["none", "minimal", "high", "bogus"])),
            "summary": maybe(st.sampled_from(["auto", "detailed"]))})),
        "text": maybe(st.fixed_dictionaries({}, optional={"format": maybe(
            st.fixed_dictionaries({"type": maybe(st.sampled_from(
                ["text", "json_object", "json_schema"]))}, optional={
                "schema": maybe(schemas), "name": maybe(small_text)}))})),
        "tools": maybe(response_tools),
        "tool_choice": maybe(st.sampled_from(["auto", "none", "required"])),
        "previous_response_id": maybe(st.sampled_from(["", "resp_1"])),
        "truncation": maybe(st.sampled_from(["disabled", "auto"])),
        "background": maybe(st.booleans()),
    },
)


def plan_for(route: Route, body: dict) -> Plan:
    raw = json.dumps(body, ensure_ascii=True).encode()
    return Plan(method="POST", path=route.rule,
                headers=[("Content-Type", "application/json")], auth=("admin", ""),
                body=raw, chunked=False, target="open")


@FUZZ
@given(body=anthropic_bodies)
def test_fuzzed_messages_get_no_500(fuzz_env, body):
    answer = exercise(fuzz_env, MESSAGES, plan_for(MESSAGES, body))
    if answer.status is not None and answer.status >= 400 and answer.status not in (404, 405):
        data = json.loads(answer.body)
        assert data["type"] == "error" and isinstance(data["error"]["message"], str), data


@FUZZ
@given(body=responses_bodies)
def test_fuzzed_responses_get_no_500(fuzz_env, body):
    answer = exercise(fuzz_env, RESPONSES, plan_for(RESPONSES, body))
    if answer.status is not None and answer.status >= 400 and answer.status not in (404, 405):
        data = json.loads(answer.body)
        assert isinstance(data["error"]["type"], str), data

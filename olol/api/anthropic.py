"""The Anthropic Messages API (``POST /v1/messages``), translated the way Ollama's own
``anthropic`` package does (``anthropic/anthropic.go``, ``middleware/anthropic.go``).

A Messages request becomes a native ``/api/chat`` body (:func:`messages_to_ollama`),
which then goes through the queue like any other chat; the native answer comes back
as a Messages object or, streamed, as Anthropic's server-sent events
(:mod:`olol.api.anthropic_answers`: ``message_start``, ``ping``,
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``,
``message_delta``, ``message_stop``; an ``error`` event when the stream fails after it
started). Errors are :class:`~olol.api.errors.ApiError`, rendered with
``anthropic_body()``.

Field mapping (request):

* ``system`` (string, or text blocks joined) → a first ``system`` message;
* ``messages[].content`` (string or blocks): ``text`` → ``content`` (joined);
  ``image`` (``source.type: base64``) → ``images``; ``tool_use`` → ``tool_calls``
  (``id``, ``function.name``, ``function.arguments`` = ``input``); ``tool_result`` →
  a ``tool`` message (``tool_call_id``, text and images of its content), placed before
  the user's own text; ``thinking`` → ``thinking``; other block types are ignored;
* ``max_tokens`` → ``options.num_predict``; ``temperature``, ``top_p``, ``top_k`` →
  options of the same name; ``stop_sequences`` → ``options.stop``;
* ``tools[]`` (``name``, ``description``, ``input_schema``) → function tools;
* ``thinking.type`` ``enabled``/``disabled`` → ``think`` true/false, else
  ``output_config.effort`` (``low|medium|high|max``; ``xhigh`` → ``high``) → ``think``;
* ``stream`` (default false) → ``stream``.

Field mapping (answer): ``message.thinking`` → a ``thinking`` block, ``content`` → a
``text`` block, each tool call → a ``tool_use`` block; ``done_reason`` → ``stop_reason``
(tool calls ⇒ ``tool_use``, ``stop`` ⇒ ``end_turn``, ``length`` ⇒ ``max_tokens``);
``prompt_eval_count`` / ``eval_count`` → ``usage.input_tokens`` / ``output_tokens``.

Deliberate differences from Ollama:

* built-in server tools (``web_search_*``) are a 400: Ollama runs the search itself
  through ollama.com, which a proxy in front of a private fleet does not do;
* ``tool_choice: {"type": "none"}`` drops the tools (Ollama ignores ``tool_choice``);
* a ``tool`` message also carries ``tool_name`` (found from the ``tool_use`` block with
  that id), which chat templates use to label the result;
* ``content`` is ``[]`` rather than ``null`` when the model produced nothing,
  ``stop_sequence`` is always present (``null``) and a thinking block has an empty
  ``signature``, as in Anthropic's own API (its SDK's types require them);
* a streamed answer has one ``ping`` after ``message_start``, as Anthropic's API does;
* a tool call without an id gets one (``toolu_<n>``) so the client can answer it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from olol.api import gojson
from olol.api.errors import ApiError

#: Request structs of Ollama's anthropic package, for Go-worded type errors.
_STRUCTS: dict[str, dict[str, str]] = {
    **gojson.API_STRUCTS,
    "anthropic.MessagesRequest": {
        "model": "string",
        "max_tokens": "int",
        "messages": "[]anthropic.MessageParam",
        "system": "interface {}",
        "stream": "bool",
        "temperature": "*float64",
        "top_p": "*float64",
        "top_k": "*int",
        "stop_sequences": "[]string",
        "tools": "[]anthropic.Tool",
        "tool_choice": "*anthropic.ToolChoice",
        "thinking": "*anthropic.ThinkingConfig",
        "metadata": "*anthropic.Metadata",
        "output_config": "*anthropic.OutputConfig",
    },
    "anthropic.MessageParam": {"role": "string", "content": "interface {}"},
    "anthropic.ContentBlock": {
        "type": "string",
        "text": "*string",
        "source": "*anthropic.ImageSource",
        "id": "string",
        "name": "string",
        "input": "map[string]interface {}",
        "tool_use_id": "string",
        "content": "interface {}",
        "is_error": "bool",
        "thinking": "*string",
        "signature": "string",
    },
    "anthropic.ImageSource": {
        "type": "string",
        "media_type": "string",
        "data": "string",
        "url": "string",
    },
    "anthropic.Tool": {
        "type": "string",
        "name": "string",
        "description": "string",
        "input_schema": "json.RawMessage",
        "max_uses": "int",
    },
    "anthropic.ToolChoice": {
        "type": "string",
        "name": "string",
        "disable_parallel_tool_use": "bool",
    },
    "anthropic.ThinkingConfig": {"type": "string", "budget_tokens": "int"},
    "anthropic.Metadata": {"user_id": "string"},
    "anthropic.OutputConfig": {"effort": "string"},
}

_EFFORTS = frozenset({"low", "medium", "high", "max"})


def _get(body: Mapping[str, Any], name: str) -> Any:
    return gojson.field_value(body, name)


def _type_error(value: Any, gotype: str) -> ApiError:
    return ApiError(
        400, f"json: cannot unmarshal {gojson.json_kind(value)} into Go value of type {gotype}"
    )


def _check(body: Any, gotype: str) -> None:
    try:
        gojson.check_struct(body, gotype, structs=_STRUCTS)
    except gojson.GoDecodeError as exc:
        raise ApiError(400, str(exc)) from None


def _blocks(content: Any) -> list[Mapping[str, Any]]:
    """A message's content as blocks: a string is one text block (Ollama's
    ``MessageParam.UnmarshalJSON``); a null element decodes to an empty block."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _type_error(content, "[]anthropic.ContentBlock")
    blocks = []
    for block in content:
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise _type_error(block, "anthropic.ContentBlock")
        _check(block, "anthropic.ContentBlock")
        blocks.append(block)
    return blocks


def check_request(body: Any) -> None:
    """Go's decoding of a ``MessagesRequest``: 400 with its wording on a type error."""
    if not isinstance(body, Mapping):
        raise _type_error(body, "anthropic.MessagesRequest")
    _check(body, "anthropic.MessagesRequest")
    for message in _get(body, "messages") or ():
        if message is not None:
            _blocks(_get(message, "content"))


def _image(source: Any) -> str:
    """A base64 image source, checked; its data as native ``images`` entry."""
    if not isinstance(source, Mapping):
        raise ApiError(400, "invalid image source")
    kind = _get(source, "type") or ""
    if kind != "base64":
        raise ApiError(
            400,
            f"invalid image source type: {kind}. Only base64 images are supported.",
        )
    data = _get(source, "data") or ""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid base64 image data: illegal base64 data") from None
    return data


def _tool_result_content(content: Any) -> tuple[str, list[str]]:
    """Text and images of a ``tool_result`` block's content (string or blocks)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text: list[str] = []
    images: list[str] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "image":
            if not isinstance(block.get("source"), Mapping):
                raise ApiError(400, "invalid tool_result image source")
            images.append(_image(block["source"]))
    return "".join(text), images


def _web_search_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) and content.get("type") == "web_search_tool_result_error":
        code = content.get("error_code")
        return f"web_search_tool_result_error: {code}" if code else "web_search_tool_result_error"
    lines = []
    for item in content if isinstance(content, list) else ():
        if isinstance(item, Mapping) and item.get("type") == "web_search_result":
            lines.append(f"- {item.get('title') or ''}: {item.get('url') or ''}\n")
    return "".join(lines)


class _ToolNames:
    """Tool-call ids seen so far in the conversation → function names."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def note(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            if call.get("id"):
                self.names[call["id"]] = call["function"]["name"]


def _convert_message(message: Mapping[str, Any], names: _ToolNames) -> list[dict[str, Any]]:
    """One Anthropic message → native messages (as Ollama's ``convertMessage``)."""
    role = str(_get(message, "role") or "").lower()
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking = ""
    results: list[dict[str, Any]] = []
    for block in _blocks(_get(message, "content")):
        kind = _get(block, "type")
        if kind == "text":
            value = _get(block, "text")
            if isinstance(value, str):
                text.append(value)
        elif kind == "image":
            if _get(block, "source") is None:
                raise ApiError(400, "invalid image source")
            images.append(_image(_get(block, "source")))
        elif kind in ("tool_use", "server_tool_use"):
            call_id, name = _get(block, "id") or "", _get(block, "name") or ""
            if kind == "tool_use" and not call_id:
                raise ApiError(400, "tool_use block missing required 'id' field")
            if kind == "tool_use" and not name:
                raise ApiError(400, "tool_use block missing required 'name' field")
            call: dict[str, Any] = {
                "function": {"name": name, "arguments": dict(_get(block, "input") or {})}
            }
            if call_id:
                call["id"] = call_id
            calls.append(call)
        elif kind == "tool_result":
            content, result_images = _tool_result_content(_get(block, "content"))
            results.append(_tool_message(content, result_images, _get(block, "tool_use_id")))
        elif kind == "thinking":
            value = _get(block, "thinking")
            if isinstance(value, str):
                thinking = value
        elif kind == "web_search_tool_result":
            content = _web_search_result_text(_get(block, "content"))
            results.append(_tool_message(content, [], _get(block, "tool_use_id")))
    for result in results:
        name = names.names.get(result.get("tool_call_id", ""))
        if name:
            result["tool_name"] = name
    out: list[dict[str, Any]] = []
    if role == "user":
        out.extend(results)
    if text or images or calls or thinking:
        converted: dict[str, Any] = {"role": role, "content": "".join(text)}
        if images:
            converted["images"] = images
        if calls:
            converted["tool_calls"] = calls
            names.note(calls)
        if thinking:
            converted["thinking"] = thinking
        out.append(converted)
    if role != "user":
        out.extend(results)
    return out


def _tool_message(content: str, images: list[str], call_id: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "tool", "content": content}
    if images:
        message["images"] = images
    if call_id:
        message["tool_call_id"] = call_id
    return message


def _system_message(system: Any) -> dict[str, Any] | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    if isinstance(system, list):
        text = "".join(
            block["text"]
            for block in system
            if isinstance(block, Mapping)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        return {"role": "system", "content": text} if text else None
    return None


def _convert_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    kind = _get(tool, "type") or ""
    name = _get(tool, "name") or ""
    if kind.startswith("web_search"):
        raise ApiError(
            400, f"server tool {kind!r} is not supported: this server runs no web search"
        )
    schema = _get(tool, "input_schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise ApiError(
            400,
            f"invalid input_schema for tool {orjson.dumps(name).decode()}: json: cannot "
            f"unmarshal {gojson.json_kind(schema)} into Go value of type "
            "api.ToolFunctionParameters",
        )
    function: dict[str, Any] = {"name": name}
    if _get(tool, "description"):
        function["description"] = _get(tool, "description")
    if schema is not None:
        function["parameters"] = dict(schema)
    return {"type": "function", "function": function}


def _think(body: Mapping[str, Any]) -> Any:
    thinking = _get(body, "thinking")
    kind = _get(thinking, "type") if isinstance(thinking, Mapping) else None
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    config = _get(body, "output_config")
    effort = _get(config, "effort") if isinstance(config, Mapping) else None
    effort = str(effort or "").strip().lower()
    if effort == "xhigh":
        effort = "high"
    return effort if effort in _EFFORTS else None


def messages_to_ollama(body: Any) -> dict[str, Any]:
    """``POST /v1/messages`` body → native ``/api/chat`` body.

    :raises ApiError: 400 (``invalid_request_error``) for type errors, a missing model
        (``model is required``), ``max_tokens`` missing or not positive, no messages
        (``messages is required``), bad image sources, ``tool_use`` blocks without id or
        name, invalid tool schemas, and server tools.
    """
    check_request(body)
    model = _get(body, "model")
    if not model:
        raise ApiError(400, "model is required")
    max_tokens = _get(body, "max_tokens")
    if not max_tokens or max_tokens <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    raw_messages = _get(body, "messages") or []
    if not raw_messages:
        raise ApiError(400, "messages is required")
    messages: list[dict[str, Any]] = []
    system = _system_message(_get(body, "system"))
    if system is not None:
        messages.append(system)
    names = _ToolNames()
    for message in raw_messages:
        messages.extend(_convert_message(message or {}, names))
    options: dict[str, Any] = {"num_predict": int(max_tokens)}
    for name in ("temperature", "top_p", "top_k"):
        if _get(body, name) is not None:
            options[name] = _get(body, name)
    stops = _get(body, "stop_sequences")
    if stops:
        options["stop"] = list(stops)
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "options": options,
        "stream": bool(_get(body, "stream")),
    }
    tools = [_convert_tool(tool or {}) for tool in _get(body, "tools") or ()]
    choice = _get(body, "tool_choice")
    if tools and not (isinstance(choice, Mapping) and _get(choice, "type") == "none"):
        out["tools"] = tools
    think = _think(body)
    if think is not None:
        out["think"] = think
    return out


def wants_stream(body: Mapping[str, Any]) -> bool:
    """``stream`` of a Messages body (absent ⇒ not streamed)."""
    return bool(isinstance(body, Mapping) and _get(body, "stream"))


def _length(value: Any) -> int:
    """Characters of a string or of the text in content blocks (tool blocks count as
    their JSON; images count nothing)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return len(orjson.dumps(value))
    total = 0
    for block in value if isinstance(value, list) else ():
        if not isinstance(block, Mapping):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                total += len(block[key])
        if block.get("type") in ("tool_use", "tool_result"):
            total += len(orjson.dumps(block))
    return total


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """A rough prompt size (characters / 4, at least 1), for ``message_start``: the
    real count only comes with the final record (Ollama estimates the same way)."""
    total = _length(_get(body, "system"))
    for message in _get(body, "messages") or ():
        if isinstance(message, Mapping):
            total += len(str(_get(message, "role") or ""))
            total += _length(_get(message, "content"))
    for tool in _get(body, "tools") or ():
        if isinstance(tool, Mapping):
            total += _length(_get(tool, "name")) + _length(_get(tool, "description"))
            total += _length(_get(tool, "input_schema"))
    return max(1, total // 4)

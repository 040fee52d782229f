"""OpenAI request bodies (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``) turned into native Ollama bodies, the way Ollama's own openai layer
does (OLLAMA-API.md §10).

Type errors are worded as Go's decoder words them for the structs of Ollama's openai
package. Errors are :class:`~olol.api.errors.ApiError`. The deliberate differences from
Ollama are listed in :mod:`olol.api.openai_compat`, which re-exports this module's public
names.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from olol.api import gojson
from olol.api.errors import ApiError

#: Data-URL prefixes Ollama accepts for images (the OpenAI layers share them).
IMAGE_PREFIXES = ("data:;base64,",) + tuple(
    f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp")
)
#: Reasoning effort -> Ollama's think value (chat completions and Responses alike).
REASONING_LEVELS = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}

# Request structs of Ollama's openai package, for Go-worded type errors.
_STRUCTS: dict[str, dict[str, str]] = {
    **gojson.API_STRUCTS,
    "openai.ChatCompletionRequest": {
        "model": "string",
        "messages": "[]openai.Message",
        "stream": "bool",
        "stream_options": "*openai.StreamOptions",
        "max_tokens": "*int",
        "max_completion_tokens": "*int",
        "seed": "*int",
        "stop": "interface {}",
        "temperature": "*float64",
        "frequency_penalty": "*float64",
        "presence_penalty": "*float64",
        "top_p": "*float64",
        "response_format": "*openai.ResponseFormat",
        "tools": "[]api.Tool",
        "reasoning": "*openai.Reasoning",
        "reasoning_effort": "*string",
        "logprobs": "*bool",
        "top_logprobs": "int",
        "_debug_render_only": "bool",
    },
    "openai.Message": {
        "role": "string",
        "content": "interface {}",
        "reasoning": "string",
        "tool_calls": "[]openai.ToolCall",
        "name": "string",
        "tool_call_id": "string",
    },
    "openai.ToolCall": {
        "id": "string",
        "index": "int",
        "type": "string",
        "function": "openai.ToolCallFunction",
    },
    "openai.ToolCallFunction": {"name": "string", "arguments": "string"},
    "openai.StreamOptions": {"include_usage": "bool"},
    "openai.ResponseFormat": {"type": "string", "json_schema": "*openai.JsonSchema"},
    "openai.JsonSchema": {"schema": "json.RawMessage"},
    "openai.Reasoning": {"effort": "string"},
    "openai.CompletionRequest": {
        "model": "string",
        "prompt": "string",
        "frequency_penalty": "float64",
        "max_tokens": "*int",
        "presence_penalty": "float64",
        "seed": "*int",
        "stop": "interface {}",
        "stream": "bool",
        "stream_options": "*openai.StreamOptions",
        "temperature": "*float64",
        "top_p": "float64",
        "suffix": "string",
        "logprobs": "*int",
        "_debug_render_only": "bool",
    },
    "openai.EmbedRequest": {
        "input": "interface {}",
        "model": "string",
        "dimensions": "int",
        "encoding_format": "string",
    },
}


def _typed(body: Any, gotype: str) -> None:
    if not isinstance(body, Mapping):
        raise ApiError(
            400,
            f"json: cannot unmarshal {gojson.json_kind(body)} into Go value of type {gotype}",
        )
    try:
        gojson.check_struct(body, gotype, structs=_STRUCTS)
    except gojson.GoDecodeError as exc:
        raise ApiError(400, str(exc)) from None


def _get(body: Mapping[str, Any], name: str) -> Any:
    return gojson.field_value(body, name)


def _go_type_name(value: Any) -> str:
    """Go's ``%T`` of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "[]interface {}" if isinstance(value, list) else "string"


def _require_model(body: Mapping[str, Any]) -> str:
    model = _get(body, "model")
    if not model:
        raise ApiError(400, "model is required")
    return model


def include_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streamed answer must end with a usage chunk (``stream_options``)."""
    options = _get(body, "stream_options") if isinstance(body, Mapping) else None
    return bool(isinstance(options, Mapping) and _get(options, "include_usage"))


def wants_stream(body: Mapping[str, Any]) -> bool:
    """``stream`` of an OpenAI body: absent means *not* streamed (unlike native routes)."""
    return bool(isinstance(body, Mapping) and _get(body, "stream"))


def _tool_calls_from_openai(calls: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for call in calls:
        function = _get(call, "function") or {}
        arguments = _get(function, "arguments") or ""
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            raise ApiError(400, "invalid tool call arguments") from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "invalid tool call arguments")
        item: dict[str, Any] = {
            "function": {"name": _get(function, "name") or "", "arguments": parsed}
        }
        if _get(call, "id"):
            item["id"] = _get(call, "id")
        converted.append(item)
    return converted


def _tool_name_for(messages: list[Mapping[str, Any]], call_id: str) -> str:
    for message in reversed(messages):  # last one wins on duplicate ids
        for call in _get(message, "tool_calls") or ():
            if _get(call, "id") == call_id:
                return _get(_get(call, "function") or {}, "name") or ""
    return ""


def _image_from_url(url: str) -> str:
    for prefix in IMAGE_PREFIXES:
        if url.startswith(prefix):
            data = url[len(prefix) :]
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid message format") from None
            return data
    raise ApiError(400, "invalid image input")


def _content_parts(role: str, parts: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise ApiError(400, "invalid message format")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, "invalid message format")
            out.append({"role": role, "content": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise ApiError(400, "invalid message format")
            out.append({"role": role, "content": "", "images": [_image_from_url(url)]})
        elif kind == "input_audio":
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, Mapping) else None
            if not isinstance(data, str):
                raise ApiError(400, "invalid message format")
            out.append({"role": role, "content": "", "images": [data]})
        else:
            raise ApiError(400, "invalid message format")
    return out


def _messages_to_ollama(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    for message in messages:
        if message is None:
            message = {}  # Go decodes a null element into an empty Message
        role = _get(message, "role") or ""
        content = _get(message, "content")
        calls = _get(message, "tool_calls")
        reasoning = _get(message, "reasoning") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = _get(message, "name") or ""
            if not tool_name and _get(message, "tool_call_id"):
                tool_name = _tool_name_for(messages, _get(message, "tool_call_id"))
        if isinstance(content, str):
            produced = [{"role": role, "content": content}]
        elif isinstance(content, list):
            produced = _content_parts(role, content)
        elif calls is not None:
            produced = [{"role": role, "content": ""}]
        else:
            raise ApiError(400, f"invalid message content type: {_go_type_name(content)}")
        if produced:
            last = produced[-1]
            if calls:
                last["tool_calls"] = _tool_calls_from_openai(calls)
            if reasoning:
                last["thinking"] = reasoning
            if tool_name:
                last["tool_name"] = tool_name
        converted.extend(produced)
    return converted


def _stop_option(stop: Any, *, strict: bool) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        stops = []
        for item in stop:
            if isinstance(item, str):
                stops.append(item)
            elif strict:
                raise ApiError(400, f"invalid type for 'stop' field: {_go_type_name(item)}")
        return stops
    return None


def _sampling_options(body: Mapping[str, Any], *, strict_stop: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stops = _stop_option(_get(body, "stop"), strict=strict_stop)
    if stops is not None:
        options["stop"] = stops
    max_tokens = _get(body, "max_tokens")
    if max_tokens is None:
        max_tokens = _get(body, "max_completion_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    temperature = _get(body, "temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    if _get(body, "seed") is not None:
        options["seed"] = _get(body, "seed")
    for key in ("frequency_penalty", "presence_penalty"):
        if _get(body, key) is not None:
            options[key] = _get(body, key)
    top_p = _get(body, "top_p")
    options["top_p"] = 1.0 if not top_p else top_p
    return options


def _think_from(body: Mapping[str, Any]) -> Any:
    reasoning = _get(body, "reasoning")
    effort = _get(reasoning, "effort") if isinstance(reasoning, Mapping) else None
    if not effort:
        effort = _get(body, "reasoning_effort")
    if not effort:
        return None
    if effort not in REASONING_LEVELS:
        raise ApiError(
            400,
            f'invalid reasoning value: \'{effort}\' (must be "none", "minimal", "low", '
            '"medium", "high", "max", "xhigh", or "ultra")',
        )
    return REASONING_LEVELS[effort]


def _format_from(response_format: Any) -> Any:
    if not isinstance(response_format, Mapping):
        return None
    kind = str(_get(response_format, "type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = _get(response_format, "json_schema")
        if isinstance(schema, Mapping):
            return _get(schema, "schema")
    return None


def chat_completion_to_ollama(body: Any) -> dict[str, Any]:
    """``POST /v1/chat/completions`` body → native ``/api/chat`` body.

    :raises ApiError: 400 (``invalid_request_error``) for type errors, missing model,
        empty messages (``[] is too short - 'messages'``), bad content parts, images that
        are not base64 data URLs, bad tool-call arguments, unknown reasoning effort.
    """
    _typed(body, "openai.ChatCompletionRequest")
    messages = _get(body, "messages") or []
    if not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    model = _require_model(body)
    out: dict[str, Any] = {
        "model": model,
        "messages": _messages_to_ollama(messages),
        "options": _sampling_options(body, strict_stop=False),
        "stream": wants_stream(body),
    }
    fmt = _format_from(_get(body, "response_format"))
    if fmt is not None:
        out["format"] = fmt
    tools = _get(body, "tools")
    if tools and _get(body, "tool_choice") != "none":
        out["tools"] = tools
    think = _think_from(body)
    if think is not None:
        out["think"] = think
    if _get(body, "logprobs"):
        out["logprobs"] = True
        if _get(body, "top_logprobs"):
            out["top_logprobs"] = _get(body, "top_logprobs")
    if _get(body, "_debug_render_only"):
        out["_debug_render_only"] = True
    return out


def completion_to_ollama(body: Any) -> dict[str, Any]:
    """``POST /v1/completions`` body → native ``/api/generate`` body (prompt must be a
    string; a non-string ``stop`` entry is a 400)."""
    _typed(body, "openai.CompletionRequest")
    model = _require_model(body)
    options = _sampling_options(body, strict_stop=True)
    options.setdefault("frequency_penalty", 0.0)
    options.setdefault("presence_penalty", 0.0)
    out: dict[str, Any] = {
        "model": model,
        "prompt": _get(body, "prompt") or "",
        "options": options,
        "stream": wants_stream(body),
    }
    if _get(body, "suffix"):
        out["suffix"] = _get(body, "suffix")
    logprobs = _get(body, "logprobs")
    if logprobs is not None:
        out["logprobs"] = True
        out["top_logprobs"] = logprobs
    if _get(body, "_debug_render_only"):
        out["_debug_render_only"] = True
    return out


def embedding_encoding_format(body: Mapping[str, Any]) -> str:
    """``float`` or ``base64`` (lower-cased; absent ⇒ ``float``)."""
    value = _get(body, "encoding_format") if isinstance(body, Mapping) else None
    return str(value).lower() if value else "float"


def embeddings_to_ollama(body: Any) -> dict[str, Any]:
    """``POST /v1/embeddings`` body → native ``/api/embed`` body.

    :raises ApiError: 400 for a bad ``encoding_format``, ``invalid input`` for null or
        ``[]``, ``invalid input type`` for token arrays or other non-string input.
    """
    _typed(body, "openai.EmbedRequest")
    encoding = _get(body, "encoding_format")
    if encoding and str(encoding).lower() not in ("float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
        )
    value = _get(body, "input")
    if value == "":
        value = [""]
    if value is None or value == []:
        raise ApiError(400, "invalid input")
    if not isinstance(value, str) and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        raise ApiError(400, "invalid input type")
    model = _require_model(body)
    out: dict[str, Any] = {"model": model, "input": value}
    if _get(body, "dimensions"):
        out["dimensions"] = _get(body, "dimensions")
    return out

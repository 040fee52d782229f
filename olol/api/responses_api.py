"""The OpenAI Responses API (``POST /v1/responses``), stateless, translated the way
Ollama's own openai layer does (``openai/responses.go``, ``middleware/openai.go``
``ResponsesMiddleware``; Ollama serves it since 0.13.3).

A Responses request becomes a native ``/api/chat`` body (:func:`responses_to_ollama`)
that goes through the queue like any other chat; the native answer comes back as a
``response`` object or, streamed, as typed server-sent events
(:mod:`olol.api.responses_answers`: ``response.created``,
``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``, ...,
``response.completed``; ``response.failed`` when the stream fails after it started).
Errors are :class:`~olol.api.errors.ApiError` in OpenAI's shape.

Field mapping (request):

* ``instructions`` → a first ``system`` message; ``input`` as a string → one ``user``
  message; ``input`` items: ``message`` (content string or ``input_text`` /
  ``output_text`` / ``input_image`` parts; ``input_image.image_url`` must be a base64
  data URL) → a message of that role; ``function_call`` → ``tool_calls`` of an
  ``assistant`` message (``call_id`` → ``id``, ``arguments`` parsed to an object);
  ``function_call_output`` → a ``tool`` message (``tool_call_id``); ``reasoning``
  (``encrypted_content``) → ``thinking`` of the next assistant message;
* ``temperature`` (default 1.0), ``top_p``, ``max_output_tokens`` → ``options``
  ``temperature``, ``top_p``, ``num_predict``;
* ``reasoning.effort`` → ``think`` (``none`` ⇒ false, ``minimal`` ⇒ low,
  ``xhigh``/``ultra`` ⇒ max);
* ``tools`` (``function``; ``namespace`` expanded to ``<ns>.<name>`` functions) →
  function tools; ``text.format`` ``json_schema`` → ``format`` = its schema;
* ``stream`` (default false).

Field mapping (answer): thinking → a ``reasoning`` output item (summary text and
``encrypted_content``); tool calls → ``function_call`` items (then no message item);
else content → one ``message`` item with one ``output_text`` part;
``prompt_eval_count`` / ``eval_count`` → ``usage.input_tokens`` / ``output_tokens``.
The request's settings are echoed (``instructions``, ``tools``, ``temperature``,
``top_p``, ``truncation``, ``text``, ``reasoning``, ``max_output_tokens``).

Deliberate differences from Ollama:

* ``previous_response_id`` (and ``conversation``) is a 400: nothing is stored, and
  silently answering without the earlier turns would be wrong;
* the built-in ``web_search`` tool and other non-function tool types are a 400
  (Ollama runs web search through ollama.com);
* the ``developer`` role becomes ``system`` (what it means; chat templates know no
  ``developer``), and a ``tool`` message also carries ``tool_name``;
* ``text.format`` ``json_object`` → ``format: "json"`` (Ollama ignores it);
* ``tool_choice: "none"`` drops the tools (Ollama ignores ``tool_choice``);
* an input that yields no message at all is a 400 ``input is required`` (Ollama would
  only load the model);
* a streamed answer's text is closed properly when tool calls follow it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from olol.api import gojson
from olol.api.errors import ApiError
from olol.api.openai_requests import IMAGE_PREFIXES, REASONING_LEVELS

_STRUCTS: dict[str, dict[str, str]] = {
    **gojson.API_STRUCTS,
    "openai.ResponsesRequest": {
        "model": "string",
        "background": "bool",
        "conversation": "json.RawMessage",
        "include": "[]string",
        "input": "interface {}",
        "instructions": "string",
        "max_output_tokens": "*int",
        "reasoning": "openai.ResponsesReasoning",
        "temperature": "*float64",
        "text": "*openai.ResponsesText",
        "top_p": "*float64",
        "truncation": "*string",
        "tools": "[]openai.ResponsesTool",
        "stream": "*bool",
    },
    "openai.ResponsesReasoning": {
        "effort": "string",
        "generate_summary": "string",
        "summary": "string",
    },
    "openai.ResponsesText": {"format": "*openai.ResponsesTextFormat"},
    "openai.ResponsesTextFormat": {
        "type": "string",
        "name": "string",
        "schema": "json.RawMessage",
        "strict": "*bool",
    },
    "openai.ResponsesTool": {
        "type": "string",
        "name": "string",
        "description": "*string",
        "strict": "*bool",
        "parameters": "map[string]interface {}",
        "tools": "[]openai.ResponsesTool",
    },
    "openai.ResponsesFunctionCall": {
        "id": "string",
        "type": "string",
        "call_id": "string",
        "name": "string",
        "arguments": "string",
    },
    "openai.ResponsesFunctionCallOutput": {
        "type": "string",
        "call_id": "string",
        "output": "interface {}",
    },
    "openai.ResponsesReasoningInput": {
        "id": "string",
        "type": "string",
        "encrypted_content": "string",
    },
    "openai.ResponsesInputMessage": {
        "type": "string",
        "role": "string",
        "content": "interface {}",
    },
    "openai.ResponsesContentType": {"type": "string"},
    "openai.ResponsesTextContent": {"type": "string", "text": "string"},
    "openai.ResponsesImageContent": {
        "type": "string",
        "detail": "string",
        "file_id": "string",
        "image_url": "string",
    },
}

def _get(body: Mapping[str, Any], name: str) -> Any:
    return gojson.field_value(body, name)


def _check(body: Any, gotype: str, where: str = "") -> None:
    if not isinstance(body, Mapping):
        raise ApiError(
            400,
            f"{where}json: cannot unmarshal {gojson.json_kind(body)} into Go value of type "
            f"{gotype}",
        )
    try:
        gojson.check_struct(body, gotype, structs=_STRUCTS)
    except gojson.GoDecodeError as exc:
        raise ApiError(400, f"{where}{exc}") from None


def wants_stream(body: Mapping[str, Any]) -> bool:
    """``stream`` of a Responses body (absent ⇒ not streamed)."""
    return bool(isinstance(body, Mapping) and _get(body, "stream"))


# --- request -----------------------------------------------------------------------------


def _image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        raise ApiError(
            400,
            "image URLs are not currently supported, please use base64 encoded data instead",
        )
    for prefix in IMAGE_PREFIXES:
        if url.startswith(prefix):
            data = url[len(prefix) :]
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                break
            return data
    raise ApiError(400, "invalid image input")


def _content_parts(content: Any, where: str, label: str = "content") -> list[Mapping[str, Any]]:
    """A message's content (or a function output, ``label="output"``) as typed parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"{where}{label} must be a string or array: json: cannot unmarshal "
            f"{gojson.json_kind(content)} into Go value of type []json.RawMessage",
        )
    parts = []
    for index, part in enumerate(content):
        inner = f"{where}{label}[{index}]: "
        _check(part, "openai.ResponsesContentType", inner)
        kind = _get(part, "type") or ""
        if kind in ("input_text", "output_text"):
            _check(part, "openai.ResponsesTextContent", inner)
        elif kind == "input_image":
            _check(part, "openai.ResponsesImageContent", inner)
        elif kind == "input_file":
            raise ApiError(400, "file inputs are not currently supported")
        else:
            raise ApiError(400, f"{inner}unknown content type: {kind}")
        parts.append(part)
    return parts


def _text_and_images(parts: list[Mapping[str, Any]]) -> tuple[str, list[str]]:
    text: list[str] = []
    images: list[str] = []
    for part in parts:
        kind = _get(part, "type")
        if kind in ("input_text", "output_text"):
            text.append(_get(part, "text") or "")
        elif kind == "input_image" and _get(part, "image_url"):
            images.append(_image(_get(part, "image_url")))
    return "".join(text), images


def _arguments(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            gojson.scan_first_value(text.encode())
            reason = "invalid character after top-level value"
        except EOFError:
            reason = "unexpected end of JSON input"
        except gojson.GoJSONSyntaxError as exc:
            reason = str(exc)
        raise ApiError(400, f"failed to parse function call arguments: {reason}") from None
    if not isinstance(value, dict):
        raise ApiError(
            400,
            "failed to parse function call arguments: json: cannot unmarshal "
            f"{gojson.json_kind(value)} into Go value of type api.ToolCallFunctionArguments",
        )
    return value


def _item_kind(item: Mapping[str, Any]) -> str:
    kind = _get(item, "type") or ""
    if not kind and _get(item, "role"):
        kind = "message"
    return kind


class _Conversation:
    """Native messages built from Responses input items (Ollama's merge rules)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pending_thinking = ""
        self.tool_names: dict[str, str] = {}

    def _last_assistant(self) -> dict[str, Any] | None:
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]
        return None

    def message(self, item: Mapping[str, Any], where: str, next_item: Any) -> None:
        role = str(_get(item, "role") or "")
        if role == "developer":
            role = "system"
        text, images = _text_and_images(_content_parts(_get(item, "content"), where))
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            message["images"] = images
        if role == "assistant" and self.pending_thinking:
            message["thinking"] = self.pending_thinking
            self.pending_thinking = ""
        # an assistant message replayed between a function_call and its output joins
        # the message holding that call, so the result follows the call it answers
        last = self._last_assistant()
        if (
            role == "assistant"
            and last is not None
            and isinstance(next_item, Mapping)
            and _item_kind(next_item) == "function_call_output"
            and any(
                call.get("id") == _get(next_item, "call_id")
                for call in last.get("tool_calls") or ()
            )
        ):
            if last["content"] and text:
                last["content"] += "\n"
            last["content"] += text
            if images:
                last.setdefault("images", []).extend(images)
            if message.get("thinking"):
                last["thinking"] = message["thinking"]
            return
        self.messages.append(message)

    def function_call(self, item: Mapping[str, Any]) -> None:
        name = _get(item, "name") or ""
        call: dict[str, Any] = {
            "function": {"name": name, "arguments": _arguments(_get(item, "arguments") or "")}
        }
        call_id = _get(item, "call_id") or ""
        if call_id:
            call["id"] = call_id
            self.tool_names[call_id] = name
        target = self._last_assistant()
        if target is None:
            target = {"role": "assistant", "content": ""}
            self.messages.append(target)
        target.setdefault("tool_calls", []).append(call)
        if self.pending_thinking:
            target["thinking"] = self.pending_thinking
            self.pending_thinking = ""

    def function_call_output(self, item: Mapping[str, Any], where: str) -> None:
        output = _get(item, "output")
        images: list[str]
        if isinstance(output, str) or output is None:
            text, images = output or "", []
        else:
            text, images = _text_and_images(_content_parts(output, where, "output"))
        message: dict[str, Any] = {"role": "tool", "content": text}
        if images:
            message["images"] = images
        call_id = _get(item, "call_id") or ""
        if call_id:
            message["tool_call_id"] = call_id
            if self.tool_names.get(call_id):
                message["tool_name"] = self.tool_names[call_id]
        self.messages.append(message)

    def finish(self) -> list[dict[str, Any]]:
        if self.pending_thinking:
            self.messages.append(
                {"role": "assistant", "content": "", "thinking": self.pending_thinking}
            )
            self.pending_thinking = ""
        return self.messages


def _input_messages(value: Any) -> list[dict[str, Any]]:
    convo = _Conversation()
    if isinstance(value, str):
        if value:
            convo.messages.append({"role": "user", "content": value})
        return convo.finish()
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(
            400,
            "input must be a string or array: json: cannot unmarshal "
            f"{gojson.json_kind(value)} into Go value of type []json.RawMessage",
        )
    for index, item in enumerate(value):
        where = f"input[{index}]: "
        if not isinstance(item, Mapping):
            raise ApiError(
                400,
                f"{where}json: cannot unmarshal {gojson.json_kind(item)} into Go value of "
                "type openai.ResponsesInputItem",
            )
        kind = _item_kind(item)
        next_item = value[index + 1] if index + 1 < len(value) else None
        if kind == "message":
            _check(item, "openai.ResponsesInputMessage", where)
            convo.message(item, where, next_item)
        elif kind == "function_call":
            _check(item, "openai.ResponsesFunctionCall", where)
            convo.function_call(item)
        elif kind == "function_call_output":
            _check(item, "openai.ResponsesFunctionCallOutput", where)
            convo.function_call_output(item, where)
        elif kind == "reasoning":
            _check(item, "openai.ResponsesReasoningInput", where)
            convo.pending_thinking = _get(item, "encrypted_content") or ""
        elif kind == "web_search_call":
            continue  # history metadata; the assistant message after it holds the result
        elif not kind:
            raise ApiError(400, f"{where}input item missing required 'type' field")
        else:
            raise ApiError(400, f"{where}unknown input item type: {orjson.dumps(kind).decode()}")
    return convo.finish()


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools:
        tool = tool or {}
        kind = _get(tool, "type") or ""
        if kind == "namespace":
            prefix = f"{_get(tool, 'name')}." if _get(tool, "name") else ""
            for member in _tools(_get(tool, "tools") or []):
                name = member["function"]["name"]
                if prefix and not name.startswith(prefix):
                    member["function"]["name"] = prefix + name
                out.append(member)
            continue
        if kind != "function":
            raise ApiError(
                400,
                f"unsupported tool type {orjson.dumps(kind).decode()}: this server runs "
                "function tools only",
            )
        function: dict[str, Any] = {"name": _get(tool, "name") or ""}
        if _get(tool, "description"):
            function["description"] = _get(tool, "description")
        if _get(tool, "parameters") is not None:
            function["parameters"] = dict(_get(tool, "parameters"))
        out.append({"type": "function", "function": function})
    return out


def _think(body: Mapping[str, Any]) -> Any:
    reasoning = _get(body, "reasoning")
    effort = _get(reasoning, "effort") if isinstance(reasoning, Mapping) else None
    if not effort:
        return None
    if effort not in REASONING_LEVELS:
        raise ApiError(
            400,
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
        )
    return REASONING_LEVELS[effort]


def _format(body: Mapping[str, Any]) -> Any:
    text = _get(body, "text")
    fmt = _get(text, "format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    kind = _get(fmt, "type")
    if kind == "json_schema":
        return _get(fmt, "schema")
    if kind == "json_object":
        return "json"
    return None


def responses_to_ollama(body: Any) -> dict[str, Any]:
    """``POST /v1/responses`` body → native ``/api/chat`` body.

    :raises ApiError: 400 for type errors, a missing model, ``previous_response_id`` or
        ``conversation`` (stateless), bad input items or content parts, images that are
        not base64 data URLs, unparseable function-call arguments, unknown reasoning
        effort, tools that are not functions, and an input with no message.
    """
    _check(body, "openai.ResponsesRequest")
    if _get(body, "previous_response_id") or _get(body, "conversation"):
        raise ApiError(
            400,
            "previous_response_id and conversation are not supported: this server is "
            "stateless; send the whole conversation in input",
        )
    model = _get(body, "model")
    if not model:
        raise ApiError(400, "model is required")
    messages: list[dict[str, Any]] = []
    if _get(body, "instructions"):
        messages.append({"role": "system", "content": _get(body, "instructions")})
    messages.extend(_input_messages(_get(body, "input")))
    if not any(m["role"] != "system" for m in messages):
        raise ApiError(400, "input is required")
    options: dict[str, Any] = {}
    temperature = _get(body, "temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    if _get(body, "top_p") is not None:
        options["top_p"] = _get(body, "top_p")
    if _get(body, "max_output_tokens") is not None:
        options["num_predict"] = _get(body, "max_output_tokens")
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "options": options,
        "stream": wants_stream(body),
    }
    tools = _tools(_get(body, "tools") or [])
    if tools and _get(body, "tool_choice") != "none":
        out["tools"] = tools
    fmt = _format(body)
    if fmt is not None:
        out["format"] = fmt
    think = _think(body)
    if think is not None:
        out["think"] = think
    return out

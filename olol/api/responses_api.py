"""The OpenAI Responses API (``POST /v1/responses``), stateless, translated the way
Ollama's own openai layer does (``openai/responses.go``, ``middleware/openai.go``
``ResponsesMiddleware``; Ollama serves it since 0.13.3).

A Responses request becomes a native ``/api/chat`` body (:func:`responses_to_ollama`)
that goes through the queue like any other chat; the native answer comes back as a
``response`` object (:func:`ollama_chat_to_response`) or, streamed, as typed
server-sent events (:class:`ResponsesStreamTranslator`: ``response.created``,
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

SSE_CONTENT_TYPE = "text/event-stream"

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

_REASONING = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_IMAGE_PREFIXES = ("data:;base64,",) + tuple(
    f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp")
)


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
    for prefix in _IMAGE_PREFIXES:
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
    if effort not in _REASONING:
        raise ApiError(
            400,
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
        )
    return _REASONING[effort]


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


# --- answers -----------------------------------------------------------------------------


def _request_echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request settings a ``response`` object repeats."""
    tools = []
    for tool in _get(body, "tools") or ():
        if isinstance(tool, Mapping):
            tools.append({
                "type": _get(tool, "type"),
                "name": _get(tool, "name"),
                "description": _get(tool, "description"),
                "strict": _get(tool, "strict"),
                "parameters": _get(tool, "parameters"),
            })
    text_format: dict[str, Any] = {"type": "text"}
    text = _get(body, "text")
    fmt = _get(text, "format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping):
        text_format = {"type": _get(fmt, "type") or ""}
        for key in ("name", "schema", "strict"):
            if _get(fmt, key) is not None and _get(fmt, key) != "":
                text_format[key] = _get(fmt, key)
    reasoning_in = _get(body, "reasoning")
    reasoning = None
    if isinstance(reasoning_in, Mapping) and (
        _get(reasoning_in, "effort") or _get(reasoning_in, "summary")
    ):
        reasoning = {
            "effort": _get(reasoning_in, "effort") or None,
            "summary": _get(reasoning_in, "summary") or None,
        }
    temperature = _get(body, "temperature")
    top_p = _get(body, "top_p")
    return {
        "instructions": _get(body, "instructions") or None,
        "tools": tools,
        "tool_choice": "auto",
        "truncation": _get(body, "truncation") or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": text_format},
        "top_p": 1.0 if top_p is None else top_p,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": 1.0 if temperature is None else temperature,
        "reasoning": reasoning,
        "max_output_tokens": _get(body, "max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": bool(_get(body, "background")),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _response_object(
    response_id: str,
    model: str,
    body: Mapping[str, Any],
    *,
    status: str,
    created_at: int,
    completed_at: int | None,
    output: list[Any],
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    echo = _request_echo(body)
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "completed_at": completed_at,
        "status": status,
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": echo.pop("instructions"),
        "output": output,
        "error": error,
        **echo,
        "usage": usage,
    }


def _usage(record: Mapping[str, Any]) -> dict[str, Any]:
    prompt = int(record.get("prompt_eval_count") or 0)
    completion = int(record.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _arguments_text(call: Mapping[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    return orjson.dumps(arguments if isinstance(arguments, dict) else {}).decode()


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": thinking,
    }


def _call_item(item_id: str, call: Mapping[str, Any], call_id: str, status: str,
               arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": (call.get("function") or {}).get("name") or "",
        "arguments": arguments,
    }


def ollama_chat_to_response(
    record: Mapping[str, Any],
    model: str,
    response_id: str,
    body: Mapping[str, Any],
    *,
    created_at: int,
    completed_at: int,
) -> dict[str, Any]:
    """A non-streamed native chat answer → a ``response`` object (Ollama's
    ``ToResponse``)."""
    message = record.get("message") or {}
    base = response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        output.append(_reasoning_item(f"rs_{base}", message["thinking"]))
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, Mapping)]
    for index, call in enumerate(calls):
        call_id = str(call.get("id") or f"call_{base}_{index}")
        output.append(
            _call_item(f"fc_{base}_{index}", call, call_id, "completed", _arguments_text(call))
        )
    if not calls:
        output.append(_message_item(f"msg_{base}", message.get("content") or ""))
    return _response_object(
        response_id, model, body, status="completed", created_at=created_at,
        completed_at=completed_at, output=output, usage=_usage(record),
    )


def sse_event(name: str, data: Any) -> bytes:
    """One named server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ResponsesStreamTranslator:
    """Turns a native ``/api/chat`` stream into Responses streaming events (Ollama's
    ``ResponsesStreamConverter``), each with its ``sequence_number``.

    :param model: the model string the client sent.
    :param response_id: ``resp_...``; item ids derive from it.
    :param body: the Responses request (its settings are echoed in every response
        object).
    :param created_at: unix seconds of the response's creation.
    :param clock: unix seconds now (for ``completed_at``).
    """

    def __init__(self, model: str, response_id: str, body: Mapping[str, Any],
                 created_at: int, clock: Any) -> None:
        self.model = model
        self.response_id = response_id
        self.body = body
        self.created_at = int(created_at)
        self.clock = clock
        self._base = response_id.removeprefix("resp_")
        self._seq = 0
        self._started = False
        self._index = 0  # output index of the next item
        self._done_items: list[dict[str, Any]] = []
        self._reasoning: tuple[str, int, list[str]] | None = None  # id, index, pieces
        self._message: tuple[str, int, list[str]] | None = None
        self._calls = 0
        self._call_ids: set[str] = set()

    def _event(self, name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = {"type": name, **data, "sequence_number": self._seq}
        self._seq += 1
        return name, data

    def _response(self, status: str, output: list[Any], usage: Any = None,
                  error: Any = None) -> dict[str, Any]:
        completed = int(self.clock()) if status in ("completed", "failed") else None
        return _response_object(
            self.response_id, self.model, self.body, status=status,
            created_at=self.created_at, completed_at=completed, output=output, usage=usage,
            error=error,
        )

    def _start(self) -> list[tuple[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", {"response": self._response("in_progress", [])}),
            self._event("response.in_progress", {"response": self._response("in_progress", [])}),
        ]

    def _finish_reasoning(self) -> list[tuple[str, Any]]:
        if self._reasoning is None:
            return []
        item_id, index, pieces = self._reasoning
        self._reasoning = None
        thinking = "".join(pieces)
        item = _reasoning_item(item_id, thinking)
        self._done_items.append(item)
        return [
            self._event("response.reasoning_summary_text.done", {
                "item_id": item_id, "output_index": index, "summary_index": 0,
                "text": thinking,
            }),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _finish_message(self) -> list[tuple[str, Any]]:
        if self._message is None:
            return []
        item_id, index, pieces = self._message
        self._message = None
        text = "".join(pieces)
        item = _message_item(item_id, text)
        self._done_items.append(item)
        common = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", {**common, "text": text, "logprobs": []}),
            self._event("response.content_part.done", {**common, "part": _text_part(text)}),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _thinking(self, thinking: str) -> list[tuple[str, Any]]:
        events = self._finish_message()
        if self._reasoning is None:
            item_id = f"rs_{self._base}_{self._index}"
            self._reasoning = (item_id, self._index, [])
            events.append(self._event("response.output_item.added", {
                "output_index": self._index,
                "item": {"id": item_id, "type": "reasoning", "summary": []},
            }))
            self._index += 1
        item_id, index, pieces = self._reasoning
        pieces.append(thinking)
        events.append(self._event("response.reasoning_summary_text.delta", {
            "item_id": item_id, "output_index": index, "summary_index": 0, "delta": thinking,
        }))
        return events

    def _text(self, text: str) -> list[tuple[str, Any]]:
        events = self._finish_reasoning()
        if self._message is None:
            item_id = f"msg_{self._base}" if self._index == 0 else f"msg_{self._base}_{self._index}"
            self._message = (item_id, self._index, [])
            events.append(self._event("response.output_item.added", {
                "output_index": self._index, "item": _message_item(item_id, "", "in_progress"),
            }))
            events.append(self._event("response.content_part.added", {
                "item_id": item_id, "output_index": self._index, "content_index": 0,
                "part": _text_part(""),
            }))
            self._index += 1
        item_id, index, pieces = self._message
        pieces.append(text)
        events.append(self._event("response.output_text.delta", {
            "item_id": item_id, "output_index": index, "content_index": 0, "delta": text,
            "logprobs": [],
        }))
        return events

    def _tool_call(self, call: Mapping[str, Any]) -> list[tuple[str, Any]]:
        call_id = str(call.get("id") or f"call_{self._base}_{self._calls}")
        if call_id in self._call_ids:
            return []
        self._call_ids.add(call_id)
        events = self._finish_reasoning() + self._finish_message()
        item_id = f"fc_{self._base}_{self._calls}"
        self._calls += 1
        index = self._index
        self._index += 1
        arguments = _arguments_text(call)
        item = _call_item(item_id, call, call_id, "completed", arguments)
        self._done_items.append(item)
        common = {"item_id": item_id, "output_index": index}
        return events + [
            self._event("response.output_item.added", {
                "output_index": index,
                "item": _call_item(item_id, call, call_id, "in_progress", ""),
            }),
            self._event("response.function_call_arguments.delta", {**common, "delta": arguments}),
            self._event("response.function_call_arguments.done", {
                **common, "arguments": arguments,
            }),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def feed(self, record: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The ``(event name, data)`` pairs to send for one native record, in order."""
        events = self._start()
        message = record.get("message") or {}
        if message.get("thinking"):
            events += self._thinking(message["thinking"])
        if message.get("content") and not self._calls:
            events += self._text(message["content"])
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping):
                events += self._tool_call(call)
        if record.get("done"):
            events += self._finish_reasoning() + self._finish_message()
            response = self._response("completed", list(self._done_items), _usage(record))
            events.append(self._event("response.completed", {"response": response}))
        return events

    def feed_sse(self, record: Mapping[str, Any]) -> bytes:
        """:meth:`feed`, framed as server-sent events."""
        return b"".join(sse_event(name, data) for name, data in self.feed(record))

    def failed_sse(self, message: str, status: int = 500) -> bytes:
        """``response.failed`` after the stream started (HTTP status already 200)."""
        code = "server_error" if status >= 500 else "invalid_request_error"
        events = self._start()
        events.append(self._event("response.failed", {
            "response": self._response(
                "failed", list(self._done_items), None,
                error={"code": code, "message": str(message)},
            )
        }))
        return b"".join(sse_event(name, data) for name, data in events)

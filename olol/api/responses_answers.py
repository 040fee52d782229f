"""Native chat answers turned into OpenAI Responses API answers, the way Ollama's
openai layer does (``ToResponse``, ``ResponsesStreamConverter``): whole ``response``
objects, and the typed streamed events (``response.created``, ``response.in_progress``,
``response.output_item.added`` / ``.done``, ``response.content_part.added`` /
``.done``, ``response.output_text.delta`` / ``.done``, reasoning summary and
function-call argument events, ``response.completed``; ``response.failed`` when a stream
fails after it started). The field mapping and the deliberate differences from Ollama
are listed in :mod:`olol.api.responses_api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from olol.api.gojson import field_value as _get

SSE_CONTENT_TYPE = "text/event-stream"


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
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
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

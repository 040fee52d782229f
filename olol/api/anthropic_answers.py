"""Native chat answers turned into Anthropic Messages API answers, the way Ollama's
``anthropic`` package does (``ToMessagesResponse``, ``StreamConverter``): whole
``message`` objects, and the streamed events (``message_start``, ``ping``,
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``,
``message_delta``, ``message_stop``; ``error`` when a stream fails after it started).
The field mapping and the deliberate differences from Ollama are listed in
:mod:`olol.api.anthropic`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from olol.api.errors import anthropic_error_body

SSE_CONTENT_TYPE = "text/event-stream"


def stop_reason(done_reason: Any, has_tool_calls: bool) -> str | None:
    """Native ``done_reason`` → Anthropic ``stop_reason`` (Ollama's ``mapStopReason``)."""
    if has_tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else None


def _usage(record: Mapping[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": int(record.get("prompt_eval_count") or 0),
        "output_tokens": int(record.get("eval_count") or 0),
    }


class _CallIds:
    """Ids for tool calls that arrive without one."""

    def __init__(self) -> None:
        self.count = 0

    def of(self, call: Mapping[str, Any]) -> str:
        if call.get("id"):
            return str(call["id"])
        self.count += 1
        return f"toolu_{self.count:02d}"


def _tool_use(call: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": function.get("name") or "",
        "input": arguments if isinstance(arguments, dict) else {},
    }


def ollama_chat_to_message(
    record: Mapping[str, Any], model: str, message_id: str
) -> dict[str, Any]:
    """A non-streamed native chat answer → an Anthropic ``message``."""
    message = record.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    ids = _CallIds()
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, Mapping)]
    content.extend(_tool_use(call, ids.of(call)) for call in calls)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(record.get("done_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": _usage(record),
    }


def sse_event(name: str, data: Any) -> bytes:
    """One named server-sent event: ``event: <name>\\ndata: <json>\\n\\n``."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_error_event(message: str, status: int = 500) -> bytes:
    """An error after the stream has started (status already 200): an ``error`` event,
    which the anthropic SDK raises as an ``APIStatusError``."""
    return sse_event("error", anthropic_error_body(status, message))


class MessagesStreamTranslator:
    """Turns a native ``/api/chat`` stream into Anthropic's streaming events.

    At most one content block is open at a time: a block of another kind (thinking,
    text, tool use) closes the open one and opens its own at the next index.

    :param model: the model string the client sent.
    :param message_id: ``msg_...``, the same in ``message_start`` and nowhere else.
    :param estimated_input_tokens: ``usage.input_tokens`` of ``message_start`` when the
        first record has no prompt count (it usually has none).
    """

    def __init__(self, model: str, message_id: str, estimated_input_tokens: int = 0) -> None:
        self.model = model
        self.message_id = message_id
        self.estimated_input_tokens = int(estimated_input_tokens)
        self._started = False
        self._open: str | None = None  # kind of the open block
        self._index = -1
        self._sent_calls: set[str] = set()
        self._ids = _CallIds()

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[tuple[str, Any]]:
        events = self._close_block()
        self._index += 1
        self._open = kind
        events.append(
            ("content_block_start",
             {"type": "content_block_start", "index": self._index, "content_block": block})
        )
        return events

    def _close_block(self) -> list[tuple[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> tuple[str, Any]:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def feed(self, record: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The ``(event name, data)`` pairs to send for one native record, in order."""
        events: list[tuple[str, Any]] = []
        if not self._started:
            self._started = True
            input_tokens = int(record.get("prompt_eval_count") or 0)
            start: dict[str, Any] = {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens or self.estimated_input_tokens,
                    "output_tokens": 0,
                },
            }
            events.append(("message_start", {"type": "message_start", "message": start}))
            events.append(("ping", {"type": "ping"}))
        message = record.get("message") or {}
        thinking = message.get("thinking")
        if thinking:
            if self._open != "thinking":
                events += self._open_block(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        text = message.get("content")
        if text:
            if self._open != "text":
                events += self._open_block("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": text}))
        for call in message.get("tool_calls") or ():
            if not isinstance(call, Mapping):
                continue
            call_id = self._ids.of(call)
            if call_id in self._sent_calls:
                continue
            self._sent_calls.add(call_id)
            block = _tool_use(call, call_id)
            arguments = orjson.dumps(block["input"]).decode()
            events += self._open_block("tool_use", {**block, "input": {}})
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            events += self._close_block()
        if record.get("done"):
            events += self._close_block()
            reason = stop_reason(record.get("done_reason"), bool(self._sent_calls))
            events.append(
                ("message_delta",
                 {"type": "message_delta",
                  "delta": {"stop_reason": reason, "stop_sequence": None},
                  "usage": _usage(record)})
            )
            events.append(("message_stop", {"type": "message_stop"}))
        return events

    def feed_sse(self, record: Mapping[str, Any]) -> bytes:
        """:meth:`feed`, framed as server-sent events."""
        return b"".join(sse_event(name, data) for name, data in self.feed(record))

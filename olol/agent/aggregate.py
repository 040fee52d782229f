"""Ollama's non-streamed answer, built from the records of its streamed one.

When the coordinator asks for it (gRPC metadata ``x-olol-aggregate``), the agent
asks Ollama for a *streamed* answer to a request whose caller wants a single
object, and builds that object itself, the way Ollama's own handlers do for
``stream: false`` (``server/routes.go``: the final record, with the text
fields concatenated over every record). Meanwhile the agent can tell the
coordinator that Ollama is making progress (an empty gRPC message now and then),
which a non-streamed answer otherwise never shows until it is complete: that is
how the coordinator tells a hung node from a long generation.

What is concatenated (``shared/OLLAMA-API.md`` §3, §4):

* ``/api/generate``: ``response``, ``thinking``, ``logprobs``;
* ``/api/chat``: ``message.content``, ``message.thinking``, ``message.tool_calls``
  (every record's calls, in order), ``logprobs``.

Every other field comes from the final record (``done_reason``, ``context``, the
metrics, ``created_at``).
"""

from __future__ import annotations

from typing import Any

import orjson


class AggregateError(Exception):
    """Ollama sent something that is not a record of the expected stream."""


class Aggregator:
    """Accumulates one streamed answer; :meth:`add` each record, then :meth:`result`.

    :param chat: ``/api/chat`` records (``message``) rather than ``/api/generate``.
    """

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._logprobs: list[Any] = []
        self._final: dict | None = None
        self.records = 0

    def add(self, line: bytes) -> tuple[bool, str | None]:
        """Take one NDJSON record; returns ``(done, error_message)``.

        :raises AggregateError: the line is not a JSON object.
        """
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise AggregateError(f"ollama sent a record that is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise AggregateError("ollama sent a record that is not a JSON object")
        if "error" in record:
            error = record["error"]
            return False, error if isinstance(error, str) else orjson.dumps(error).decode()
        self.records += 1
        if self.chat:
            message = record.get("message")
            if isinstance(message, dict):
                self._take(message.get("content"), self._text)
                self._take(message.get("thinking"), self._thinking)
                calls = message.get("tool_calls")
                if isinstance(calls, list):
                    self._tool_calls.extend(calls)
        else:
            self._take(record.get("response"), self._text)
            self._take(record.get("thinking"), self._thinking)
        logprobs = record.get("logprobs")
        if isinstance(logprobs, list):
            self._logprobs.extend(logprobs)
        done = record.get("done") is True
        if done:
            self._final = record
        return done, None

    @staticmethod
    def _take(value: Any, into: list[str]) -> None:
        if isinstance(value, str) and value:
            into.append(value)

    @property
    def complete(self) -> bool:
        """Whether the final record (``done: true``) has arrived."""
        return self._final is not None

    def result(self) -> dict:
        """The non-streamed answer (call once the final record has arrived)."""
        if self._final is None:
            raise AggregateError("the stream has no final record")
        final = self._final
        text, thinking = "".join(self._text), "".join(self._thinking)
        out: dict[str, Any] = {}
        if self.chat:
            for key, value in final.items():
                out[key] = self._message(value, text, thinking) if key == "message" else value
            if "message" not in out:
                out["message"] = self._message({"role": "assistant"}, text, thinking)
        else:
            for key, value in final.items():
                if key == "thinking":
                    continue
                out[key] = text if key == "response" else value
                if key == "response" and thinking:
                    out["thinking"] = thinking
            if "response" not in out:
                out["response"] = text
                if thinking:
                    out["thinking"] = thinking
        if self._logprobs:
            out["logprobs"] = self._logprobs
        return out

    def result_bytes(self) -> bytes:
        return orjson.dumps(self.result())

    def _message(self, final: Any, text: str, thinking: str) -> dict:
        final = final if isinstance(final, dict) else {}
        # Go's api.Message field order: role, content, thinking, images, tool_calls, ...
        message: dict[str, Any] = {"role": final.get("role", "assistant"), "content": text}
        if thinking:
            message["thinking"] = thinking
        for key, value in final.items():
            if key in ("role", "content", "thinking", "tool_calls"):
                continue
            message[key] = value
        if self._tool_calls:
            message["tool_calls"] = self._tool_calls
        return message

"""Native Ollama answers turned into OpenAI objects, the way Ollama's own openai layer
does (OLLAMA-API.md §10): whole answers, record-by-record stream translation with
:class:`ChatStreamTranslator` / :class:`CompletionStreamTranslator`, the ``/v1/models``
listings, and server-sent-event framing (:func:`sse_event`, :data:`SSE_DONE`).

:mod:`olol.api.openai_compat` re-exports this module's public names.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from olol.api.errors import openai_error_body
from olol.api.names import DEFAULT_NAMESPACE, InvalidModelName, parse_model_name
from olol.api.streaming import RESUMED_FIELD

SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"
SYSTEM_FINGERPRINT = "fp_ollama"


def _usage(resp: Mapping[str, Any]) -> dict[str, int]:
    prompt = int(resp.get("prompt_eval_count") or 0)
    completion = int(resp.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_calls_to_openai(calls: list[Mapping[str, Any]], start: int = 0) -> list[dict]:
    out = []
    for offset, call in enumerate(calls):
        function = call.get("function") or {}
        index = function.get("index")
        out.append(
            {
                "id": call.get("id") or "",
                "index": index if isinstance(index, int) else start + offset,
                "type": "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": orjson.dumps(function.get("arguments") or {}).decode(),
                },
            }
        )
    return out


def ollama_chat_to_openai(
    resp: Mapping[str, Any], model: str, request_id: str, created: int
) -> dict[str, Any]:
    """A non-streamed native chat answer → ``chat.completion``."""
    message = resp.get("message") or {}
    calls = _tool_calls_to_openai(message.get("tool_calls") or [])
    out_message: dict[str, Any] = {
        "role": message.get("role") or "assistant",
        "content": message.get("content") or "",
    }
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    reason = "tool_calls" if calls else (resp.get("done_reason") or None)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(created),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": out_message, "finish_reason": reason}],
        "usage": _usage(resp),
    }


def _chunk(request_id: str, created: int, model: str, choices: list) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }


def ollama_chat_chunk_to_openai(
    chunk: Mapping[str, Any],
    model: str,
    request_id: str,
    created: int,
    *,
    first: bool = False,
    tool_call_index: int = 0,
) -> dict[str, Any]:
    """One native chat record → one content ``chat.completion.chunk`` (no finish reason;
    see :class:`ChatStreamTranslator` for the whole stream). ``first`` adds the role."""
    message = chunk.get("message") or {}
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    delta["content"] = message.get("content") or ""
    if message.get("thinking"):
        delta["reasoning"] = message["thinking"]
    if message.get("tool_calls"):
        delta["tool_calls"] = _tool_calls_to_openai(message["tool_calls"], tool_call_index)
    return _chunk(
        request_id, int(created), model, [{"index": 0, "delta": delta, "finish_reason": None}]
    )


class ChatStreamTranslator:
    """Turns a native ``/api/chat`` stream into ``chat.completion.chunk`` objects.

    :param model: the model string the client sent.
    :param request_id: e.g. ``chatcmpl-123``; the same for every chunk.
    :param created: unix seconds, pinned for the whole stream.
    :param include_usage: ``stream_options.include_usage``.
    """

    def __init__(self, model: str, request_id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.request_id = request_id
        self.created = int(created)
        self.include_usage = include_usage
        self._sent_any = False
        self._tool_calls_sent = 0

    def feed(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one native record, in order (possibly none)."""
        message = record.get("message") or {}
        has_payload = bool(
            message.get("content") or message.get("thinking") or message.get("tool_calls")
        )
        out = []
        if has_payload or not record.get("done"):
            out.append(
                ollama_chat_chunk_to_openai(
                    record,
                    self.model,
                    self.request_id,
                    self.created,
                    first=not self._sent_any,
                    tool_call_index=self._tool_calls_sent,
                )
            )
            self._sent_any = True
            self._tool_calls_sent += len(message.get("tool_calls") or ())
        if record.get("done"):
            reason = (
                "tool_calls" if self._tool_calls_sent else (record.get("done_reason") or "stop")
            )
            out.append(
                _chunk(
                    self.request_id,
                    self.created,
                    self.model,
                    [{"index": 0, "delta": {}, "finish_reason": reason}],
                )
            )
            if self.include_usage:
                usage_chunk = _chunk(self.request_id, self.created, self.model, [])
                usage_chunk["usage"] = _usage(record)
                out.append(usage_chunk)
            _mark_resumed(out, record)
        return out

    def feed_sse(self, record: Mapping[str, Any]) -> bytes:
        """:meth:`feed`, framed as SSE, plus :data:`SSE_DONE` after the final record."""
        data = b"".join(sse_event(chunk) for chunk in self.feed(record))
        return data + SSE_DONE if record.get("done") else data


def ollama_generate_to_openai(
    resp: Mapping[str, Any], model: str, request_id: str, created: int
) -> dict[str, Any]:
    """A non-streamed native generate answer → ``text_completion``."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(created),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": resp.get("response") or "",
                "index": 0,
                "finish_reason": resp.get("done_reason") or None,
            }
        ],
        "usage": _usage(resp),
    }


def ollama_generate_chunk_to_openai(
    chunk: Mapping[str, Any], model: str, request_id: str, created: int
) -> dict[str, Any]:
    """One native generate record → one ``text_completion`` stream chunk."""
    completion = ollama_generate_to_openai(chunk, model, request_id, created)
    del completion["usage"]
    return completion


class CompletionStreamTranslator:
    """Turns a native ``/api/generate`` stream into ``text_completion`` chunks: one per
    record; with ``include_usage`` each carries zero usage and a last chunk with
    ``choices: []`` carries the real usage."""

    def __init__(self, model: str, request_id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.request_id = request_id
        self.created = int(created)
        self.include_usage = include_usage

    def feed(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunk = ollama_generate_chunk_to_openai(record, self.model, self.request_id, self.created)
        if self.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = [chunk]
        if record.get("done") and self.include_usage:
            final = dict(chunk, choices=[], usage=_usage(record))
            out.append(final)
        if record.get("done"):
            _mark_resumed(out, record)
        return out

    def feed_sse(self, record: Mapping[str, Any]) -> bytes:
        data = b"".join(sse_event(chunk) for chunk in self.feed(record))
        return data + SSE_DONE if record.get("done") else data


def _mark_resumed(chunks: list[dict[str, Any]], record: Mapping[str, Any]) -> None:
    """A carried-over answer (the native final record has ``olol_resumed``): the
    stream's last chunk says so too (the SDKs keep unknown fields)."""
    resumed = record.get(RESUMED_FIELD)
    if resumed and chunks:
        chunks[-1][RESUMED_FIELD] = resumed


def floats_to_base64(values: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (what ``encoding_format=base64`` means)."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def ollama_embed_to_openai(
    resp: Mapping[str, Any], model: str, encoding_format: str = "float"
) -> dict[str, Any]:
    """A native ``/api/embed`` answer → an embedding ``list``."""
    as_base64 = str(encoding_format).lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": floats_to_base64(vector) if as_base64 else list(vector),
            "index": index,
        }
        for index, vector in enumerate(resp.get("embeddings") or [])
    ]
    tokens = int(resp.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def parse_ollama_time(value: Any) -> int:
    """Unix seconds of an Ollama RFC 3339 timestamp (up to 9 fractional digits); 0 when
    absent or unparseable."""
    if not isinstance(value, str) or not value:
        return 0
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    if "." in text:  # Python parses at most 6 fractional digits
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _owner(name: str) -> str:
    try:
        return parse_model_name(name).namespace
    except InvalidModelName:
        return DEFAULT_NAMESPACE


def ollama_model_to_openai(model: Mapping[str, Any]) -> dict[str, Any]:
    """One ``/api/tags`` entry → an OpenAI ``model`` object."""
    name = model.get("name") or model.get("model") or ""
    return {
        "id": name,
        "object": "model",
        "created": parse_ollama_time(model.get("modified_at")),
        "owned_by": _owner(name),
    }


def ollama_show_to_openai_model(show: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    """``GET /v1/models/{id}``: the ``/api/show`` answer with ``id`` = the path verbatim."""
    return {
        "id": model_id,
        "object": "model",
        "created": parse_ollama_time(show.get("modified_at")),
        "owned_by": _owner(model_id),
    }


def ollama_tags_to_openai_models(tags: Mapping[str, Any]) -> dict[str, Any]:
    """``/api/tags`` → ``GET /v1/models``; ``data`` is null when no model is installed,
    as Ollama answers."""
    models = [ollama_model_to_openai(entry) for entry in tags.get("models") or []]
    return {"object": "list", "data": models or None}


# --- SSE ---------------------------------------------------------------------------------


def sse_event(obj: Any) -> bytes:
    """One server-sent event: ``data: <compact json>\\n\\n``."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_stream_error_event(message: str, status: int = 500) -> bytes:
    """An error after an SSE stream has started (status already 200): one event whose
    JSON has an ``error`` object, which the openai SDK raises as ``APIError``. No
    ``[DONE]`` follows it."""
    return sse_event(openai_error_body(status, message))

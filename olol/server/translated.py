"""Routes of other APIs answered by a native chat (``/v1/messages``, ``/v1/responses``).

The blueprint translates its request into a native ``/api/chat`` body at the door;
:func:`serve_chat` validates that body as ``/api/chat`` would be validated, queues it
like every other inference request (priority from ``X-OLOL-Priority`` or the key,
coalescing of deterministic requests, the queue's backpressure), and translates the
native records back with the :class:`Translation` the blueprint builds for the
request's id: one object for a whole answer, server-sent events for a stream (the same
:class:`~olol.server.inference.EventStream` the OpenAI routes use). Errors before the
answer starts are raised as :class:`~olol.api.errors.ApiError` (the app renders them
in the API's shape); after it started, ``Translation.stream_error`` renders them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flask import Response

from olol.api.errors import ApiError
from olol.api.validation import VALIDATORS
from olol.context import Services
from olol.hub import DONE, Event
from olol.server.common import get_ctx, json_response
from olol.server.inference import EventStream, first_event_or_error, submit

SSE_CONTENT_TYPE = "text/event-stream"
THINKING_UNSUPPORTED = "does not support thinking"


class Translation(Protocol):
    """Native chat records → one API's answer, for one request."""

    def whole(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A non-streamed answer from the final (folded) native record."""

    def stream_chunk(self, record: Mapping[str, Any]) -> bytes:
        """The events for one native record of a stream (``done`` set on the last)."""

    def stream_error(self, message: str, status: int) -> bytes:
        """The event that ends a stream that failed after it started."""


def _queue(ctx: Services, native: dict[str, Any], stream: bool, api: str) -> tuple[Any, Any]:
    """Submit ``native`` and wait for its whole answer (or a stream's first event)."""
    validated = VALIDATORS["chat"](native)
    sub = submit(ctx, validated, native, api=api, stream=stream)
    try:
        result = first_event_or_error(sub) if stream else sub.wait_final()
    except ApiError as exc:
        exc.headers.update(sub.headers)
        raise
    return sub, result


def serve_chat(
    native: dict[str, Any],
    stream: bool,
    translation: Callable[[str], Translation],
    *,
    api: str,
    relax_thinking: bool = False,
) -> Response:
    """Queue a native chat body and answer it through ``translation(request_id)``.

    :param api: the queue record's ``api`` (metrics and logs name the route by it).
    :param relax_thinking: when the model does not support thinking, run the request
        again without ``think`` instead of answering 400 (Ollama relaxes thinking this
        way for its Anthropic layer, so that tools like Claude Code work with any
        model).
    """
    ctx = get_ctx()
    try:
        sub, result = _queue(ctx, native, stream, api)
    except ApiError as exc:
        if not (
            relax_thinking
            and native.get("think")
            and exc.status == 400
            and exc.message.endswith(THINKING_UNSUPPORTED)
        ):
            raise
        native = {key: value for key, value in native.items() if key != "think"}
        sub, result = _queue(ctx, native, stream, api)
    answer = translation(sub.request_id)
    if not stream:
        return json_response(answer.whole(result), headers=sub.headers)

    def render(event: Event) -> bytes:
        record = event.data if isinstance(event.data, dict) else {}
        if event.kind == DONE:
            record = {**record, "done": True}
        return answer.stream_chunk(record)

    resp = Response(
        EventStream(sub, result, render, answer.stream_error),
        status=200,
        content_type=SSE_CONTENT_TYPE,
    )
    for name, value in sub.headers.items():
        resp.headers[name] = value
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp

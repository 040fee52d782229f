"""Helpers shared by the blueprints: the context, bodies, headers, keys, JSON answers."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, g, request

from olol.api.errors import ApiError
from olol.api.streaming import JSON_CONTENT_TYPE
from olol.api.validation import parse_json_body
from olol.context import Services

#: Key under which the app keeps its Services in ``app.extensions``.
EXTENSION = "olol"

PRIORITY_HEADER = "X-OLOL-Priority"
SESSION_HEADER = "X-OLOL-Session"
REQUEST_ID_HEADER = "X-OLOL-Request-Id"
POSITION_HEADER = "X-OLOL-Queue-Position"

#: Range a request's priority is clamped to (header, job body or key default).
PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_SESSION_LEN = 200
PROMPT_PREVIEW_CHARS = 200


def get_ctx() -> Services:
    """The collaborators of the running app (:class:`~olol.context.Services`)."""
    return current_app.extensions[EXTENSION]


def current_key() -> Any:
    """The verified KeyInfo of this request (None when keys are disabled)."""
    return g.get("olol_key")


def json_response(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    """A compact JSON answer with Ollama's content type."""
    resp = Response(orjson.dumps(obj), status=status, content_type=JSON_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def read_json_body(go_type: str = "map[string]interface {}") -> dict[str, Any]:
    """The request body as a JSON object, bounded by ``config.max_body_bytes``.

    :raises ApiError: 413 over the limit (checked on Content-Length before reading), 400
        for an empty or malformed body, with Ollama's messages.
    """
    limit = int(get_ctx().config.max_body_bytes)
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"http: request body too large (limit {limit} bytes)")
    raw = request.stream.read(limit + 1)
    g.olol_body_bytes = len(raw)  # what the queue holds on this request's behalf
    return parse_json_body(raw, limit, go_type=go_type)


def clamp_priority(value: int) -> int:
    return max(PRIORITY_MIN, min(PRIORITY_MAX, int(value)))


def parse_priority_value(value: Any, source: str) -> int:
    """An integer priority from a header string or a JSON value, clamped.

    :raises ApiError: 400 when it is not an integer.
    """
    if isinstance(value, bool):
        raise ApiError(400, f"invalid {source}: must be an integer")
    if isinstance(value, int):
        return clamp_priority(value)
    if isinstance(value, float) and value.is_integer():
        return clamp_priority(int(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            return clamp_priority(int(text, 10))
        except ValueError:
            pass
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    raise ApiError(400, f"invalid {source} {shown[:40]!r}: must be an integer")


#: WSGI environ key of the list of callables run after the response has been written
#: (olol.server.app.AfterResponse).
AFTER_RESPONSE = "olol.after_response"


def request_priority(explicit: Any = None) -> int:
    """Priority of this request: ``explicit`` (a jobs body field), else the
    ``X-OLOL-Priority`` header, else the key's default, else the configured default.

    A key's priority is also its ceiling: a request made with a non-admin key may
    lower its priority but not raise it above the key's (admin keys may set any)."""
    key = current_key()
    if explicit is not None:
        asked = parse_priority_value(explicit, "priority")
    else:
        header = request.headers.get(PRIORITY_HEADER)
        if header is not None:
            asked = parse_priority_value(header, f"{PRIORITY_HEADER} header")
        elif key is not None:
            return clamp_priority(key.default_priority)
        else:
            return clamp_priority(get_ctx().config.default_priority)
    if key is not None and not key.admin:
        return min(asked, clamp_priority(key.default_priority))
    return asked


def request_session() -> str | None:
    """The ``X-OLOL-Session`` value (affinity), bounded in length."""
    value = request.headers.get(SESSION_HEADER)
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_SESSION_LEN:
        raise ApiError(400, f"{SESSION_HEADER} header longer than {MAX_SESSION_LEN} characters")
    return value or None


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def prompt_preview(endpoint: str, body: dict[str, Any]) -> str | None:
    """A short text for the queue's ``prompt`` field (roadmap), at most 200 characters."""
    text: Any = None
    if endpoint == "generate":
        text = body.get("prompt")
    elif endpoint == "chat":
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                text = message["content"]
                break
    elif endpoint == "embed":
        value = body.get("input")
        text = value if isinstance(value, str) else (value[0] if value else None)
    elif endpoint == "embeddings":
        text = body.get("prompt")
    if not isinstance(text, str):
        return None
    return text[:PROMPT_PREVIEW_CHARS]

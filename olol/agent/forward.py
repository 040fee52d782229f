"""The agent's side of the proxy's pass-through: ``Forward`` relays one GET or POST
that has no typed RPC to the local Ollama and streams the answer back as bytes.

Rules (the agent is the node's security boundary, whatever the coordinator asks):

* only ``GET`` and ``POST``, only paths under ``/api/`` and ``/v1/``, made of plain
  URL characters, without ``..`` segments, empty segments or fragments;
* never the model-management paths (pull, push, create, copy, delete, blobs) nor the
  account ones (sign-out, user keys): those have their own RPCs, behind the admin
  token when one is set (:mod:`olol.agent.auth`), and a generic relay must not bypass it;
* the request body is bounded by gRPC's message size (the client's limit), the
  answer by :data:`MAX_ANSWER_BYTES` in total.

The first message carries Ollama's status and Content-Type; body bytes follow in
the order and pieces they arrived in (one socket read each, nothing waits for
more). A connection that breaks mid-answer ends the call with UNAVAILABLE and
``x-ollama-stream-error: 1``; the caller's cancel closes the connection to Ollama.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import grpc

from olol.agent.ollama import OllamaUnavailable
from olol.rpc import node_pb2

#: Most bytes of one relayed answer (a long stream included).
MAX_ANSWER_BYTES = 256 * 1024 * 1024
#: Longest path (query string included) the agent relays.
MAX_PATH_CHARS = 2048
READ_SIZE = 65536
METHODS = frozenset({"GET", "POST"})
_PATH_RE = re.compile(r"^/(?:api|v1)/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")
#: Paths with their own RPCs (model management) or that change the node's account.
REFUSED_PREFIXES = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
                    "/api/blobs", "/api/signout", "/api/user/")


def check_target(method: str, path: str) -> str | None:
    """Why the agent refuses to relay ``method path``; None when it may."""
    if method not in METHODS:
        return f"method {method!r} is not relayed (GET and POST only)"
    if len(path) > MAX_PATH_CHARS:
        return f"path longer than {MAX_PATH_CHARS} characters"
    if not _PATH_RE.match(path):
        return f"path {path[:200]!r} is not relayed (only /api/... and /v1/... paths)"
    raw = path.split("?", 1)[0]
    # Ollama's router matches the decoded path: judge that one too ("/api/%70ull" is a
    # pull, "/api/blobs%2Fx" a blob upload)
    for route in dict.fromkeys((raw, unquote(raw))):
        if not route.startswith(("/api/", "/v1/")) or any(c in route for c in "\r\n\0\\"):
            return f"path {path[:200]!r} is not relayed (only /api/... and /v1/... paths)"
        segments = route.split("/")[1:]
        if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
            return f"path {path[:200]!r} is not relayed (empty or dot segments)"
        lowered = route.lower()
        for prefix in REFUSED_PREFIXES:
            if lowered == prefix or lowered.startswith(prefix.rstrip("/") + "/"):
                return f"path {route!r} is not relayed: it has its own call"
    return None


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, status: int,
           stream_error: bool = False) -> None:
    metadata = [("x-ollama-status", str(status))]
    if stream_error:
        metadata.append(("x-ollama-stream-error", "1"))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(code, message)


def forward(ollama: Any, in_flight: Any, request: Any,
            context: grpc.ServicerContext) -> Iterator[node_pb2.ForwardChunk]:
    """Relay ``request`` (a ``ForwardRequest``) to Ollama; see the module's rules."""
    method = request.method.upper()
    refusal = check_target(method, request.path)
    if refusal is not None:
        _abort(context, grpc.StatusCode.PERMISSION_DENIED, refusal, 403)
    headers = {"Accept": "*/*"}
    if request.content_type:
        headers["Content-Type"] = request.content_type[:200]
    body = request.body if method == "POST" else None
    model = request.model
    if model:
        in_flight.enter(model)
    call = ollama.call(method, request.path, body if body is not None else None,
                       headers=headers)
    try:
        if not context.add_callback(call.abort):
            return
        try:
            status = call.send()
        except OllamaUnavailable as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), 502)
        response = call._response
        content_type = response.getheader("Content-Type", "") if response is not None else ""
        first = True
        total = 0
        try:
            while True:
                try:
                    data = response.read1(READ_SIZE) if response is not None else b""
                except (OSError, http.client.HTTPException) as exc:
                    raise OllamaUnavailable(f"ollama broke the answer: {exc}") from None
                if not data:
                    break
                total += len(data)
                if total > MAX_ANSWER_BYTES:
                    raise OllamaUnavailable(f"ollama answer larger than {MAX_ANSWER_BYTES} bytes")
                if first:
                    first = False
                    yield node_pb2.ForwardChunk(http_status=status, content_type=content_type,
                                                body=data)
                else:
                    yield node_pb2.ForwardChunk(body=data)
            if call.aborted:
                return
            if first:  # an empty answer: its status still goes back
                yield node_pb2.ForwardChunk(http_status=status, content_type=content_type)
        except OllamaUnavailable as exc:
            if context.is_active():
                _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), 502,
                       stream_error=not first)
    finally:
        call.close(reusable=False)
        if model:
            in_flight.leave(model)

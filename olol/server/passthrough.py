"""The front door of the pass-through: routes olol does not know, under ``/api/`` and
``/v1/``, so that an endpoint a newer Ollama adds works through olol the day the
nodes' Ollama serves it.

* ``POST`` whose body is a JSON object naming a ``model`` (a non-empty string): queued
  like every inference request (priority, the queue's backpressure, keys, the body
  size limit), placed on a node that has the model, and relayed as bytes: the node's
  status code, Content-Type and body (streamed as it arrives: NDJSON, server-sent
  events or one JSON object). A model no node has: 404 ``model '<name>' not found``
  (in OpenAI's shape under ``/v1/``). The run itself is :mod:`olol.passthrough`.
* ``POST`` without a model (no JSON object, or no ``model`` in it): ``404 page not
  found`` as before; olol cannot tell which node such a call is for, and calls of that
  kind (sign-in, web search) are about one node's account, not the cluster's.
* ``GET``: relayed at once (no queue) to a healthy node, the first by address; a node
  that fails before answering is replaced by the next (at most
  :data:`GET_ATTEMPTS` nodes). No healthy node: ``404 page not found``.
* A path olol routes with other methods (``GET /api/chat``): ``405 method not
  allowed``, as before. Other methods (``PUT``, ``DELETE``...) on unknown paths: 404.

The node's agent relays only what it allows (:mod:`olol.agent.forward`): never the model
management paths, which have their own routes here anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from olol.api import errors
from olol.api.errors import ApiError
from olol.api.names import InvalidModelName, normalize_model_name
from olol.api.validation import ValidatedRequest
from olol.hub import RELAY
from olol.passthrough import PASSTHROUGH
from olol.rpc.client import NodeError
from olol.server.common import get_ctx
from olol.server.inference import first_event_or_error, submit

log = logging.getLogger(__name__)

bp = Blueprint("passthrough", __name__)

GET_ATTEMPTS = 3
MAX_CONTENT_TYPE = 200
_ENDPOINT = "passthrough.forward"
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _known_elsewhere(path: str) -> list[str]:
    """The methods another route serves ``path`` with (empty: no route has it)."""
    adapter = current_app.url_map.bind("olol")
    methods = []
    for method in ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT"):
        try:
            endpoint, _ = adapter.match(path, method=method)
        except (NotFound, MethodNotAllowed):
            continue
        except Exception:  # noqa: BLE001 - e.g. a redirect rule: treat as known
            endpoint = None
        if endpoint != _ENDPOINT:
            methods.append(method)
    return methods


def _target() -> str:
    """The path (and query) to relay, quoted as on the wire."""
    path = quote(request.path, safe=_PATH_SAFE)
    query = request.query_string.decode("latin-1")
    return f"{path}?{query}" if query else path


def _not_found() -> Response:
    return Response("404 page not found", status=404, content_type="text/plain")


@bp.route("/api/<path:rest>", methods=["GET", "POST"])
@bp.route("/v1/<path:rest>", methods=["GET", "POST"])
def forward(rest: str) -> Response:
    allowed = _known_elsewhere(request.path)
    if allowed:
        resp = Response("405 method not allowed", status=405, content_type="text/plain")
        resp.headers["Allow"] = ", ".join(sorted({*allowed, "OPTIONS"}))
        return resp
    if request.method == "POST":
        return _post()
    return _get()


def _read_body() -> bytes:
    limit = int(get_ctx().config.max_body_bytes)
    length = request.content_length
    if length is not None and length > limit:
        raise errors.body_too_large(limit)
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise errors.body_too_large(limit)
    g.olol_body_bytes = len(raw)
    return raw


def _post() -> Response:
    raw = _read_body()
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return _not_found()
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return _not_found()
    try:
        normalized = normalize_model_name(model)
    except InvalidModelName:
        raise errors.model_not_found(PASSTHROUGH, model) from None
    stream = body.get("stream") is True
    validated = ValidatedRequest(endpoint=PASSTHROUGH, model=model,
                                 normalized_model=normalized, stream=stream, body=body)
    record_body = {
        "method": "POST",
        "path": _target(),
        "content_type": (request.content_type or "")[:MAX_CONTENT_TYPE],
        "raw": raw.decode("utf-8"),  # valid JSON: valid UTF-8
    }
    ctx = get_ctx()
    sub = submit(ctx, validated, record_body, api=PASSTHROUGH, stream=stream)
    try:
        event = first_event_or_error(sub)
    except ApiError as exc:
        exc.headers.update(sub.headers)
        raise
    if event.kind != RELAY:  # a pass-through is always relayed
        sub.finish(cancel=True)
        raise ApiError(500, "internal error")
    relay = event.data
    body_iter = _RelayedBody(relay, sub)
    resp = Response(body_iter, status=relay.status,
                    content_type=relay.content_type or "application/octet-stream")
    for name, value in sub.headers.items():
        resp.headers[name] = value
    return resp


class _RelayedBody:
    """The response body of a queued pass-through: the relay's bytes; ``close()``
    (the WSGI server's) abandons an unfinished relay and releases the channel."""

    def __init__(self, relay: Any, submission: Any) -> None:
        self.relay = relay
        self.submission = submission
        self._completed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.relay.chunks()
            self._completed = True
        except NodeError as exc:
            # the status line is out: the answer just ends (a client sees a cut body)
            self._completed = True
            log.warning("pass-through %s: the node failed mid-answer: %s",
                        self.submission.request_id, exc.message)

    def close(self) -> None:
        if not self._completed:
            self.relay.abandon("the client went away")
        self.submission.finish(cancel=not self._completed)


def _get() -> Response:
    ctx = get_ctx()
    nodes = ctx.cluster.healthy_nodes()
    if not nodes:  # nobody to ask whether the route exists: as unknown
        return _not_found()
    timeout = float(ctx.config.request_timeout_s)
    failure: NodeError | None = None
    for node in nodes[:GET_ATTEMPTS]:
        stream = ctx.cluster.client(node.address).forward("GET", _target(), timeout=timeout)
        try:
            status, content_type, first = stream.head()
        except NodeError as exc:
            stream.cancel()
            if exc.http_status < 500 or exc.code is None:
                raise ApiError(exc.http_status, exc.message) from None
            failure = exc
            continue
        return Response(_GetBody(stream, first), status=status,
                        content_type=content_type or "application/octet-stream")
    assert failure is not None
    raise ApiError(502, f"no node could serve the request: {failure.message}")


class _GetBody:
    def __init__(self, stream: Any, first: bytes) -> None:
        self.stream = stream
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        if self.first:
            yield self.first
        try:
            yield from self.stream.pieces()
        except NodeError as exc:
            log.warning("pass-through GET: the node failed mid-answer: %s", exc.message)

    def close(self) -> None:
        self.stream.cancel()

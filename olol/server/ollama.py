"""The native Ollama API: a drop-in for one Ollama server (OLLAMA-API.md)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from olol import __version__
from olol.api import errors
from olol.api.errors import ApiError
from olol.api.streaming import (
    NDJSON_CONTENT_TYPE,
    ndjson_line,
    ollama_stream_error_line,
    respeller,
)
from olol.api.validation import VALIDATORS
from olol.hub import Event
from olol.rpc.client import NodeError
from olol.server.common import get_ctx, json_response, read_json_body
from olol.server.inference import (
    EventStream,
    check_model_known,
    first_event_or_error,
    submit,
    with_model,
)

log = logging.getLogger(__name__)

bp = Blueprint("ollama", __name__)

#: How long one node may take to unload a model.
UNLOAD_TIMEOUT_S = 30.0

_GO_TYPES = {
    "generate": "api.GenerateRequest",
    "chat": "api.ChatRequest",
    "embed": "api.EmbedRequest",
    "embeddings": "api.EmbeddingRequest",
    "show": "api.ShowRequest",
}


@bp.route("/", methods=["GET", "HEAD"])
def root() -> Response:
    return Response("Ollama is running", content_type="text/plain; charset=utf-8")


@bp.route("/api/version", methods=["GET", "HEAD"])
def version() -> Response:
    """``version`` is the oldest Ollama version among the healthy nodes (what the fleet
    as a whole supports; clients gate features on it), or olol's own when none is
    known; ``olol_version`` is always olol's."""
    versions = []
    for node in get_ctx().cluster.healthy_nodes():
        ollama = (getattr(node, "hardware", None) or {}).get("ollama") or {}
        if isinstance(ollama, dict) and isinstance(ollama.get("version"), str):
            versions.append(ollama["version"])
    oldest = min(versions, key=_version_key) if versions else None
    return json_response({"version": oldest or __version__, "olol_version": __version__})


def _version_key(text: str) -> tuple:
    parts = []
    for piece in text.split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


@bp.route("/api/tags", methods=["GET", "HEAD"])
def tags() -> Response:
    return json_response({"models": get_ctx().cluster.models_union()})


@bp.route("/api/ps", methods=["GET"])
def ps() -> Response:
    return json_response({"models": get_ctx().cluster.live_ps(timeout=1.0)})


@bp.route("/api/show", methods=["POST"])
def show() -> Response:
    ctx = get_ctx()
    body = read_json_body(_GO_TYPES["show"])
    validated = VALIDATORS["show"](body)
    candidates = ctx.cluster.nodes_with_model(validated.normalized_model)
    if not candidates:
        raise errors.model_not_found("show", validated.model)
    last: ApiError | None = None
    for node in candidates:
        try:
            return json_response(ctx.cluster.client(node.address).show(body))
        except NodeError as exc:
            if not exc.retryable:
                raise ApiError(exc.http_status, exc.message) from None
            log.warning("show %s on %s failed: %s", validated.model, node.address, exc.message)
            last = ApiError(502, f"no node answered: {exc.message}")
    assert last is not None
    raise last


def _inference(endpoint: str) -> Response:
    ctx = get_ctx()
    body = read_json_body(_GO_TYPES[endpoint])
    validated = VALIDATORS[endpoint](body)
    if endpoint in ("generate", "chat") and validated.is_unload:
        return _unload_everywhere(ctx, validated, body)
    stream = validated.stream and endpoint in ("generate", "chat")
    sub = submit(ctx, validated, body, api="ollama", stream=stream)
    model = validated.model
    try:
        if not stream:
            answer = sub.wait_final()
            return json_response(with_model(answer, model), headers=sub.headers)
        first = first_event_or_error(sub)
    except ApiError as exc:
        exc.headers.update(sub.headers)
        raise

    def render(event: Event) -> bytes:
        return ndjson_line(with_model(event.data, model))

    def render_error(message: str, status: int) -> bytes:
        return ollama_stream_error_line(message)

    body_iter = EventStream(sub, first, render, render_error, render_raw=respeller(model))
    resp = Response(body_iter, status=200, content_type=NDJSON_CONTENT_TYPE)
    for name, value in sub.headers.items():
        resp.headers[name] = value
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def _unload_everywhere(ctx, validated, body: dict) -> Response:
    """``keep_alive: 0`` with no prompt: Ollama unloads the model. The fleet's answer is
    to unload it on every node that has it, not on whichever node the queue picks;
    Ollama answers one final record (``done_reason: unload``), the first node's here."""
    check_model_known(ctx, validated)
    answer = None
    failures = []
    for node in ctx.cluster.nodes_with_model(validated.normalized_model):
        client = ctx.cluster.client(node.address)
        call = client.chat if validated.endpoint == "chat" else client.generate
        try:
            records = list(call(body, timeout=UNLOAD_TIMEOUT_S))
        except NodeError as exc:
            log.warning("unloading %s on %s failed: %s", validated.model, node.address,
                        exc.message)
            failures.append(exc)
            continue
        if answer is None and records:
            answer = records[-1]
    if answer is None:
        first = failures[0] if failures else None
        raise ApiError(first.http_status if first else 502,
                       first.message if first else "no node answered the unload")
    return json_response(with_model(answer, validated.model))


@bp.route("/api/generate", methods=["POST"])
def generate() -> Response:
    return _inference("generate")


@bp.route("/api/chat", methods=["POST"])
def chat() -> Response:
    return _inference("chat")


@bp.route("/api/embed", methods=["POST"])
def embed() -> Response:
    return _inference("embed")


@bp.route("/api/embeddings", methods=["POST"])
def embeddings() -> Response:
    return _inference("embeddings")

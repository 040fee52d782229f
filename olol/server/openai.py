"""The OpenAI-compatible API (``/v1``), translated to native requests that go through
the same queue; answers come back in OpenAI's shapes, streams as server-sent events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response

from olol.api import openai_compat as oc
from olol.api.errors import ApiError
from olol.api.names import find_model
from olol.api.validation import VALIDATORS
from olol.hub import Event
from olol.server.common import get_ctx, json_response, read_json_body
from olol.server.inference import EventStream, first_event_or_error, submit

bp = Blueprint("openai", __name__, url_prefix="/v1")


def _created() -> int:
    return int(get_ctx().clock())


def _native(endpoint: str, translate: Callable[[Any], dict], go_type: str):
    body = read_json_body(go_type)
    native = translate(body)
    validated = VALIDATORS[endpoint](native)
    return body, native, validated


def _completion_like(
    endpoint: str,
    translate: Callable[[Any], dict],
    go_type: str,
    id_prefix: str,
    to_openai: Callable[..., dict],
    translator_cls: type,
) -> Response:
    ctx = get_ctx()
    body, native, validated = _native(endpoint, translate, go_type)
    stream = oc.wants_stream(body)
    sub = submit(ctx, validated, native, api="openai", stream=stream)
    model = validated.model
    openai_id = f"{id_prefix}-{sub.request_id}"
    created = _created()
    try:
        if not stream:
            answer = sub.wait_final()
            return json_response(to_openai(answer, model, openai_id, created), headers=sub.headers)
        first = first_event_or_error(sub)
    except ApiError as exc:
        exc.headers.update(sub.headers)
        raise
    translator = translator_cls(model, openai_id, created, oc.include_usage(body))

    def render(event: Event) -> bytes:
        record = event.data if isinstance(event.data, dict) else {}
        if event.kind == "done":
            record = {**record, "done": True}
        return translator.feed_sse(record)

    def render_error(message: str, status: int) -> bytes:
        return oc.openai_stream_error_event(message, status)

    resp = Response(
        EventStream(sub, first, render, render_error),
        status=200,
        content_type=oc.SSE_CONTENT_TYPE,
    )
    for name, value in sub.headers.items():
        resp.headers[name] = value
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.route("/chat/completions", methods=["POST"])
def chat_completions() -> Response:
    return _completion_like(
        "chat",
        oc.chat_completion_to_ollama,
        "openai.ChatCompletionRequest",
        "chatcmpl",
        oc.ollama_chat_to_openai,
        oc.ChatStreamTranslator,
    )


@bp.route("/completions", methods=["POST"])
def completions() -> Response:
    return _completion_like(
        "generate",
        oc.completion_to_ollama,
        "openai.CompletionRequest",
        "cmpl",
        oc.ollama_generate_to_openai,
        oc.CompletionStreamTranslator,
    )


@bp.route("/embeddings", methods=["POST"])
def embeddings() -> Response:
    ctx = get_ctx()
    body, native, validated = _native("embed", oc.embeddings_to_ollama, "openai.EmbedRequest")
    sub = submit(ctx, validated, native, api="openai", stream=False)
    try:
        answer = sub.wait_final()
    except ApiError as exc:
        exc.headers.update(sub.headers)
        raise
    encoding = oc.embedding_encoding_format(body)
    return json_response(
        oc.ollama_embed_to_openai(answer, validated.model, encoding), headers=sub.headers
    )


@bp.route("/models", methods=["GET"])
def list_models() -> Response:
    return json_response(
        oc.ollama_tags_to_openai_models({"models": get_ctx().cluster.models_union()})
    )


@bp.route("/models/<path:model>", methods=["GET"])
def retrieve_model(model: str) -> Response:
    entries = {
        (entry.get("name") or entry.get("model") or ""): entry
        for entry in get_ctx().cluster.models_union()
    }
    name = find_model(model, list(entries))
    if name is None:
        raise ApiError(404, f"model '{model}' not found")
    return json_response(oc.ollama_show_to_openai_model(entries[name], model))

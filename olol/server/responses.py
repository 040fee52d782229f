"""The OpenAI Responses API: ``POST /v1/responses``, stateless, as Ollama serves it
(since 0.13.3). Requests are translated to native chats and queued like every other
inference request (:mod:`olol.server.translated`); the mapping is in
:mod:`olol.api.responses_api` and :mod:`olol.api.responses_answers`. Errors use OpenAI's shape, like the rest of ``/v1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response

from olol.api import responses_answers as rs
from olol.api import responses_api as ra
from olol.server.common import get_ctx, read_json_body
from olol.server.translated import serve_chat

bp = Blueprint("responses", __name__, url_prefix="/v1")


class _Response:
    def __init__(self, body: Mapping[str, Any], model: str, request_id: str,
                 clock: Any, created_at: int) -> None:
        self.body = body
        self.model = model
        self.response_id = f"resp_{request_id}"
        self.clock = clock
        self.created_at = created_at
        self.stream = rs.ResponsesStreamTranslator(
            model, self.response_id, body, self.created_at, clock
        )

    def whole(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return rs.ollama_chat_to_response(
            record, self.model, self.response_id, self.body,
            created_at=self.created_at, completed_at=int(self.clock()),
        )

    def stream_chunk(self, record: Mapping[str, Any]) -> bytes:
        return self.stream.feed_sse(record)

    def stream_error(self, message: str, status: int) -> bytes:
        return self.stream.failed_sse(message, status)


@bp.route("/responses", methods=["POST"])
def responses() -> Response:
    body = read_json_body("openai.ResponsesRequest")
    native = ra.responses_to_ollama(body)
    model = native["model"]
    clock = get_ctx().clock
    created_at = int(clock())
    return serve_chat(
        native,
        native["stream"],
        lambda request_id: _Response(body, model, request_id, clock, created_at),
        api="responses",
    )

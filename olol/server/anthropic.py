"""The Anthropic-compatible Messages API: ``POST /v1/messages``, as Ollama serves it
(for tools such as Claude Code). Requests are translated to native chats and queued
like every other inference request (:mod:`olol.server.translated`); the mapping is in
:mod:`olol.api.anthropic` and :mod:`olol.api.anthropic_answers`. Errors use Anthropic's shape, ``{"type": "error", "error":
{"type", "message"}}`` (``overloaded_error`` for a full queue); the app renders them so
for every path :func:`is_anthropic_path` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response

from olol.api import anthropic as an
from olol.api import anthropic_answers as aa
from olol.server.common import read_json_body
from olol.server.translated import serve_chat

bp = Blueprint("anthropic", __name__, url_prefix="/v1")

MESSAGES_PATH = "/v1/messages"


def is_anthropic_path(path: str) -> bool:
    """Whether ``path`` belongs to the Anthropic-compatible API."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


class _Messages:
    def __init__(self, body: Mapping[str, Any], model: str, request_id: str) -> None:
        self.model = model
        self.message_id = f"msg_{request_id}"
        self.stream = aa.MessagesStreamTranslator(
            model, self.message_id, an.estimate_input_tokens(body)
        )

    def whole(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return aa.ollama_chat_to_message(record, self.model, self.message_id)

    def stream_chunk(self, record: Mapping[str, Any]) -> bytes:
        return self.stream.feed_sse(record)

    def stream_error(self, message: str, status: int) -> bytes:
        return aa.stream_error_event(message, status)


@bp.route("/messages", methods=["POST"])
def messages() -> Response:
    body = read_json_body("anthropic.MessagesRequest")
    native = an.messages_to_ollama(body)
    model = native["model"]
    return serve_chat(
        native,
        native["stream"],
        lambda request_id: _Messages(body, model, request_id),
        api="anthropic",
        relax_thinking=True,
    )

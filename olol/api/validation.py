"""Validation of native Ollama request bodies, with Ollama's messages and statuses.

Each ``validate_<endpoint>(body)`` checks what Ollama checks before it schedules the
request (field types as Go's JSON decoder would, then the handler's own checks) and
returns a :class:`ValidatedRequest`. The body itself is never modified: the proxy
forwards it verbatim to a node.

Deliberate differences from Ollama, all in the direction of a clear 4xx:

* a wrongly typed value of a known key in ``options`` is a 400 here (Ollama answers 500
  with the same message, from ``Options.FromMap``);
* a ``format`` that is neither ``"json"`` nor an object is rejected here (400) instead of
  failing later in the runner;
* a message without a ``role`` is rejected (Ollama would render it with an empty role).

Body and shared-field decoding live in :mod:`olol.api.decoding`, the grouping keys in
:mod:`olol.api.grouping`; their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from olol.api import errors, gojson
from olol.api.decoding import (
    OPTION_KINDS,
    RUNNER_OPTIONS,
    keep_alive_seconds,
    parse_json_body,
    runner_options_key,
    validate_options,
)
from olol.api.grouping import batch_key, coalesce_key, is_deterministic
from olol.api.names import InvalidModelName, normalize_model_name

__all__ = [
    "OPTION_KINDS",
    "RUNNER_OPTIONS",
    "STREAM_DEFAULT_TRUE",
    "VALIDATORS",
    "ValidatedRequest",
    "batch_key",
    "coalesce_key",
    "embed_inputs",
    "is_deterministic",
    "keep_alive_seconds",
    "parse_json_body",
    "runner_options_key",
    "validate_chat",
    "validate_copy",
    "validate_create",
    "validate_delete",
    "validate_embed",
    "validate_embeddings",
    "validate_generate",
    "validate_options",
    "validate_pull",
    "validate_push",
    "validate_show",
]

# --- endpoints ---------------------------------------------------------------------------

#: Endpoints whose ``stream`` defaults to true when absent.
STREAM_DEFAULT_TRUE = frozenset({"generate", "chat", "pull", "push", "create"})


@dataclass(frozen=True, eq=False)
class ValidatedRequest:
    """A native request that passed validation.

    :ivar endpoint: ``generate``, ``chat``, ``embed``, ``embeddings``, ``show``, ``pull``,
        ``push``, ``create``, ``copy`` or ``delete``.
    :ivar model: the model string as the client sent it (responses echo it verbatim);
        the source for ``copy``.
    :ivar normalized_model: :func:`~olol.api.names.normalize_model_name` of ``model``.
    :ivar stream: whether the answer is streamed (absent ⇒ Ollama's default).
    :ivar body: the original body, untouched; the proxy forwards it verbatim.
    """

    endpoint: str
    model: str
    normalized_model: str
    stream: bool
    body: Mapping[str, Any]

    @property
    def options(self) -> Mapping[str, Any]:
        options = gojson.field_value(self.body, "options")
        return options if isinstance(options, dict) else {}

    @property
    def keep_alive_seconds(self) -> float | None:
        """``keep_alive`` in seconds (``math.inf`` = forever), ``None`` when absent."""
        return keep_alive_seconds(gojson.field_value(self.body, "keep_alive"))

    @property
    def is_load_or_unload(self) -> bool:
        """An empty prompt (generate) or empty messages (chat): Ollama only loads the
        model, or unloads it with ``keep_alive: 0`` (OLLAMA-API.md §3.2)."""
        if self.endpoint == "generate":
            return not gojson.field_value(self.body, "prompt")
        if self.endpoint == "chat":
            return not gojson.field_value(self.body, "messages")
        return False

    @property
    def is_unload(self) -> bool:
        """A load/unload request with ``keep_alive: 0``: fan out to every node that has
        the model loaded."""
        return self.is_load_or_unload and self.keep_alive_seconds == 0

    @property
    def runner_key(self) -> tuple[tuple[str, Any], ...]:
        return runner_options_key(self.body)

    @property
    def coalesce_key(self) -> str | None:
        return coalesce_key(self)

    @property
    def batch_key(self) -> str | None:
        return batch_key(self)


def _model_of(body: Mapping[str, Any], *, with_name: bool = False) -> str:
    model = gojson.field_value(body, "model")
    if with_name and not model:
        model = gojson.field_value(body, "name")
    return model or ""


def _typed(body: Mapping[str, Any], struct: str) -> None:
    try:
        gojson.check_struct(body, struct)
    except gojson.GoDecodeError as exc:
        raise errors.ApiError(400, str(exc)) from None


def _stream(endpoint: str, body: Mapping[str, Any]) -> bool:
    value = gojson.field_value(body, "stream")
    if value is None:
        return endpoint in STREAM_DEFAULT_TRUE
    return bool(value)


def _normalized(model: str, on_invalid: errors.ApiError) -> str:
    try:
        return normalize_model_name(model)
    except InvalidModelName:
        raise on_invalid from None


def _build(endpoint: str, model: str, normalized: str, body: Mapping[str, Any]):
    return ValidatedRequest(endpoint, model, normalized, _stream(endpoint, body), body)


def _check_common_inference(body: Mapping[str, Any]) -> None:
    validate_options(gojson.field_value(body, "options"))
    _check_format(gojson.field_value(body, "format"))
    top = gojson.field_value(body, "top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise errors.top_logprobs_out_of_range()


def _check_format(value: Any) -> None:
    if value is None or value in ("", "json") or isinstance(value, dict):
        return
    shown = orjson.dumps(value).decode()
    raise errors.ApiError(400, f'invalid format: {shown}; expected "json" or a valid JSON Schema')


def validate_generate(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/generate``. Missing or invalid model ⇒ 404 ``model 'x' not found``."""
    _typed(body, "api.GenerateRequest")
    model = _model_of(body)
    normalized = _normalized(model, errors.model_not_found("generate", model))
    if gojson.field_value(body, "raw") and any(
        gojson.field_value(body, key) for key in ("template", "system", "context")
    ):
        raise errors.raw_mode_conflict()
    _check_common_inference(body)
    return _build("generate", model, normalized, body)


def validate_chat(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/chat``. Missing model ⇒ 400 ``model is required``; invalid ⇒ 404."""
    _typed(body, "api.ChatRequest")
    model = _model_of(body)
    if not model:
        raise errors.model_required()
    normalized = _normalized(model, errors.model_not_found("chat", model))
    for index, message in enumerate(gojson.field_value(body, "messages") or ()):
        role = gojson.field_value(message, "role")
        if not role:
            raise errors.ApiError(400, f"messages[{index}]: role is required")
    _check_common_inference(body)
    return _build("chat", model, normalized, body)


def validate_embed(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/embed``: ``input`` is a string or a list of strings."""
    _typed(body, "api.EmbedRequest")
    model = _model_of(body)
    # A missing/invalid name fails before scheduling, with generate's wording.
    normalized = _normalized(model, errors.model_not_found("generate", model))
    value = gojson.field_value(body, "input")
    if value is not None and not isinstance(value, str):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise errors.invalid_input_type()
    validate_options(gojson.field_value(body, "options"))
    return _build("embed", model, normalized, body)


def embed_inputs(body: Mapping[str, Any]) -> list[str]:
    """The inputs of a validated ``/api/embed`` body as a list (``""`` or null ⇒ none)."""
    value = gojson.field_value(body, "input")
    if isinstance(value, str):
        return [value] if value else []
    return list(value or [])


def validate_embeddings(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/embeddings`` (legacy). Missing model ⇒ 400 ``model is required``."""
    _typed(body, "api.EmbeddingRequest")
    model = _model_of(body)
    if not model:
        raise errors.model_required()
    normalized = _normalized(model, errors.model_not_found("embeddings", model))
    validate_options(gojson.field_value(body, "options"))
    return _build("embeddings", model, normalized, body)


def validate_show(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/show`` (``name`` accepted for ``model``)."""
    _typed(body, "api.ShowRequest")
    model = _model_of(body, with_name=True)
    if not model:
        raise errors.model_required()
    normalized = _normalized(model, errors.model_not_found("show", model))
    return _build("show", model, normalized, body)


def _validate_transfer(endpoint: str, body: Mapping[str, Any]) -> ValidatedRequest:
    _typed(body, "api.PullRequest")
    model = _model_of(body, with_name=True)
    if not model:
        raise errors.model_required()
    normalized = _normalized(model, errors.invalid_model_name())
    return _build(endpoint, model, normalized, body)


def validate_pull(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/pull``. Invalid name ⇒ 400 ``invalid model name``."""
    return _validate_transfer("pull", body)


def validate_push(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/push``. Missing model ⇒ 400 ``model is required``."""
    return _validate_transfer("push", body)


def validate_create(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/create``: a valid new name and ``from`` or ``files``."""
    _typed(body, "api.CreateRequest")
    model = _model_of(body, with_name=True)
    if not model:
        raise errors.model_required()
    normalized = _normalized(model, errors.invalid_model_name())
    if not gojson.field_value(body, "from") and not gojson.field_value(body, "files"):
        raise errors.ApiError(400, "neither 'from' or 'files' was specified")
    return _build("create", model, normalized, body)


def validate_copy(body: Mapping[str, Any]) -> ValidatedRequest:
    """``POST /api/copy``; ``model`` is the source."""
    _typed(body, "api.CopyRequest")
    source = gojson.field_value(body, "source") or ""
    destination = gojson.field_value(body, "destination") or ""
    normalized = _normalized(source, errors.invalid_source_name(source))
    _normalized(destination, errors.invalid_destination_name(destination))
    return _build("copy", source, normalized, body)


def validate_delete(body: Mapping[str, Any]) -> ValidatedRequest:
    """``DELETE /api/delete`` (``name`` accepted for ``model``)."""
    _typed(body, "api.DeleteRequest")
    model = _model_of(body, with_name=True)
    normalized = _normalized(model, errors.invalid_delete_name(model))
    return _build("delete", model, normalized, body)


VALIDATORS = {
    "generate": validate_generate,
    "chat": validate_chat,
    "embed": validate_embed,
    "embeddings": validate_embeddings,
    "show": validate_show,
    "pull": validate_pull,
    "push": validate_push,
    "create": validate_create,
    "copy": validate_copy,
    "delete": validate_delete,
}

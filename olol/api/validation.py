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
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from olol.api import errors, gojson
from olol.api.names import InvalidModelName, normalize_model_name

# --- body parsing ------------------------------------------------------------------------


def parse_json_body(
    raw: bytes, max_bytes: int, *, go_type: str = "map[string]interface {}"
) -> dict[str, Any]:
    """Decode a request body the way Ollama's gin binding does, bounded by ``max_bytes``.

    :raises ApiError: 400 ``missing request body`` for an empty (or all-whitespace) body;
        413 over the limit; 400 with Go's ``encoding/json`` message for broken JSON; 400
        ``json: cannot unmarshal <kind> into Go value of type map[string]interface {}``
        when the JSON is valid but not an object (pass ``go_type``, e.g.
        ``api.ChatRequest``, to name the struct as Ollama's message does). Text after the first JSON value is
        ignored, as Go's decoder ignores it.
    """
    if raw is None:
        raise errors.missing_request_body()
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > max_bytes:
        raise errors.body_too_large(max_bytes)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _slow_decode(raw)
    if not isinstance(value, dict):
        raise errors.ApiError(
            400,
            f"json: cannot unmarshal {gojson.json_kind(value)} into Go value of type {go_type}",
        )
    return value


def _slow_decode(raw: bytes) -> Any:
    try:
        end = gojson.scan_first_value(raw)
    except EOFError:
        raise errors.missing_request_body() from None
    except gojson.GoJSONSyntaxError as exc:
        raise errors.ApiError(400, str(exc)) from None
    first = raw[:end]
    try:
        return orjson.loads(first)
    except orjson.JSONDecodeError:
        # Syntactically fine for Go but not for orjson: invalid UTF-8 (Go substitutes
        # U+FFFD) or integers beyond 64 bits.
        return json.loads(first.decode("utf-8", errors="replace"))


def keep_alive_seconds(value: Any) -> float | None:
    """``keep_alive`` as seconds: ``None`` when absent, ``math.inf`` when negative (never
    unload), else the duration. Numbers are seconds, strings Go durations.

    :raises ApiError: 400 with Ollama's message for a bad value.
    """
    if value is None:
        return None
    try:
        gojson.check_duration(value)
    except gojson.GoDecodeError as exc:
        raise errors.ApiError(400, str(exc)) from None
    seconds = gojson.parse_go_duration(value) if isinstance(value, str) else float(int(value))
    return math.inf if seconds < 0 else seconds


# --- options -----------------------------------------------------------------------------

#: Known ``options`` keys and the kind ``Options.FromMap`` requires (OLLAMA-API.md §6).
OPTION_KINDS: dict[str, str] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "draft_num_predict": "integer",
}

#: Options fixed when a runner loads; a request differing in them forces a reload.
RUNNER_OPTIONS = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "draft_num_predict",
)


def validate_options(options: Any) -> None:
    """Check the known keys of ``options`` as ``Options.FromMap`` does; unknown keys and
    null values are ignored.

    :raises ApiError: 400 ``option "k" must be of type integer|float32|boolean|array`` or
        ``option "stop" must be of an array of strings``.
    """
    if not isinstance(options, dict):
        return
    for key, value in options.items():
        kind = OPTION_KINDS.get(key)
        if kind is None or value is None:
            continue
        ok = {
            "integer": gojson.is_number,
            "float32": gojson.is_number,
            "boolean": lambda v: isinstance(v, bool),
            "array": lambda v: isinstance(v, list),
        }[kind](value)
        if not ok:
            raise errors.ApiError(400, f'option "{key}" must be of type {kind}')
        if kind == "array" and not all(isinstance(item, str) for item in value):
            raise errors.ApiError(400, f'option "{key}" must be of an array of strings')


def runner_options_key(body: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The load-time options of a request, as a sorted hashable tuple.

    Requests with equal keys can share one loaded runner; different keys make Ollama
    reload the model (``needsReload``). Integer options are truncated as Go does;
    ``num_gpu: -1`` (automatic) is the same as absent.
    """
    options = gojson.field_value(body, "options") if isinstance(body, Mapping) else None
    if not isinstance(options, dict):
        return ()
    items = []
    for key in RUNNER_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if OPTION_KINDS[key] == "integer" and gojson.is_number(value):
            value = int(value)
        if key == "num_gpu" and value == -1:
            continue
        items.append((key, value))
    return tuple(items)


# --- endpoints ---------------------------------------------------------------------------

#: Endpoints whose ``stream`` defaults to true when absent.
STREAM_DEFAULT_TRUE = frozenset({"generate", "chat", "pull", "push", "create"})

_DETERMINISTIC_ALWAYS = frozenset({"embed", "embeddings"})
# Fields that change neither the output nor its framing; left out of the coalesce key.
_COALESCE_IGNORED = frozenset({"model", "stream", "keep_alive"})


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


# --- grouping keys -----------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """Make equal-meaning JSON equal: ``0.0`` and ``0`` are the same number to Ollama."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _digest(obj: Any) -> str:
    encoded = orjson.dumps(_canonical(obj), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()


def is_deterministic(validated: ValidatedRequest) -> bool:
    """Whether identical requests give identical answers: embeddings always; generation
    when ``options.seed`` is a fixed seed (≥ 0; -1 means random) or ``temperature`` is 0.
    """
    if validated.endpoint in _DETERMINISTIC_ALWAYS:
        return True
    if validated.endpoint not in ("generate", "chat"):
        return False
    options = validated.options
    seed = options.get("seed")
    if gojson.is_number(seed) and seed >= 0:
        return True
    temperature = options.get("temperature")
    return gojson.is_number(temperature) and temperature == 0


def coalesce_key(validated: ValidatedRequest) -> str | None:
    """A stable key shared by requests that may be answered by one execution, or ``None``.

    The key hashes the endpoint, the normalized model, the ``stream`` flag and every other
    field of the body except ``keep_alive`` (it changes no output), canonicalised
    (key order and ``0`` vs ``0.0`` do not matter). Choices:

    * ``stream`` is part of the key, so a streamed and a non-streamed request never share
      one: the owner of the execution serves chunks exactly in the framing it receives.
    * ``model`` is compared normalized (``llama3`` = ``llama3:latest``); the caller must
      rewrite the ``model`` field of the answer to each client's own string, since Ollama
      echoes the request's model verbatim.
    * load/unload requests (empty prompt/messages) are control operations: ``None``.
    """
    if not is_deterministic(validated) or validated.is_load_or_unload:
        return None
    rest = {
        key: value for key, value in validated.body.items() if key.lower() not in _COALESCE_IGNORED
    }
    return _digest([validated.endpoint, validated.normalized_model, validated.stream, rest])


def batch_key(validated: ValidatedRequest) -> str | None:
    """A key grouping requests one node can serve together without reloading the model.

    Generation (generate and chat share a runner): normalized model + runner options.
    Embeddings: additionally ``truncate``, ``dimensions`` and the non-runner options, so
    that every ``/api/embed`` request with the same key can be merged into one call whose
    ``input`` is the concatenation. Model management endpoints: ``None``.
    """
    if validated.endpoint in ("generate", "chat"):
        return _digest(["infer", validated.normalized_model, validated.runner_key])
    if validated.endpoint == "embed":
        body = validated.body
        return _digest(
            [
                "embed",
                validated.normalized_model,
                validated.runner_key,
                gojson.field_value(body, "truncate"),
                gojson.field_value(body, "dimensions"),
                validated.options,
            ]
        )
    if validated.endpoint == "embeddings":
        return _digest(["embeddings", validated.normalized_model, validated.runner_key])
    return None

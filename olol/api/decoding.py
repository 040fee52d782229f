"""Decoding of native request bodies and of the fields every endpoint shares.

:func:`parse_json_body` decodes a raw body as Ollama's gin binding does;
:func:`keep_alive_seconds` reads ``keep_alive``; :func:`validate_options` checks
``options`` as ``Options.FromMap`` does (a wrongly typed known key is a 400 here, where
Ollama answers 500 with the same message) and :func:`runner_options_key` extracts the
load-time options. :mod:`olol.api.validation` builds on these and re-exports them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from olol.api import errors, gojson

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
        try:
            value = _slow_decode(raw)
        except RecursionError:
            raise errors.ApiError(400, "exceeded max depth") from None
    if not isinstance(value, dict):
        raise errors.ApiError(
            400,
            f"json: cannot unmarshal {gojson.json_kind(value)} into Go value of type {go_type}",
        )
    # One set of limits for everything behind the door (store, coalescing, gRPC):
    # both checks look at the raw bytes first and walk the value only when needed.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise errors.ApiError(400, "exceeded max depth")
    if b"\\ud" in raw or b"\\uD" in raw:  # a \uD800-\uDFFF escape: maybe a lone surrogate
        value = _replace_lone_surrogates(value)
    return value


#: Deepest nesting of arrays and objects accepted in a request body. Go accepts 10,000
#: levels; the store's encoder stops at 254 for a whole record, and no real request
#: (tools, schemas, messages) comes near this.
MAX_DEPTH = 200


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_lone_surrogates(value: Any) -> Any:
    """Strings with a lone UTF-16 surrogate (``"\\ud800"``) get U+FFFD in its place, as
    Go's decoder does, in keys and values; nothing else changes."""
    def fix(text: str) -> str:
        return _LONE_SURROGATE.sub("\ufffd", text)

    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {fix(k): _replace_lone_surrogates(v) for k, v in value.items()}
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
        # Integers beyond 64 bits become floats, as Go decodes numbers into interface{}
        # (and as the store and orjson can carry them); numbers beyond float64 are a 400.
        return json.loads(first.decode("utf-8", errors="replace"), parse_int=_go_int,
                          parse_float=_go_float)


_INT64 = 2**63
#: Length past which an integer is beyond float64 for sure (float64 ends near 1.8e308);
#: checked before ``int()``, which refuses texts over 4,300 digits with a ValueError.
_MAX_INT_DIGITS = 400


def _number_out_of_range(text: str) -> errors.ApiError:
    shown = text if len(text) <= 100 else text[:100] + "..."
    return errors.ApiError(400, f"json: cannot unmarshal number {shown} into Go value of type float64")


def _go_int(text: str) -> int | float:
    if len(text) > _MAX_INT_DIGITS:
        raise _number_out_of_range(text)
    value = int(text)
    if -_INT64 <= value < _INT64:
        return value
    try:
        return float(value)
    except OverflowError:
        raise _number_out_of_range(text) from None


def _go_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # e.g. 1e400: Go's ParseFloat fails with a range error
        raise _number_out_of_range(text)
    return value


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
        if kind == "integer" and not -_INT64 <= value < _INT64:
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

"""Grouping keys of validated native requests: which requests may share one execution
(:func:`coalesce_key`, for deterministic requests only, see :func:`is_deterministic`)
and which can be served together by one loaded runner (:func:`batch_key`).

:class:`~olol.api.validation.ValidatedRequest` exposes both as properties, and
:mod:`olol.api.validation` re-exports this module's public names.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from olol.api import gojson

if TYPE_CHECKING:
    from olol.api.validation import ValidatedRequest

_DETERMINISTIC_ALWAYS = frozenset({"embed", "embeddings"})
# Fields that change neither the output nor its framing; left out of the coalesce key.
_COALESCE_IGNORED = frozenset({"model", "stream", "keep_alive"})


_INT64 = 2**63


def _canonical(value: Any) -> Any:
    """Make equal-meaning JSON equal: ``0.0`` and ``0`` are the same number to Ollama.
    (Integral floats beyond 64 bits stay floats: no integer type could hold them.)"""
    if isinstance(value, float) and value.is_integer() and -_INT64 <= value < _INT64:
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
    if seed is not None and gojson.is_number(seed) and seed >= 0:
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

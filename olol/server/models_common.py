"""Helpers shared by the Ollama model routes (``models``) and the models admin API
(``models_admin``).

The admin-key check both blueprints run before each request, the model registry lookup,
the request-field checks (model name, ``stream``), the node-list parser, and the start
and answer of an aggregated pull (NDJSON progress or the final record).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Response

from olol.api import errors
from olol.api.errors import ApiError
from olol.api.names import InvalidModelName, normalize_model_name
from olol.api.streaming import NDJSON_CONTENT_TYPE, ndjson_line, ollama_stream_error_line
from olol.registry import pull_view
from olol.server.common import current_key, get_ctx, json_response

log = logging.getLogger(__name__)

ADMIN_KEY_MESSAGE = "this endpoint needs an admin API key"
MAX_TARGET_NODES = 256


def _require_admin() -> None:
    if not get_ctx().config.keys_enabled:
        return
    key = current_key()
    if key is None or not key.admin:
        raise ApiError(403, ADMIN_KEY_MESSAGE)


def _registry() -> Any:
    registry = get_ctx().registry
    if registry is None:
        raise ApiError(503, "the model registry is not running")
    return registry


def parse_nodes(value: Any, source: str) -> list[str] | None:
    """Node addresses from a comma-separated string or a JSON list; None when empty.

    :raises ApiError: 400 for a malformed address or a node that is not a member.
    """
    from olol.cluster import normalize_address

    if value is None:
        return None
    if isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        raise ApiError(400, f"invalid {source}: expected a list of host:port addresses")
    if not items:
        if isinstance(value, str) and value.strip():  # e.g. ",,,": given, but names nothing
            raise ApiError(400, f"invalid {source}: no node address in {value.strip()!r}")
        return None
    if len(items) > MAX_TARGET_NODES:
        raise ApiError(400, f"invalid {source}: more than {MAX_TARGET_NODES} nodes")
    cluster = get_ctx().cluster
    nodes: list[str] = []
    for item in items:
        try:
            address = normalize_address(item)
        except ValueError as exc:
            raise ApiError(400, f"invalid {source}: {exc}") from None
        if cluster.node(address) is None:
            raise ApiError(400, f"invalid {source}: unknown node '{address}'")
        if address not in nodes:
            nodes.append(address)
    return nodes

def _model_field(body: dict[str, Any], missing: ApiError) -> str:
    name = body.get("model")
    if name is None or name == "":
        name = body.get("name")
    if name is None or name == "":
        raise missing
    if not isinstance(name, str):
        raise errors.invalid_model_name()
    return name


def _valid_name(name: str, error: ApiError) -> str:
    try:
        return normalize_model_name(name)
    except InvalidModelName:
        raise error from None


def _want_stream(body: dict[str, Any], default: bool = True) -> bool:
    value = body.get("stream")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal into Go struct field .stream of type bool")
    return value


def _ndjson(records: Iterator[bytes]) -> Response:
    resp = Response(records, status=200, content_type=NDJSON_CONTENT_TYPE)
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


# -- pull ----------------------------------------------------------------------------------


def _start_pull(model: str, targets: list[str] | None, insecure: bool) -> Any:
    try:
        return _registry().pull_model(model, targets, insecure=insecure)
    except ApiError:
        raise
    except (ValueError, LookupError) as exc:
        raise ApiError(400, str(exc) or "cannot pull this model") from None
    except RuntimeError as exc:  # no node can take it
        raise ApiError(503, str(exc) or "no node can take this model") from None


def _pull_response(op: Any, stream: bool, idle_s: float, coherent: bool = False) -> Response:
    """The operation's aggregated progress as NDJSON, or its final record.

    ``coherent``: one progress per layer, as one Ollama would send it
    (:mod:`olol.registry.pull_view`); otherwise every node's records (admin API)."""
    if not stream:
        last: dict[str, Any] = {}
        for record in op.events(timeout=idle_s):
            last = record
            if "error" in record:
                raise errors.node_failure(str(record["error"]))
        if last.get("status") != "success":
            raise ApiError(502, "pull ended without an outcome")
        return json_response(last)

    def records() -> Iterator[bytes]:
        ended = False
        try:
            log_records = op.events(timeout=idle_s)
            for record in (pull_view.coherent(log_records) if coherent else log_records):
                yield ndjson_line(record)
                if "error" in record or record.get("status") == "success":
                    ended = True
        except Exception as exc:  # noqa: BLE001 - the status line is already sent
            log.warning("pull %s: progress stream failed: %s", getattr(op, "id", "?"), exc)
            ended = True
            yield ollama_stream_error_line(f"pull progress lost: {exc}")
        if not ended:
            yield ollama_stream_error_line("pull progress timed out")

    return _ndjson(records())


def _failures(results: dict[str, Any]) -> list[str]:
    return [f"{node}: {outcome.get('error')}" for node, outcome in sorted(results.items())
            if isinstance(outcome, dict) and outcome.get("error")]

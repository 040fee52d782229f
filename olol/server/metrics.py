"""``GET /metrics``: the proxy's Prometheus metrics (:mod:`olol.metrics`), and the count
of every HTTP answer by route pattern, method and status code.

With API keys enabled, ``/metrics`` needs an admin key (401 without a key, 403 with
another one), unless ``metrics_public`` is set: then it is open like the liveness and
readiness probes (the app skips the key check for it).
"""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, request

from olol.api.errors import ApiError
from olol.server.common import EXTENSION, current_key, get_ctx

METRICS_PATH = "/metrics"
#: Methods counted by name; any other (clients choose it) is counted as OTHER.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

bp = Blueprint("metrics", __name__)


def is_public(ctx) -> bool:
    """Whether ``/metrics`` is answered without a key."""
    return ctx.config.metrics_public


@bp.route(METRICS_PATH, methods=["GET"])
def metrics() -> Response:
    ctx = get_ctx()
    if ctx.config.keys_enabled and not is_public(ctx):
        key = current_key()
        if key is None or not key.admin:
            raise ApiError(403, "this endpoint needs an admin API key (or metrics_public)")
    m = ctx.metrics
    if m is None:
        raise ApiError(404, "metrics are not enabled on this proxy")
    body, content_type = m.exposition(request.headers.get("Accept"))
    return Response(body, status=200, content_type=content_type)


@bp.record
def _install(state) -> None:
    """Count every HTTP answer of the app (``after_request``), with the app's context
    taken once here rather than looked up on every request."""
    ctx = state.app.extensions[EXTENSION]

    def count(response: Response) -> Response:
        m = ctx.metrics
        if m is not None:
            req = cast(Any, request)._get_current_object()  # one context lookup, not three
            rule = req.url_rule
            method = req.method
            m.http_request(rule.rule if rule is not None else "unmatched",
                           method if method in METHODS else "OTHER", response.status_code)
        return response

    state.app.after_request(count)

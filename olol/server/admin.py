"""The admin API: nodes, queue statistics, liveness.

When keys are enabled every route but ``/olol/v1/health`` needs an admin key (403
otherwise; the key itself was already checked by the app, 401 when missing).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from olol import __version__
from olol.api.errors import ApiError
from olol.cluster import normalize_address
from olol.server.common import current_key, get_ctx, json_response, read_json_body

bp = Blueprint("admin", __name__, url_prefix="/olol/v1")

#: Paths of this blueprint that need no key at all.
PUBLIC_PATHS = frozenset({"/olol/v1/health"})



@bp.before_request
def _require_admin() -> None:
    if request.path in PUBLIC_PATHS or not get_ctx().config.keys_enabled:
        return
    key = current_key()
    if key is None or not key.admin:
        raise ApiError(403, "this endpoint needs an admin API key")


def node_view(node: Any, verbose: bool = False) -> dict[str, Any]:
    """A node's state as JSON (``NodeState.to_dict()``; plus the last hardware report
    when ``verbose``)."""
    data = node.to_dict() if hasattr(node, "to_dict") else dict(vars(node))
    if verbose:
        data["hardware"] = getattr(node, "hardware", None)
    return data


@bp.route("/nodes", methods=["GET"])
def list_nodes() -> Response:
    verbose = request.args.get("verbose", "").lower() in ("1", "true", "yes")
    nodes = get_ctx().cluster.list_nodes()
    return json_response({"nodes": [node_view(node, verbose) for node in nodes]})


@bp.route("/nodes", methods=["POST"])
def add_node() -> Response:
    body = read_json_body()
    address = body.get("address")
    cluster = get_ctx().cluster
    try:
        address = normalize_address(address)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    existed = cluster.node(address) is not None
    node = cluster.add_node(address, source="api")
    return json_response(node_view(node), status=200 if existed else 201)


@bp.route("/nodes/<path:address>", methods=["DELETE"])
def remove_node(address: str) -> Response:
    if not get_ctx().cluster.remove_node(address):
        raise ApiError(404, f"node '{address}' not found")
    return json_response({"removed": address})


@bp.route("/queue", methods=["GET"])
def queue_stats() -> Response:
    return json_response(get_ctx().queue.get_queue_stats())


@bp.route("/health", methods=["GET", "HEAD"])
def health() -> Response:
    return json_response({"status": "ok", "version": __version__})

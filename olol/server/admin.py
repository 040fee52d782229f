"""The admin API: nodes, queue statistics, API keys, liveness and readiness.

When keys are enabled every route but ``/olol/v1/health`` and ``/olol/v1/ready`` needs
an admin key (403 otherwise; the key itself was already checked by the app, 401 when
missing).

Keys can be created, listed and revoked while the proxy serves (``/olol/v1/keys``): a
key is looked up in the store on every request, so a revoked key is refused on its
next request.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from olol import __version__
from olol.api.errors import ApiError
from olol.cluster import normalize_address
from olol.keys import KeyStore
from olol.server.common import current_key, get_ctx, json_response, read_json_body
from olol.settings import RuntimeSettings

bp = Blueprint("admin", __name__, url_prefix="/olol/v1")

#: Paths of this blueprint that need no key at all.
PUBLIC_PATHS = frozenset({"/olol/v1/health", "/olol/v1/ready"})


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


@bp.route("/ready", methods=["GET", "HEAD"])
def ready() -> Response:
    """Readiness for load balancers: 200 when the proxy can serve inference, else 503
    with the reasons (shutting down, store closed, no healthy node)."""
    ctx = get_ctx()
    reasons = ctx.readiness()
    nodes = ctx.cluster.list_nodes()
    healthy = [n for n in nodes if n.healthy]
    body: dict[str, Any] = {"status": "not ready" if reasons else "ready", "healthy_nodes": len(healthy),
            "nodes": len(nodes)}
    if reasons:
        body["reasons"] = reasons
        body["error"] = "not ready: " + "; ".join(reasons)
    return json_response(body, status=503 if reasons else 200)


# -- API keys ------------------------------------------------------------------------------

def _keys() -> KeyStore:
    # there is a key store even while keys are disabled: keys can be prepared before
    return get_ctx().keys


@bp.route("/keys", methods=["GET"])
def list_keys() -> Response:
    """Every key (never the secret nor its hash); ``?revoked=false`` hides revoked ones."""
    include = request.args.get("revoked", "true").lower() not in ("0", "false", "no")
    return json_response({"keys": [_key_view(k) for k in _keys().list(include_revoked=include)]})


@bp.route("/keys", methods=["POST"])
def create_key() -> Response:
    """``{"name", "admin"?, "default_priority"?}`` -> 201 with the key, shown this once."""
    body = read_json_body()
    name = body.get("name")
    admin = body.get("admin", False)
    priority = body.get("default_priority", 0)
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string")
    if not isinstance(admin, bool):
        raise ApiError(400, "admin must be true or false")
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 100:
        raise ApiError(400, "default_priority must be an integer in -100..100")
    try:
        key_id, token = _keys().create(name, admin=admin, default_priority=priority)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    info = _keys().get(key_id)
    return json_response({**_key_view(info), "key": token}, status=201,
                         headers={"Location": f"/olol/v1/keys/{key_id}"})


@bp.route("/keys/<key_id>", methods=["DELETE"])
def revoke_key(key_id: str) -> Response:
    """Revoke a key: refused from its next request on. The last active admin key cannot
    be revoked while keys are enabled (nobody could manage keys any more)."""
    store = _keys()
    info = store.get(key_id)
    if info is None:
        raise ApiError(404, f"key '{key_id}' not found")
    if info.revoked:
        return json_response({"revoked": key_id})
    if info.admin and get_ctx().config.keys_enabled:
        admins = [k for k in store.list(include_revoked=False) if k.admin]
        if len(admins) <= 1:
            raise ApiError(409, "this is the last active admin key: create another admin key "
                           "before revoking it")
    store.revoke(key_id)
    return json_response({"revoked": key_id})


def _key_view(info: Any) -> dict[str, Any]:
    data = info.to_dict()
    data.pop("hash", None)
    return data


# -- run-time settings ---------------------------------------------------------------------

def _settings() -> RuntimeSettings:
    settings = get_ctx().settings
    if settings is None:  # an app assembled without them (tests, tools)
        raise ApiError(503, "run-time settings are not available on this server")
    return settings


@bp.route("/config", methods=["GET"])
def get_config() -> Response:
    """Every setting: its value, default, boot value and whether it can change live."""
    return json_response({"settings": _settings().view()})


@bp.route("/config", methods=["PATCH"])
def patch_config() -> Response:
    """``{"name": value, ...}`` (``null`` resets to the boot value): applied at once,
    kept across restarts, recorded with who changed it."""
    from olol.settings import SettingError

    body = read_json_body()
    key = current_key()
    who = key.name if key is not None else f"{request.remote_addr} (keys off)"
    try:
        changed = _settings().change(body, who)
    except SettingError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response({"changed": changed})


@bp.route("/config/history", methods=["GET"])
def config_history() -> Response:
    """The latest setting changes, newest first (``?limit=``, at most 1,000)."""
    try:
        limit = max(1, min(1000, int(request.args.get("limit", "100"))))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    return json_response({"changes": _settings().history(limit)})


# -- statistics ----------------------------------------------------------------------------

@bp.route("/stats", methods=["GET"])
def request_stats() -> Response:
    """Request statistics per period start, grouped by model, node and/or key:
    ``?period=hourly|daily|weekly&by=model,node,key|total&since=7d&until=...&limit=``
    (olol.stats); percentiles are computed from the stored histograms."""
    from olol.stats import QueryError, parse_query

    ctx = get_ctx()
    if ctx.stats is None:
        raise ApiError(404, "this proxy keeps no request statistics")
    try:
        query = parse_query(request.args, ctx.clock())
        rows = ctx.stats.query(**query)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    if "key" in query["by"]:
        names = _key_names({r["key"] for r in rows if r.get("key")})
        for row in rows:
            row["key_name"] = names.get(row.get("key") or "")
    return json_response({"period": query["period"], "by": list(query["by"]) or ["total"],
                          "since": _iso(query["since"]), "rows": rows})


@bp.route("/stats/servers", methods=["GET"])
def server_stats() -> Response:
    """The nodes' ``server_stats`` samples, oldest first:
    ``?node=HOST:PORT&type=slots,gpu_util&since=24h&limit=``."""
    from olol.stats import SERVER_TYPES, QueryError, parse_since, server_samples

    ctx = get_ctx()
    args = request.args
    unknown = sorted(set(args) - {"node", "type", "since", "limit"})
    try:
        if unknown:
            raise QueryError(f"unknown parameter {unknown[0]!r}; known: node, type, since, "
                             "limit")
        types = tuple(t.strip() for t in args.get("type", "").split(",") if t.strip())
        bad = [t for t in types if t not in SERVER_TYPES]
        if bad:
            raise QueryError(f"type must be among {', '.join(SERVER_TYPES)}, got {bad[0][:40]!r}")
        since = parse_since(args["since"], ctx.clock()) if "since" in args else None
        try:
            limit = int(args.get("limit", "1000"))
        except ValueError:
            raise QueryError("limit must be an integer") from None
        if not 1 <= limit <= 10_000:
            raise QueryError(f"limit must be in 1..10000, got {limit}")
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    samples = server_samples(ctx.db, now=ctx.clock(),
                             retention_hours=ctx.config.server_stats_retention_hours,
                             node=args.get("node") or None, types=types, since=since,
                             limit=limit)
    return json_response({"samples": samples})


def _key_names(ids: set[str]) -> dict[str, str | None]:
    store = get_ctx().keys
    out: dict[str, str | None] = {}
    for key_id in ids:
        info = store.get(key_id) if store is not None else None
        out[key_id] = info.name if info is not None else None
    return out


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

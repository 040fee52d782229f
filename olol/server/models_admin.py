"""The models/maintenance admin API, under ``/olol/v1`` (``admin_bp``).

``GET /models``, ``GET /models/<name>``,
``POST /models/pull``, ``DELETE /models/<name>?force=1&nodes=a,b``,
``POST /models/optimize`` (``{"apply": bool}``), ``POST /models/sync``,
``GET /maintenance``, ``POST /maintenance/<job>/run``.

Every route here needs an admin key when keys are enabled (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from olol.api import errors
from olol.api.errors import ApiError
from olol.server.common import get_ctx, json_response, read_json_body
from olol.server.models_common import (
    _failures,
    _model_field,
    _pull_response,
    _registry,
    _require_admin,
    _start_pull,
    _valid_name,
    _want_stream,
    parse_nodes,
)

admin_bp = Blueprint("models_admin", __name__, url_prefix="/olol/v1")

admin_bp.before_request(_require_admin)


@admin_bp.route("/models", methods=["GET"])
def admin_models() -> Response:
    registry = _registry()
    return json_response({"models": registry.get_model_status(),
                          "pulls": registry.active_pulls()})


@admin_bp.route("/models/<path:name>", methods=["GET"])
def admin_model(name: str) -> Response:
    _valid_name(name, errors.invalid_model_name())
    found = _registry().get_model_status(name)
    if not found:
        raise errors.model_not_found("show", name)
    return json_response(found[0])


@admin_bp.route("/models/pull", methods=["POST"])
def admin_pull() -> Response:
    body = read_json_body()
    model = _model_field(body, errors.model_required())
    _valid_name(model, errors.invalid_model_name())
    targets = parse_nodes(body.get("nodes"), "nodes")
    stream = _want_stream(body)
    op = _start_pull(model, targets, body.get("insecure") is True)
    return _pull_response(op, stream, get_ctx().config.stream_idle_timeout_s)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@admin_bp.route("/models/<path:name>", methods=["DELETE"])
def admin_delete(name: str) -> Response:
    from olol.registry import LastCopyError, ModelNotFoundError, PinnedModelError

    _valid_name(name, errors.invalid_delete_name(name))
    targets = parse_nodes(request.args.get("nodes"), "nodes")
    force = _flag(request.args.get("force"))
    try:
        results = _registry().remove_model(name, targets, force=force)
    except ModelNotFoundError:
        raise errors.model_not_found("delete", name) from None
    except (LastCopyError, PinnedModelError) as exc:
        raise ApiError(409, str(exc)) from None
    return json_response({"model": name, "results": results, "failed": _failures(results)})


@admin_bp.route("/models/optimize", methods=["POST"])
def admin_optimize() -> Response:
    body = read_json_body() if request.content_length else {}
    apply = body.get("apply", False)
    if not isinstance(apply, bool):
        raise ApiError(400, "invalid apply: must be true or false")
    registry = _registry()
    plan = registry.optimize_model_distribution()
    answer: dict[str, Any] = {"plan": plan, "applied": apply}
    if apply:
        answer["results"] = registry.apply(plan)
    return json_response(answer)


@admin_bp.route("/models/sync", methods=["POST"])
def admin_sync() -> Response:
    return json_response(_registry().synchronize_models())


@admin_bp.route("/maintenance", methods=["GET"])
def admin_maintenance() -> Response:
    jobs = get_ctx().maintenance
    return json_response({"jobs": jobs.status() if jobs is not None else []})


@admin_bp.route("/maintenance/<name>/run", methods=["POST"])
def admin_run_job(name: str) -> Response:
    from olol.maintenance import UnknownJobError

    jobs = get_ctx().maintenance
    if jobs is None:
        raise ApiError(404, f"no maintenance job named '{name}'")
    try:
        return json_response(jobs.run_now(name))
    except UnknownJobError:
        raise ApiError(404, f"no maintenance job named '{name}'") from None

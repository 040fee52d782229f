"""Asynchronous jobs (``/olol/v1/jobs``): submit now, fetch the result by id later.

Jobs have no waiting HTTP connection, so they survive proxy restarts (the queue puts
interrupted jobs back to pending). Errors use the native shape ``{"error": "..."}``.
When keys are enabled a non-admin key sees only the jobs it submitted.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from olol.api.errors import ApiError
from olol.api.validation import VALIDATORS
from olol.ids import new_id
from olol.server.common import current_key, get_ctx, json_response, read_json_body, request_priority
from olol.server.inference import build_record, check_admitting, check_model_known, enqueue

bp = Blueprint("jobs", __name__, url_prefix="/olol/v1/jobs")

JOB_ENDPOINTS = ("generate", "chat", "embed", "embeddings")
STATUSES = ("pending", "processing", "completed", "failed", "interrupted", "cancelled")
MAX_LIST = 1000

_PUBLIC_FIELDS = (
    "id", "status", "endpoint", "model", "priority", "attempts", "server_assigned",
    "result", "error", "error_status", "created_at", "updated_at", "started_at",
    "completed_at", "claimed_by",
)


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    """What a client sees of a job record (never the body or internal keys)."""
    return {name: record.get(name) for name in _PUBLIC_FIELDS}


def _visible(record: dict[str, Any] | None) -> bool:
    if record is None or record.get("kind") != "job":
        return False
    key = current_key()
    return key is None or key.admin or record.get("key_id") == key.id


def _get_job(job_id: str) -> dict[str, Any]:
    record = get_ctx().queue.get(job_id)
    if record is None or not _visible(record):
        raise ApiError(404, f"job '{job_id}' not found")
    return record


@bp.route("", methods=["POST"])
def submit_job() -> Response:
    ctx = get_ctx()
    envelope = read_json_body()
    endpoint = envelope.get("endpoint")
    if endpoint not in JOB_ENDPOINTS:
        raise ApiError(400, f"endpoint must be one of {', '.join(JOB_ENDPOINTS)}")
    body = envelope.get("body")
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object (the native request body)")
    if endpoint in ("generate", "chat"):
        body = {**body, "stream": False}
    validated = VALIDATORS[endpoint](body)
    check_admitting(ctx)
    check_model_known(ctx, validated)
    priority = request_priority(envelope.get("priority"))
    key = current_key()
    job_id = new_id()
    record = build_record(
        job_id, validated, body, kind="job", api="ollama", stream=False,
        priority=priority, session=None, key_id=key.id if key else None,
    )
    position = enqueue(ctx, record)
    return json_response(
        {"id": job_id, "status": "pending", "position": position},
        status=202,
        headers={"Location": f"/olol/v1/jobs/{job_id}"},
    )


@bp.route("/<job_id>", methods=["GET"])
def get_job(job_id: str) -> Response:
    return json_response(job_view(_get_job(job_id)))


@bp.route("/<job_id>", methods=["DELETE"])
def cancel_job(job_id: str) -> Response:
    ctx = get_ctx()
    record = _get_job(job_id)
    if record.get("status") in ("completed", "failed", "interrupted", "cancelled"):
        raise ApiError(409, f"job '{job_id}' already finished ({record.get('status')})")
    if not ctx.queue.cancel(job_id):
        record = ctx.queue.get(job_id) or record
        raise ApiError(409, f"job '{job_id}' already finished ({record.get('status')})")
    return json_response(job_view(ctx.queue.get(job_id) or record))


@bp.route("", methods=["GET"])
def list_jobs() -> Response:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
    limit_text = request.args.get("limit", "100")
    try:
        limit = int(limit_text)
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    limit = max(1, min(MAX_LIST, limit))
    records = get_ctx().queue.list_jobs(status=status, limit=limit)
    jobs = [job_view(record) for record in records if _visible(record)]
    return json_response({"jobs": jobs})

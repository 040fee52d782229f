"""Model management through the front door: Ollama's model routes for the whole cluster.

``bp`` answers Ollama's model routes for the whole cluster (OLLAMA-API.md §9):

* ``POST /api/pull`` — one aggregated pull (``ModelRegistry.pull_model``) streamed as
  Ollama's progress records plus ``node``/``nodes`` fields; ``stream:false`` answers the
  final record (500 with the error on failure).
* ``DELETE /api/delete`` — on every node that has the model (an explicit request: it may
  remove the last copy); 200 with an empty body; 404 ``model 'x' not found``.
* ``POST /api/copy`` — on every node holding the source; 200 with an empty body.
* ``HEAD|POST /api/blobs/<digest>`` — a blob goes to one node chosen by placement; the
  store remembers digest -> node (table ``model_blobs``) so that the ``/api/create``
  naming it in ``files`` runs on the same node.
* ``POST /api/create``, ``POST /api/push`` — run on one node, progress relayed verbatim.

``X-OLOL-Nodes: host:port,host:port`` restricts pull and delete to those nodes.

The models/maintenance admin API (``admin_bp``) lives in ``olol.server.models_admin``, the
helpers both blueprints share in ``olol.server.models_common``; ``admin_bp`` and
``parse_nodes`` are re-exported here.

Every route here needs an admin key when keys are enabled (403 otherwise).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request

from olol.api import errors
from olol.api.errors import ApiError
from olol.api.names import InvalidModelName, normalize_model_name
from olol.api.streaming import ndjson_line, ollama_stream_error_line
from olol.context import Services
from olol.rpc.client import NodeError
from olol.server.common import get_ctx, json_response, read_json_body
from olol.server.models_admin import admin_bp
from olol.server.models_common import (
    ADMIN_KEY_MESSAGE,
    MAX_TARGET_NODES,
    _failures,
    _model_field,
    _ndjson,
    _pull_response,
    _registry,
    _require_admin,
    _start_pull,
    _valid_name,
    _want_stream,
    parse_nodes,
)

__all__ = [
    "ADMIN_KEY_MESSAGE", "BLOB_CHUNK", "BLOB_TABLE", "MAX_TARGET_NODES", "NODES_HEADER",
    "admin_bp", "blob_head", "blob_node", "blob_post", "bp", "copy", "create", "delete",
    "parse_nodes", "place_node", "pull", "push",
]

log = logging.getLogger(__name__)

bp = Blueprint("models", __name__)

NODES_HEADER = "X-OLOL-Nodes"
BLOB_TABLE = "model_blobs"
BLOB_CHUNK = 1024 * 1024
_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")

bp.before_request(_require_admin)


def _header_nodes() -> list[str] | None:
    return parse_nodes(request.headers.get(NODES_HEADER), f"{NODES_HEADER} header")


def _refresh(ctx: Services, addresses: list[str]) -> None:
    """Re-read the nodes' model lists after a change (best effort)."""
    for address in addresses:
        try:
            ctx.cluster.refresh(address, timeout=ctx.config.health_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the next health sweep catches up
            log.info("refresh of %s after a model change failed: %s", address, exc)


# -- pull ----------------------------------------------------------------------------------


@bp.route("/api/pull", methods=["POST"])
def pull() -> Response:
    body = read_json_body("api.PullRequest")
    model = _model_field(body, errors.invalid_model_name())
    _valid_name(model, errors.invalid_model_name())
    insecure = body.get("insecure") is True
    stream = _want_stream(body)
    op = _start_pull(model, _header_nodes(), insecure)
    return _pull_response(op, stream, get_ctx().config.stream_idle_timeout_s, coherent=True)


# -- delete, copy --------------------------------------------------------------------------


def _holders(ctx: Services, key: str) -> list[str]:
    return sorted(n.address for n in ctx.cluster.nodes_with_model(key))


@bp.route("/api/delete", methods=["DELETE"])
def delete() -> Response:
    ctx = get_ctx()
    body = read_json_body("api.DeleteRequest")
    raw = body.get("model") or body.get("name") or ""
    if not isinstance(raw, str):
        raise errors.invalid_delete_name(str(raw))
    key = _valid_name(raw, errors.invalid_delete_name(raw))
    targets = _header_nodes()
    holders = _holders(ctx, key)
    if targets is not None:
        holders = [a for a in holders if a in targets]
    if not holders:
        raise errors.model_not_found("delete", raw)
    # an Ollama client's delete is an explicit operator request: the last copy may go
    from olol.registry import ModelNotFoundError

    try:
        results = _registry().remove_model(raw, holders, force=True)
    except ModelNotFoundError:
        raise errors.model_not_found("delete", raw) from None
    failed = _failures(results)
    if failed:
        raise errors.node_failure("delete failed on " + "; ".join(failed))
    return Response(b"", status=200)


@bp.route("/api/copy", methods=["POST"])
def copy() -> Response:
    ctx = get_ctx()
    body = read_json_body("api.CopyRequest")
    source, destination = body.get("source"), body.get("destination")
    if not isinstance(source, str):
        raise errors.invalid_source_name("" if source is None else str(source))
    if not isinstance(destination, str):
        raise errors.invalid_destination_name("" if destination is None else str(destination))
    key = _valid_name(source, errors.invalid_source_name(source))
    _valid_name(destination, errors.invalid_destination_name(destination))
    holders = _holders(ctx, key)
    if not holders:
        raise errors.model_not_found("copy", source)
    from olol.registry import ModelNotFoundError

    try:
        results = _registry().copy_model(source, destination, holders)
    except ModelNotFoundError:
        raise errors.model_not_found("copy", source) from None
    failed = _failures(results)
    if failed:
        raise errors.node_failure("copy failed on " + "; ".join(failed))
    return Response(b"", status=200)


# -- blobs, create, push -------------------------------------------------------------------


def _blob_table(db: Any) -> str:
    from olol.store.schema import Field, TableSchema

    if BLOB_TABLE not in getattr(db, "schemas", {}):
        db.register_table(TableSchema(BLOB_TABLE, {
            "digest": Field("str", required=True),
            "node": Field("str", required=True),
            "size": Field("int", nullable=True),
        }))
    return BLOB_TABLE


def _canonical_digest(digest: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise ApiError(400, f"invalid digest format \"{digest}\"")
    return "sha256:" + digest[7:].lower()


def blob_node(ctx: Services, digest: str) -> str | None:
    """The member node a blob was uploaded to, if the store remembers one."""
    row = ctx.db.search_one(_blob_table(ctx.db), {"digest": digest})
    if row is None or ctx.cluster.node(row["node"]) is None:
        return None
    return row["node"]


def _remember_blob(ctx: Services, digest: str, node: str, size: int | None) -> None:
    table = _blob_table(ctx.db)
    ctx.db.upsert(table, {"digest": digest, "node": node, "size": size}, {"digest": digest})


def place_node(ctx: Services, size: int | None = None, exclude: tuple[str, ...] = ()) -> str:
    """The healthy node with the most free disk that fits ``size`` bytes (ties: fewest
    requests in flight, then address).

    :raises ApiError: 503 when no healthy node can take it.
    """
    candidates = []
    for node in ctx.cluster.healthy_nodes():
        if node.address in exclude:
            continue
        disk = (getattr(node, "hardware", None) or {}).get("disk") or {}
        free = disk.get("free_bytes") if isinstance(disk, dict) else None
        free = free if isinstance(free, int) and free > 0 else None
        if size and free is not None and free < size:
            continue
        in_flight = getattr(node, "in_flight", 0) or 0
        candidates.append((-(free or 0), in_flight, node.address))
    if not candidates:
        raise ApiError(503, "no healthy node has room for this model")
    return min(candidates)[2]


def _find_blob(ctx: Services, digest: str) -> str | None:
    """A node that has the blob: the remembered one, else the first healthy one asked."""
    node = blob_node(ctx, digest)
    timeout = ctx.config.health_timeout_s
    if node is not None:
        try:
            if ctx.cluster.client(node).blob_exists(digest, timeout=timeout):
                return node
        except NodeError as exc:
            log.info("blob check on %s failed: %s", node, exc.message)
    for state in ctx.cluster.healthy_nodes():
        if state.address == node:
            continue
        try:
            if ctx.cluster.client(state.address).blob_exists(digest, timeout=timeout):
                _remember_blob(ctx, digest, state.address, None)
                return state.address
        except NodeError as exc:
            log.info("blob check on %s failed: %s", state.address, exc.message)
    return None


@bp.route("/api/blobs/<digest>", methods=["HEAD"])
def blob_head(digest: str) -> Response:
    ctx = get_ctx()
    digest = _canonical_digest(digest)
    if _find_blob(ctx, digest) is None:
        raise errors.blob_not_found(digest)
    return Response(b"", status=200)


@bp.route("/api/blobs/<digest>", methods=["POST"])
def blob_post(digest: str) -> Response:
    ctx = get_ctx()
    digest = _canonical_digest(digest)
    limit = int(ctx.config.max_blob_bytes)
    size = request.content_length
    if size is not None and size > limit:
        raise errors.body_too_large(limit)
    node = blob_node(ctx, digest)
    if node is None or ctx.cluster.node(node) is None or \
            node not in {n.address for n in ctx.cluster.healthy_nodes()}:
        node = place_node(ctx, size)
    stream = request.stream
    sent = [0]

    def chunks() -> Iterator[bytes]:
        while True:
            piece = stream.read(BLOB_CHUNK)
            if not piece:
                return
            sent[0] += len(piece)
            if sent[0] > limit:
                raise ValueError("blob larger than the configured limit")
            yield piece

    try:
        status = ctx.cluster.client(node).upload_blob(
            digest, chunks(), size or 0, timeout=ctx.config.pull_timeout_s)
    except NodeError as exc:
        raise ApiError(exc.http_status if 400 <= exc.http_status < 600 else 502,
                       exc.message) from None
    if status >= 400:
        raise ApiError(status, f"blob upload to {node} failed")
    _remember_blob(ctx, digest, node, size if size is not None else sent[0])
    return Response(b"", status=status if status in (200, 201) else 201)


def _relay(ctx: Services, node: str, call: Callable[..., Any], body: dict[str, Any],
           stream: bool) -> Response:
    """Run a progress-streaming node call and answer like Ollama: NDJSON records, or
    the last record; refresh the node's model list when it ends."""
    def fail(exc: NodeError) -> ApiError:
        return errors.node_failure(exc.message, None if exc.mid_stream else exc.http_status)

    progress = call(body, timeout=ctx.config.pull_timeout_s)
    try:
        first = next(progress, None)
    except NodeError as exc:
        progress.cancel()
        raise fail(exc) from None
    if not stream:
        last = first or {}
        try:
            for record in progress:
                last = record
        except NodeError as exc:
            raise fail(exc) from None
        finally:
            progress.cancel()
            _refresh(ctx, [node])
        if "error" in last:
            raise errors.node_failure(str(last["error"]))
        return json_response(last)

    def records() -> Iterator[bytes]:
        try:
            if first is not None:
                yield ndjson_line(first)
            for record in progress:
                yield ndjson_line(record)
        except NodeError as exc:
            yield ollama_stream_error_line(exc.message)
        finally:
            progress.cancel()
            _refresh(ctx, [node])

    return _ndjson(records())


@bp.route("/api/create", methods=["POST"])
def create() -> Response:
    ctx = get_ctx()
    body = read_json_body("api.CreateRequest")
    model = _model_field(body, errors.model_required())
    _valid_name(model, errors.invalid_model_name())
    stream = _want_stream(body)
    files = body.get("files")
    digests: list[str] = []
    if isinstance(files, dict):
        digests = [d for d in files.values() if isinstance(d, str) and _DIGEST_RE.match(d)]
    node = None
    for digest in digests:
        found = _find_blob(ctx, "sha256:" + digest[7:].lower())
        if found is None:
            continue  # the node answers Ollama's own error for a missing blob
        if node is not None and found != node:
            raise ApiError(400, f"the blobs of this model were uploaded to different nodes "
                                f"({node} and {found}); upload them again")
        node = found
    source = body.get("from")
    if node is None and isinstance(source, str) and source:
        try:
            holders = _holders(ctx, normalize_model_name(source))
        except InvalidModelName:
            holders = []
        node = holders[0] if holders else None
    if node is None:
        node = place_node(ctx)
    return _relay(ctx, node, ctx.cluster.client(node).create, body, stream)


@bp.route("/api/push", methods=["POST"])
def push() -> Response:
    ctx = get_ctx()
    body = read_json_body("api.PushRequest")
    model = _model_field(body, errors.model_required())
    key = _valid_name(model, errors.invalid_model_name())
    stream = _want_stream(body)
    holders = _holders(ctx, key)
    if not holders:
        raise ApiError(404, f'model "{model}" not found')
    node = min(holders, key=lambda a: (getattr(ctx.cluster.node(a), "in_flight", 0) or 0, a))
    return _relay(ctx, node, ctx.cluster.client(node).push, body, stream)

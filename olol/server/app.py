"""``create_app(ctx)``: the front door's Flask application.

Blueprints: the native Ollama API (``ollama``), the OpenAI-compatible API under
``/v1`` (``openai``, and ``responses`` for ``/v1/responses``), the Anthropic-compatible
``/v1/messages`` (``anthropic``), asynchronous jobs under ``/olol/v1/jobs`` (``jobs``) and the
admin API under ``/olol/v1`` (``admin``), and model management (``models``: Ollama's
pull, delete, copy, create, blobs and push, plus the models and maintenance admin API).
Errors are rendered in the API's own shape:
``{"type": "error", "error": {"type", "message"}}`` for ``/v1/messages``,
``{"error": {"message", "type", ...}}`` elsewhere under ``/v1``, ``{"error": "..."}``
elsewhere;
unknown routes and wrong methods answer gin's plain-text ``404 page not found`` /
``405 method not allowed`` as Ollama does. Nothing a client sends produces a stack
trace: unexpected exceptions are logged and answered 500 ``internal error``; a store
that cannot be reached (or is closed) answers 503.

API keys (``config.keys_enabled``): every route needs ``Authorization: Bearer <key>``
(401 otherwise) except the liveness probes ``/`` and ``/olol/v1/health``; the admin
routes need an admin key (403), and so does ``/metrics`` unless ``metrics_public``.
Under waitress the key and the body's size are first checked on the headers, before
the body is read (:mod:`olol.server.door`). The dashboard under ``/olol/ui``
(:mod:`olol.ui`) checks its own log-ins: an admin key in a header, or its session cookie.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from olol import ui
from olol.api.errors import ApiError
from olol.context import ProxyContext, Services
from olol.server import admin, anthropic, jobs, models, ollama, openai, openapi, responses
from olol.server import metrics as metrics_bp
from olol.server import passthrough as passthrough_bp
from olol.server.common import (
    AFTER_RESPONSE,
    EXTENSION,
    is_openai_path,
    json_response,
)
from olol.server.door import PUBLIC_PATHS, request_key, unauthorized
from olol.store import StoreClosedError, StoreUnavailableError

log = logging.getLogger(__name__)


def render_error(err: ApiError) -> Response:
    """``err`` in the shape of the API the request addressed."""
    if anthropic.is_anthropic_path(request.path):
        body = err.anthropic_body()
    elif is_openai_path(request.path):
        body = err.openai_body()
    else:
        body = err.ollama_body()
    return json_response(body, status=err.status, headers=err.headers)


def _plain(text: str, status: int, headers: dict | None = None) -> Response:
    resp = Response(text, status=status, content_type="text/plain")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


class AfterResponse:
    """WSGI middleware: work a handler defers (``environ[AFTER_RESPONSE].append(fn)``)
    runs when the server closes the response, i.e. once it has been written or the
    client went away; each callable runs even when an earlier one fails."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        pending: list = []
        environ[AFTER_RESPONSE] = pending

        def run() -> None:
            while pending:
                work = pending.pop(0)
                try:
                    work()
                except Exception:  # noqa: BLE001 - the rest must still run
                    log.exception("deferred work after %s failed", environ.get("PATH_INFO"))

        try:
            body = self.app(environ, start_response)
        except BaseException:
            run()
            raise
        return ClosingIterator(body, [run])


def create_app(services: Services | ProxyContext) -> Flask:
    """Build the app around the proxy's :class:`~olol.context.Services` (or a
    :class:`~olol.context.ProxyContext`, frozen here: one without a key store gets a
    :class:`~olol.keys.KeyStore` on its ``db``)."""
    ctx = services.services() if isinstance(services, ProxyContext) else services
    app = Flask("olol.server")
    app.extensions[EXTENSION] = ctx
    app.url_map.strict_slashes = False

    @app.before_request
    def _authenticate() -> None:
        g.olol_key = None
        if not ctx.config.keys_enabled or request.url_rule is None:
            return
        if request.path in PUBLIC_PATHS:
            return
        if request.blueprint == ui.bp.name:  # its own check: a key, or its session cookie
            return
        if request.path == metrics_bp.METRICS_PATH and metrics_bp.is_public(ctx):
            return
        info = ctx.keys.verify(request_key(request.headers))
        if info is None:
            raise unauthorized()
        g.olol_key = info

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return render_error(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        if err.code == 404:
            return _plain("404 page not found", 404)
        if err.code == 405:
            allowed = {}
            methods = getattr(err, "valid_methods", None)
            if methods:
                allowed = {"Allow": ", ".join(methods)}
            return _plain("405 method not allowed", 405, allowed)
        return render_error(ApiError(err.code or 500, err.description or err.name))

    @app.errorhandler(StoreUnavailableError)
    @app.errorhandler(StoreClosedError)
    def _store_down(err: Exception) -> Response:  # the database is down, or shutting down
        log.warning("store unavailable on %s %s: %s", request.method, request.path, err)
        return render_error(ApiError(503, "the store is unavailable; try again later",
                                     headers={"Retry-After": "1"}))

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(ApiError(500, "internal error"))

    app.register_blueprint(ollama.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(models.admin_bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics_bp.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(passthrough_bp.bp)  # last: routes no other blueprint has
    app.wsgi_app = AfterResponse(app.wsgi_app)  # type: ignore[method-assign]
    return app

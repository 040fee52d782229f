"""The dashboard's routes, under ``/olol/ui``.

Pages (server-rendered): ``/olol/ui/<view>`` for nodes, queue, models, traffic and
maintenance; ``?fragment=1`` answers only the part that changes, which ``ui.js``
fetches every two seconds. JSON: ``GET /olol/ui/api/state[?view=...]``. Actions (JSON
bodies): ``POST /olol/ui/api/pull``, ``POST /olol/ui/api/plan/apply``,
``POST /olol/ui/api/jobs/<name>/run``.

Who may look (when keys are enabled; with keys off, as for the API, anyone who reaches
the port): an admin key in the ``Authorization``/``x-api-key`` header, or a session
made by ``POST /olol/ui/login`` (an HttpOnly, SameSite=Strict cookie scoped to
``/olol/ui``). The cookie is honoured by these routes only: the app's key check, which
every other route goes through, reads headers alone. Every POST made with the cookie
(or with keys off) must carry the page's CSRF token, in the ``X-OLOL-CSRF`` header or
the ``csrf`` form field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, g, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse  # what redirect() returns

from olol import __version__
from olol.api.errors import ApiError
from olol.server.common import get_ctx, json_response, read_json_body
from olol.server.door import UI_MAX_BODY, UI_PREFIX, request_key, unauthorized
from olol.ui import format as fmt
from olol.ui.sessions import SessionStore, same_token
from olol.ui.state import BUILDERS, VIEWS, build_state, plan_id

PREFIX = UI_PREFIX
COOKIE = "olol_ui"
CSRF_HEADER = "X-OLOL-CSRF"
#: Largest body a dashboard POST may send (a log-in form, a small JSON action).
MAX_BODY = UI_MAX_BODY
#: ``app.extensions`` key of the app's SessionStore.
EXTENSION = "olol.ui"
PUBLIC_ENDPOINTS = frozenset({"ui.login", "ui.login_post", "ui.static"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
ADMIN_MESSAGE = "the dashboard needs an admin API key"


class _Blueprint(Blueprint):
    def get_send_file_max_age(self, filename: str | None) -> int | None:
        return 3600  # the pages ask for them with ?v=<version>


bp = _Blueprint("ui", __name__, url_prefix=PREFIX, template_folder="templates",
                static_folder="static")


@bp.record
def _install(state: Any) -> None:
    ctx = state.app.extensions["olol"]
    state.app.extensions[EXTENSION] = SessionStore(clock=ctx.clock)
    state.app.jinja_env.filters.update(fmt.FILTERS)


def sessions() -> SessionStore:
    from flask import current_app

    return current_app.extensions[EXTENSION]


def _wants_json() -> bool:
    return request.path.startswith(PREFIX + "/api/") or request.args.get("fragment") == "1"


def _to_login() -> BaseResponse:
    if _wants_json():
        raise ApiError(401, "log in to the dashboard first (" + PREFIX + "/login)")
    view = request.path[len(PREFIX):].strip("/")
    target = PREFIX + "/login" + (f"?next={quote(view)}" if view in VIEWS else "")
    return redirect(target, code=303)


def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.mimetype == "application/x-www-form-urlencoded":
        given = request.form.get("csrf")
    if not same_token(given, g.ui_csrf):
        raise ApiError(403, "missing or wrong CSRF token: reload the dashboard")


@bp.before_request
def _gate() -> BaseResponse | None:
    ctx = get_ctx()
    store = sessions()
    g.ui_user, g.ui_csrf, g.ui_session = None, store.open_csrf, None
    if request.method == "POST":
        length = request.content_length
        if length is None and request.headers.get("Transfer-Encoding"):
            raise ApiError(411, "the dashboard needs a Content-Length")
        if length is not None and length > MAX_BODY:
            raise ApiError(413, f"http: request body too large (limit {MAX_BODY} bytes)")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not ctx.config.keys_enabled:
        g.ui_user = None
        _check_csrf()
        return None
    token = request_key(request.headers)
    if token is not None:  # a header credential: the API's rules, no CSRF to fear
        info = ctx.keys.verify(token)
        if info is None:
            raise unauthorized()
        if not info.admin:
            raise ApiError(403, ADMIN_MESSAGE)
        g.ui_user = info.name
        return None
    cookie = request.cookies.get(COOKIE)
    session = store.get(cookie)
    info = ctx.keys.get(session.key_id) if session is not None else None
    if session is None or info is None or info.revoked or not info.admin:
        if session is not None:
            store.end(cookie)
        return _to_login()
    g.ui_user, g.ui_csrf, g.ui_session = info.name, session.csrf, session
    _check_csrf()
    return None


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    if resp.mimetype == "text/html":
        resp.headers["Content-Security-Policy"] = CSP
    return resp


def _page(template: str, **kw: Any) -> Response:
    ctx = get_ctx()
    html = render_template(template, prefix=PREFIX, version=__version__, csrf=g.ui_csrf,
                           user=g.ui_user, keys_enabled=bool(ctx.config.keys_enabled),
                           views=VIEWS, **kw)
    return Response(html, content_type="text/html; charset=utf-8")


# -- log-in ------------------------------------------------------------------------------

def _secure() -> bool:
    """Whether the request came over HTTPS to this server (waitress drops a proxy's
    X-Forwarded-Proto: behind nginx, nginx marks the cookie, docs/operations.md)."""
    return request.is_secure


def _next_view() -> str:
    view = request.values.get("next", "")
    return view if view in VIEWS else "nodes"


@bp.route("/login", methods=["GET"])
def login() -> BaseResponse:
    if not get_ctx().config.keys_enabled:
        return redirect(f"{PREFIX}/{_next_view()}", code=303)
    return _page("olol_ui/login.html", error=None, next=_next_view(), view="login")


@bp.route("/login", methods=["POST"])
def login_post() -> BaseResponse:
    ctx = get_ctx()
    if not ctx.config.keys_enabled:
        return redirect(f"{PREFIX}/{_next_view()}", code=303)
    key = (request.form.get("key") or "").strip()
    info = ctx.keys.verify(key) if key else None
    if info is None or not info.admin:
        if info is None:
            error, status = "This key is not valid (unknown, revoked or mistyped).", 401
        else:
            error, status = "This key is valid but not an admin key.", 403
        answer = _page("olol_ui/login.html", error=error, next=_next_view(), view="login")
        answer.status_code = status
        return answer
    token, _ = sessions().create(info.id, info.name)
    resp = redirect(f"{PREFIX}/{_next_view()}", code=303)
    resp.set_cookie(COOKIE, token, max_age=int(sessions().ttl_s), path=PREFIX, httponly=True,
                    samesite="Strict", secure=_secure())
    return resp


@bp.route("/logout", methods=["POST"])
def logout() -> BaseResponse:
    sessions().end(request.cookies.get(COOKIE))
    resp = redirect(f"{PREFIX}/login", code=303)
    resp.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Strict", secure=_secure())
    return resp


# -- pages -------------------------------------------------------------------------------

@bp.route("/", methods=["GET"])
def index() -> BaseResponse:
    return redirect(f"{PREFIX}/nodes", code=303)


@bp.route("/<view>", methods=["GET"])
def page(view: str) -> Response:
    if view not in VIEWS:
        raise ApiError(404, f"no dashboard view named '{view[:40]}'")
    data = BUILDERS[view](get_ctx())
    if request.args.get("fragment") == "1":
        return _page(f"olol_ui/{view}.html", data=data, view=view, fragment=True)
    return _page("olol_ui/page.html", data=data, view=view, fragment=False)


@bp.route("/api/state", methods=["GET"])
def state() -> Response:
    wanted = request.args.get("view")
    if wanted:
        names = [v.strip() for v in wanted.split(",") if v.strip()]
        unknown = [v for v in names if v not in VIEWS]
        if unknown or not names:
            raise ApiError(400, f"unknown view {(unknown or [wanted])[0][:40]!r}; "
                           f"known: {', '.join(VIEWS)}")
    else:
        names = list(VIEWS)
    return json_response(build_state(get_ctx(), names))


# -- actions -----------------------------------------------------------------------------

@bp.route("/api/pull", methods=["POST"])
def pull() -> Response:
    from olol.api import errors
    from olol.server.models_common import _model_field, _start_pull, _valid_name, parse_nodes

    body = read_json_body()
    model = _model_field(body, errors.model_required())
    _valid_name(model, errors.invalid_model_name())
    targets = parse_nodes(body.get("nodes"), "nodes")
    op = _start_pull(model, targets, False)
    summary = op.summary()
    error = next((o.get("error") for o in summary["outcome"].values() if o.get("error")), None)
    if summary["done"] and not summary["nodes"]:
        raise ApiError(503, error or f"no node can take {model}")
    return json_response({"id": summary["id"], "model": summary["model"],
                          "nodes": summary["nodes"]}, status=202)


@bp.route("/api/plan/apply", methods=["POST"])
def apply_plan() -> Response:
    body = read_json_body()
    wanted = body.get("plan_id")
    if not isinstance(wanted, str) or not wanted:
        raise ApiError(400, "plan_id is required: the id of the plan shown")
    registry = get_ctx().registry
    if registry is None:
        raise ApiError(503, "the model registry is not running")
    plan = registry.optimize_model_distribution()
    if plan_id(plan) != wanted:
        raise ApiError(409, "the plan changed since it was shown: look at it again")
    if not plan.get("actions"):
        return json_response({"results": [], "done": 0, "skipped": 0, "failed": 0})
    return json_response(registry.apply(plan))


@bp.route("/api/jobs/<name>/run", methods=["POST"])
def run_job(name: str) -> Response:
    from olol.maintenance import UnknownJobError

    jobs = get_ctx().maintenance
    if jobs is None:
        raise ApiError(404, f"no maintenance job named '{name[:40]}'")
    try:
        return json_response(jobs.run_now(name))
    except UnknownJobError:
        raise ApiError(404, f"no maintenance job named '{name[:40]}'") from None

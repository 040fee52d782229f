"""What the fuzz suites share: the routes to fuzz (read from the app's url_map), a raw
HTTP client with a hard deadline, the checks every answer must pass, a recorder of what
was sent and seen, and the repair that puts the cluster back after a destructive call.

Nothing here knows the product beyond its public surface: routes come from
``create_app``'s url_map (a new route is fuzzed without touching this file), field
names from the request structs in :mod:`olol.api.gojson` and
:mod:`olol.api.openai_requests`, plus olol's own admin fields listed below.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

#: Seconds within which every answer (status line and the whole body) must arrive.
ANSWER_BOUND_S = 10.0
#: Bytes of an answer read at most; a longer body is cut (and still counts as answered).
MAX_READ = 4 * 1024 * 1024
#: Path prefixes of the APIs under test.
API_PREFIXES = ("/api/", "/v1/", "/olol/v1/")

MODEL = "llama3.2:1b"
EMBED_MODEL = "nomic-embed-text"
NODE_MODELS = f"{MODEL},{EMBED_MODEL}[embed]"


# -- routes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    rule: str  # werkzeug rule text, e.g. /olol/v1/jobs/<job_id>
    method: str
    endpoint: str  # Flask endpoint, e.g. jobs.get_job
    params: tuple[tuple[str, str], ...]  # (name, converter) of the path parameters

    @property
    def id(self) -> str:
        return f"{self.method} {self.rule}"

    @property
    def api(self) -> str:
        return "openai" if self.rule.startswith("/v1/") else "native"


def build_url_map_app() -> Any:
    """The front door's Flask app on a dummy context (keys off, nothing running):
    enough to read its url_map. The openapi blueprint is added when app.py does not
    register it yet."""
    from olol.context import ProxyConfig
    from olol.server.app import create_app

    app = create_app(SimpleNamespace(config=ProxyConfig(), keys=None, clock=time.time))
    add_openapi(app)
    return app


def add_openapi(app: Any) -> Any:
    from olol.server import openapi

    if not any(r.rule == "/olol/v1/openapi.json" for r in app.url_map.iter_rules()):
        app.register_blueprint(openapi.bp)
    return app


_PARAM_RE = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def api_routes(app: Any) -> list[Route]:
    """Every (rule, method) of the three APIs, OPTIONS left out (Flask answers it by
    itself; the fuzzer still sends it as a "random method")."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API_PREFIXES) or rule.endpoint == "static":
            continue
        params = tuple((m["name"], m["conv"] or "default")
                       for m in _PARAM_RE.finditer(rule.rule))
        for method in sorted(rule.methods - {"OPTIONS"}):
            routes.append(Route(rule.rule, method, rule.endpoint, params))
    return sorted(routes, key=lambda r: (r.rule, r.method))


def fill_path(rule: str, values: dict[str, str]) -> str:
    """``rule`` with each ``<conv:name>`` replaced by an already-encoded value."""
    return _PARAM_RE.sub(lambda m: values[m["name"]], rule)


# -- request fields ------------------------------------------------------------------------

#: The Go struct each JSON route decodes (field names come from it).
ROUTE_STRUCTS = {
    "ollama.generate": "api.GenerateRequest",
    "ollama.chat": "api.ChatRequest",
    "ollama.embed": "api.EmbedRequest",
    "ollama.embeddings": "api.EmbeddingRequest",
    "ollama.show": "api.ShowRequest",
    "models.pull": "api.PullRequest",
    "models.push": "api.PushRequest",
    "models.create": "api.CreateRequest",
    "models.copy": "api.CopyRequest",
    "models.delete": "api.DeleteRequest",
    "openai.chat_completions": "openai.ChatCompletionRequest",
    "openai.completions": "openai.CompletionRequest",
    "openai.embeddings": "openai.EmbedRequest",
}

#: olol's own request bodies (no Go struct): field names by endpoint.
OLOL_FIELDS = {
    "admin.add_node": ("address",),
    "jobs.submit_job": ("endpoint", "body", "priority"),
    "models_admin.admin_pull": ("model", "name", "nodes", "stream", "insecure"),
    "models_admin.admin_optimize": ("apply",),
}

#: Query parameters the routes read (sent, mixed with junk, on every route).
QUERY_FIELDS = ("verbose", "status", "limit", "force", "nodes")


def _structs() -> dict[str, dict[str, str]]:
    from olol.api import gojson

    structs = dict(gojson.API_STRUCTS)
    try:  # the OpenAI request structs (private name; fall back to a hand list)
        from olol.api import openai_requests

        structs.update(getattr(openai_requests, "_STRUCTS", {}))
    except ImportError:
        pass
    return structs


def route_fields(endpoint: str) -> tuple[str, ...]:
    """The JSON field names ``endpoint`` reads; every known field for an unknown route."""
    structs = _structs()
    if endpoint in ROUTE_STRUCTS and ROUTE_STRUCTS[endpoint] in structs:
        return tuple(structs[ROUTE_STRUCTS[endpoint]])
    if endpoint in OLOL_FIELDS:
        return OLOL_FIELDS[endpoint]
    every: set[str] = set()
    for name in ROUTE_STRUCTS.values():
        every.update(structs.get(name, {}))
    for names in OLOL_FIELDS.values():
        every.update(names)
    return tuple(sorted(every))


# -- sending -------------------------------------------------------------------------------


@dataclass
class Sent:
    method: str
    path: str  # with the query string
    headers: list[tuple[str, bytes]]
    body: bytes
    chunked: bool = False

    def describe(self) -> str:
        body = self.body[:600]
        more = f" ... ({len(self.body)} bytes)" if len(self.body) > 600 else ""
        return (f"{self.method} {self.path}\n  headers: {self.headers!r}\n"
                f"  chunked: {self.chunked}\n  body: {body!r}{more}")


@dataclass
class Answer:
    status: int | None  # None: no answer (connection error or deadline)
    headers: dict[str, str]
    body: bytes
    elapsed_s: float
    error: str | None = None  # why there is no (complete) answer
    truncated: bool = False


def send(base: str, sent: Sent, bound_s: float = ANSWER_BOUND_S) -> Answer:
    """One request on a fresh connection; the status and the body must arrive within
    ``bound_s`` in all (a streamed body is read to its end or to ``MAX_READ``)."""
    host, _, port = base.removeprefix("http://").partition(":")
    start = time.monotonic()
    deadline = start + bound_s
    conn = http.client.HTTPConnection(host, int(port), timeout=bound_s)
    try:
        conn.putrequest(sent.method, sent.path, skip_accept_encoding=True)
        for name, value in sent.headers:
            conn.putheader(name, value)
        try:
            if sent.chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                mid = len(sent.body) // 2
                for piece in (sent.body[:mid], sent.body[mid:]):
                    if piece:
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                conn.putheader("Content-Length", str(len(sent.body)))
                conn.endheaders(sent.body or None)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and close) before reading the whole body
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        chunks: list[bytes] = []
        got = 0
        truncated = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Answer(resp.status, headers, b"".join(chunks), time.monotonic() - start,
                              error=f"body not complete within {bound_s} s")
            if conn.sock is not None:
                conn.sock.settimeout(left)
            piece = resp.read1(65536) if sent.method != "HEAD" else b""
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
            if got >= MAX_READ:
                truncated = True
                break
        return Answer(resp.status, headers, b"".join(chunks), time.monotonic() - start,
                      truncated=truncated)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, {}, b"", time.monotonic() - start,
                      error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- checks --------------------------------------------------------------------------------

#: Bodies the router answers itself, as gin does (plain text).
PLAIN_ROUTER_BODIES = {404: b"404 page not found", 405: b"405 method not allowed"}


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_shape_problem(path: str, answer: Answer) -> str | None:
    """Why an error answer is not in its API's shape (None when it is)."""
    body = answer.body
    if not body:
        return "an error answer with an empty body"
    try:
        data = json.loads(body)
    except ValueError:
        return f"an error answer that is not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or "error" not in data:
        return f"an error answer without an 'error' member: {body[:200]!r}"
    if path.startswith("/v1/") or path == "/v1":
        err = data["error"]
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            return f"a /v1 error whose error.message is not a string: {body[:200]!r}"
    elif not isinstance(data["error"], str):
        return f"a native error whose error is not a string: {body[:200]!r}"
    return None


#: Routes allowed to answer 500 (with an error body in the API's shape that is not the
#: app's "internal error"). None: every 500 is a failure. Model management used to pass
#: a node's failure on as 500 (Ollama does); it answers 4xx or 502 since issue 9.
KNOWN_500: dict[str, str] = {}


def is_known_500(route: Route | None, answer: Answer) -> bool:
    if route is None or answer.status != 500 or route.endpoint not in KNOWN_500:
        return False
    if error_shape_problem(route.rule, answer) is not None:
        return False
    return json.loads(answer.body)["error"] != "internal error"


def problems(sent: Sent, answer: Answer, route: Route | None = None) -> list[str]:
    """Everything wrong with ``answer`` to ``sent`` (empty when it is acceptable)."""
    found: list[str] = []
    if answer.status is None:
        return [f"no answer: {answer.error}"]
    if answer.error:
        found.append(answer.error)
    if answer.elapsed_s > ANSWER_BOUND_S:
        found.append(f"answered in {answer.elapsed_s:.1f} s (bound {ANSWER_BOUND_S} s)")
    status = answer.status
    if status == 500 and not is_known_500(route, answer):
        found.append("HTTP 500")
    if sent.method == "HEAD" or answer.truncated:
        return found
    path = sent.path.split("?", 1)[0]
    if 400 <= status < 600 and status != 500:
        if PLAIN_ROUTER_BODIES.get(status) == answer.body:
            return found
        if route is not None and route.endpoint == "admin.ready" and status == 503:
            # the readiness probe answers its own documented body, with the reasons
            if not isinstance(_json_or_none(answer.body), dict):
                found.append(f"HTTP 503 from the readiness probe without its body: "
                             f"{answer.body[:200]!r}")
            return found
        shape = error_shape_problem(path, answer)
        if shape:
            found.append(f"HTTP {status}: {shape}")
    return found


# -- record --------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Counts of what was sent and answered, for the summary."""

    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    server_errors: Counter = field(default_factory=Counter)  # "route status" -> n
    by_route: Counter = field(default_factory=Counter)
    known_500: Counter = field(default_factory=Counter)  # tolerated, see KNOWN_500
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, route_id: str, answer: Answer) -> None:
        with self.lock:
            self.requests += 1
            self.by_route[route_id] += 1
            key = str(answer.status) if answer.status is not None else "no-answer"
            self.by_status[key] += 1
            if answer.status is None or answer.status >= 500:
                self.server_errors[f"{route_id} -> {key}"] += 1

    @property
    def total_5xx(self) -> int:
        return sum(n for k, n in self.by_status.items() if k.startswith("5"))

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "5xx": self.total_5xx,
            "by_status": dict(sorted(self.by_status.items())),
            "server_errors": dict(sorted(self.server_errors.items())),
            "routes": len(self.by_route),
            "known_500": dict(sorted(self.known_500.items())),
            "failures": self.failures[:50],
        }


class ErrorLog(logging.Handler):
    """Keeps the proxy's ERROR records (tracebacks included) for failure messages."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self._lock2 = threading.Lock()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a log handler must not raise
            text = repr(record.msg)
        with self._lock2:
            self.records.append(text)

    def since(self, mark: int) -> list[str]:
        with self._lock2:
            return self.records[mark:]

    def mark(self) -> int:
        with self._lock2:
            return len(self.records)


def unexpected_errors(lines: list[str]) -> list[str]:
    """The log records that mean a request hit an unexpected exception: Flask's
    ``unhandled error`` (a 500) and waitress's ``Exception while serving`` (a crash in a
    response already under way)."""
    return [line for line in lines
            if "unhandled error on" in line or "Exception while serving" in line
            or "Exception when serving" in line]


# -- repair --------------------------------------------------------------------------------


def repair(env: Any) -> None:
    """Put the fixture back as it started: each proxy's members are exactly the real
    nodes (a fuzzed POST/DELETE /olol/v1/nodes may add junk or drop one), and every
    simulated node still has the two models (a fuzzed delete may remove them; they are
    pulled again from the simulator's catalog). Cheap when nothing changed."""
    import requests

    real = {node.address for node in env.nodes}
    changed = False
    for proxy in env.proxies:
        cluster = proxy.proxy.cluster
        members = {n.address for n in cluster.list_nodes()}
        for address in members - real:
            cluster.remove_node(address)
            changed = True
        for address in real - members:
            cluster.add_node(address, source="config")
            changed = True
    for node in env.nodes:
        tags = requests.get(node.sim.url + "/api/tags", timeout=5).json()
        names = {m.get("name") for m in tags.get("models", [])}
        for wanted in (MODEL, EMBED_MODEL + ":latest"):
            if wanted not in names:
                requests.post(node.sim.url + "/api/pull",
                              json={"model": wanted, "stream": False}, timeout=10)
                changed = True
    if changed:
        for proxy in env.proxies:
            for address in real:
                proxy.proxy.cluster.refresh(address, timeout=5.0)


def header_bytes(value: str) -> bytes:
    """A header value as sent: latin-1 when it can be (as http.client would), else UTF-8
    bytes (which a server sees as latin-1 mojibake)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


# -- one fuzzed request --------------------------------------------------------------------


def _sent(env: Any, plan: Any) -> tuple[Any, Sent]:
    from tests.fuzz.strategies import resolve_auth

    live = env.proxy(plan.target)
    headers = list(plan.headers)
    value = resolve_auth(*plan.auth, admin_key=live.admin_key or "olol-none",
                         user_key=live.user_key or "olol-none")
    if value is not None:
        headers.append(("Authorization", value))
    return live, Sent(plan.method, plan.path, [(k, header_bytes(v)) for k, v in headers],
                      plan.body, plan.chunked)


def _judge(env: Any, route: Route, plan: Any, sent: Sent, answer: Answer) -> str | None:
    """Record ``answer`` and return the failure report (None when acceptable)."""
    env.recorder.add(route.id, answer)
    found = problems(sent, answer, route)
    if is_known_500(route, answer):
        with env.recorder.lock:
            env.recorder.known_500[route.id] += 1
    if not found:
        return None
    report = (f"{route.id} on the {plan.target} proxy: {'; '.join(found)}\n"
              f"request: {sent.describe()}\n"
              f"answer: {answer.status} {answer.body[:1000]!r}")
    with env.recorder.lock:
        env.recorder.failures.append(report[:3000])
    return report


def exercise(env: Any, route: Route, plan: Any) -> Answer:
    """Send ``plan`` (a :class:`tests.fuzz.strategies.Plan`) to its proxy, record the
    answer, put the cluster back, and fail with everything needed to reproduce it when
    the answer breaks a rule (:func:`problems`) or the proxy logged an unexpected error."""
    live, sent = _sent(env, plan)
    mark = env.errors.mark()
    answer = send(live.url, sent)
    report = _judge(env, route, plan, sent, answer)
    logged = env.errors.since(mark)
    crashes = unexpected_errors(logged)
    repair(env)
    if report or crashes:
        raise AssertionError(
            (report or f"{route.id}: the proxy logged an unexpected error\n"
                       f"request: {sent.describe()}")
            + "\nproxy errors meanwhile:\n" + "\n".join(logged[-5:]))
    return answer


def exercise_together(env: Any, batch: list[tuple[Route, Any]]) -> None:
    """Send every (route, plan) of ``batch`` at once, one thread each; then judge each
    answer as :func:`exercise` does and put the cluster back."""
    from concurrent.futures import ThreadPoolExecutor

    prepared = [(route, plan, *_sent(env, plan)) for route, plan in batch]
    mark = env.errors.mark()
    with ThreadPoolExecutor(max_workers=len(prepared)) as pool:
        answers = list(pool.map(lambda item: send(item[2].url, item[3]), prepared))
    reports = [_judge(env, route, plan, sent, answer)
               for (route, plan, _, sent), answer in zip(prepared, answers, strict=True)]
    crashes = unexpected_errors(env.errors.since(mark))
    repair(env)
    failed = [r for r in reports if r]
    if failed or crashes:
        raise AssertionError("\n\n".join(failed[:3] + crashes[:3]))

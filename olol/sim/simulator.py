"""The simulator object: configuration, routing, lifecycle."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from olol.api.errors import anthropic_error_body
from olol.sim.engine import Engine
from olol.sim.faults import Faults
from olol.sim.httpserver import ApiError, ClientGone, Exchange, SimHTTPServer, dumps
from olol.sim.models import ModelStore
from olol.sim.more_api import MoreApi
from olol.sim.native import NativeApi
from olol.sim.openai_api import OpenAIApi, error_body
from olol.sim.scheduler import Scheduler, Stats
from olol.sim.spec import ModelSpec, default_catalog, normalize_name, parse_models_spec

log = logging.getLogger(__name__)

DEFAULT_MODELS = "llama3.2:1b,nomic-embed-text[embed]"


@dataclass
class SimConfig:
    """Simulator settings. Delays are seconds (0 = none); ``tokens_per_second`` 0 = instant.

    ``catalog`` maps pullable names to specs (default: a few common models);
    ``response_tokens`` bounds the natural length of an answer;
    ``pull_bytes_per_second`` paces pull/push progress (0 = instant);
    ``disk_bytes`` is the simulated disk's size (None = unlimited): a pull whose new
    layers would not fit fails as Ollama does on a full disk.
    """

    models: list[ModelSpec] = field(default_factory=lambda: parse_models_spec(DEFAULT_MODELS))
    ttft: float = 0.0
    tokens_per_second: float = 0.0
    load_time: float = 0.0
    parallel: int = 4
    max_loaded: int = 3
    max_queue: int = 512
    catalog: dict[str, ModelSpec] | None = None
    pull_bytes_per_second: float = 0.0
    disk_bytes: int | None = None
    response_tokens: tuple[int, int] = (16, 48)
    max_connections: int = 256
    max_body: int = 64 * 1024 * 1024
    hang_limit: float = 60.0
    # count the prompts of /api/generate and /api/chat (the last message) received, up
    # to this many distinct ones (0: off): tests that check nothing ran twice read them
    record_prompts: int = 0

    def validate(self) -> None:
        for key in ("ttft", "tokens_per_second", "load_time", "pull_bytes_per_second"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        if self.parallel < 1 or self.max_loaded < 1 or self.max_queue < 0:
            raise ValueError("parallel and max_loaded must be >= 1, max_queue >= 0")
        lo, hi = self.response_tokens
        if lo < 1 or hi < lo:
            raise ValueError("response_tokens must be (min >= 1, max >= min)")
        if self.disk_bytes is not None and self.disk_bytes < 0:
            raise ValueError("disk_bytes must be >= 0")
        if self.max_connections < 1 or self.max_body < 1:
            raise ValueError("max_connections and max_body must be >= 1")


_NATIVE_ROUTES = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/ps": {"GET": "ps"},
    "/api/show": {"POST": "show"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/embed": {"POST": "embed"},
    "/api/embeddings": {"POST": "embeddings"},
    "/api/pull": {"POST": "pull"},
    "/api/push": {"POST": "push"},
    "/api/create": {"POST": "create"},
    "/api/copy": {"POST": "copy"},
    "/api/delete": {"DELETE": "delete"},
}
_OPENAI_ROUTES = {
    "/v1/chat/completions": {"POST": "chat"},
    "/v1/completions": {"POST": "completions"},
    "/v1/embeddings": {"POST": "embeddings"},
    "/v1/models": {"GET": "models"},
}
_MORE_ROUTES = {
    "/v1/messages": {"POST": "messages"},
    "/v1/responses": {"POST": "responses"},
    "/v1/images/generations": {"POST": "images"},
    "/api/status": {"GET": "status"},
    "/api/x-sim/echo": {"POST": "echo"},
    "/v1/x-sim/echo": {"POST": "echo_sse"},
}


class Simulator:
    """An Ollama-compatible HTTP server with simulated models.

    :param config: settings (see :class:`SimConfig`).
    :param host: interface to bind; :param port: 0 picks a free port.
    :param clock: monotonic time source for durations, keep_alive and expiry.
    :param wall_clock: wall time source for ``created_at``/``expires_at``.
    """

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.config = config or SimConfig()
        self.config.validate()
        self.host, self._port = host, port
        self.clock, self.wall_clock = clock, wall_clock
        self.stop_event = threading.Event()
        self.stats_counters = Stats()
        self.prompts_seen: Counter[str] = Counter()
        self._prompts_lock = threading.Lock()
        self.faults = Faults(self.stop_event, self.config.hang_limit)
        catalog = self.config.catalog if self.config.catalog is not None else default_catalog()
        self._catalog = {k.lower(): v for k, v in catalog.items()}
        self.store = ModelStore(list(self.config.models), wall_clock)
        self.scheduler = Scheduler(
            parallel=self.config.parallel, max_loaded=self.config.max_loaded,
            max_queue=self.config.max_queue, load_time=self.config.load_time,
            stats=self.stats_counters, stop=self.stop_event, clock=clock)
        self.engine = Engine(
            scheduler=self.scheduler, stats=self.stats_counters, faults=self.faults,
            stop=self.stop_event, clock=clock, ttft=self.config.ttft,
            tokens_per_second=self.config.tokens_per_second,
            token_range=self.config.response_tokens)
        self.native = NativeApi(self)
        self.openai = OpenAIApi(self.native)
        self.more = MoreApi(self)
        self._server: SimHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------

    def note_prompt(self, text: str) -> None:
        """Count one received prompt (when ``record_prompts`` is on; bounded)."""
        limit = self.config.record_prompts
        if limit <= 0:
            return
        with self._prompts_lock:
            if text in self.prompts_seen or len(self.prompts_seen) < limit:
                self.prompts_seen[text] += 1

    def start(self) -> Simulator:
        """Bind and serve on named threads; returns self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = SimHTTPServer((self.host, self._port), self.handle,
                                     max_connections=self.config.max_connections,
                                     max_body=self.config.max_body)
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"olol-sim-http-{self.port}", daemon=True)
        reaper = threading.Thread(target=self._reap, name=f"olol-sim-reaper-{self.port}",
                                  daemon=True)
        self._threads = [serve, reaper]
        for t in self._threads:
            t.start()
        log.info("simulator listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5) -> None:
        """Stop serving: wake every wait, close connections, join threads (bounded)."""
        self.stop_event.set()
        self.faults.release()
        self.scheduler.wake_all()
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections(timeout / 2)
        for t in self._threads:
            t.join(timeout=timeout / 2)
        self.engine.stepper.join(timeout / 2)

    def _reap(self) -> None:
        while not self.stop_event.wait(0.25):
            self.scheduler.expire()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stats(self) -> dict[str, int]:
        return self.stats_counters.snapshot()

    def catalog_lookup(self, name: str) -> ModelSpec | None:
        try:
            return self._catalog.get(normalize_name(name).lower())
        except ValueError:
            return None

    # -- routing -------------------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        path = ex.path
        is_openai = path.startswith("/v1/")
        if not path.startswith("/_sim/"):
            self.stats_counters.add("requests_total")
        try:
            target = self._route(ex)
            if target is None:
                return
            fn, args, faultable = target
            if faultable:
                body = ex.body()  # read first: a hung request was accepted, ex.gone() works
                self.faults.maybe_hang(ex.gone)
                failure = self.faults.take_failure(body)
                if failure is not None:
                    raise ApiError(failure.status, failure.error)
            fn(ex, *args)
        except ApiError as exc:
            self._error(ex, exc.status, exc.message, is_openai)
        except ClientGone:
            raise
        except Exception as exc:  # never a stack trace to the client
            log.exception("simulator handler failed for %s %s", ex.method, path)
            self._error(ex, 500, f"internal error: {type(exc).__name__}", is_openai)

    def _route(self, ex: Exchange) -> tuple[Callable[..., None], tuple, bool] | None:
        path, method = ex.path, ex.method
        if len(path) > 1:
            path = path.rstrip("/")
        methods: dict[str, Any] | None = None
        args: tuple = ()
        owner: Any = self.native
        if path in _NATIVE_ROUTES:
            methods = _NATIVE_ROUTES[path]
        elif path in _OPENAI_ROUTES:
            methods, owner = _OPENAI_ROUTES[path], self.openai
        elif path in _MORE_ROUTES:
            methods, owner = _MORE_ROUTES[path], self.more
        elif path.startswith("/api/blobs/") and len(path) > len("/api/blobs/"):
            methods = {"HEAD": "blob_head", "POST": "blob_post"}
            args = (path[len("/api/blobs/"):],)
        elif path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            methods, owner = {"GET": "model"}, self.openai
            args = (path[len("/v1/models/"):],)
        elif path == "/_sim/stats":
            methods, owner = {"GET": "sim_stats"}, self
        elif path == "/_sim/active":
            methods, owner = {"GET": "sim_active"}, self
        elif path == "/_sim/faults":
            methods, owner = {"POST": "sim_faults", "GET": "sim_fault_counts"}, self
        if methods is None:
            ex.send(404, b"404 page not found", "text/plain")
            return None
        name = methods.get(method)
        if name is None:
            ex.send(405, b"405 method not allowed", "text/plain")
            return None
        faultable = method in ("POST", "DELETE") and owner is not self
        return getattr(owner, name), args, faultable

    def _error(self, ex: Exchange, status: int, message: str, is_openai: bool) -> None:
        body = error_body(status, message) if is_openai else {"error": message}
        anthropic = ex.path.rstrip("/") == "/v1/messages"
        if anthropic:
            body = anthropic_error_body(status, message)
        if not ex.started:
            ex.send_json(status, body)
        elif ex.streaming:
            line = b"data: " + dumps(body) + b"\n\n" if is_openai else dumps(body) + b"\n"
            if anthropic:
                line = b"event: error\n" + line
            ex.write_record(line)
            ex.end_stream()
        else:
            ex.abort()

    # -- /_sim control routes ---------------------------------------------------------

    def sim_stats(self, ex: Exchange) -> None:
        ex.send_json(200, self.stats())

    def sim_active(self, ex: Exchange) -> None:
        """``{"prompts": [...]}``: the last part of the prompt of every generation in
        progress (:meth:`Engine.active`)."""
        ex.send_json(200, {"prompts": self.engine.active()})

    def sim_fault_counts(self, ex: Exchange) -> None:
        """How many requests each kind of fault hit (:meth:`Faults.counts`)."""
        ex.send_json(200, self.faults.counts())

    def sim_faults(self, ex: Exchange) -> None:
        body = ex.json("faults")
        try:
            self.faults.apply(body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        ex.send_json(200, {"ok": True})

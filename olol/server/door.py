"""Decisions the front door takes on a request's headers, before it reads the body,
and the connection limits a server open to strangers needs.

waitress reads a whole request (spooling large bodies to a temporary file) before the
WSGI app sees it, so checks made in the app come too late: a 600 MB POST to
``/api/chat`` would be on disk before its 413, an unauthenticated upload fully read
before its 401. :func:`install` plugs a :class:`DoorPolicy` into a waitress server's
HTTP parser instead:

* when a request's headers are complete, the policy answers 401 (no valid key, when keys
  are enabled), 403 (a blob upload without an admin key) or 413 (``Content-Length`` over
  the route's limit) at once, in the API's own error format, and the connection then
  drops what the client still sends without parsing or keeping it;
* a chunked body is cut off with 413 as soon as it passes the route's limit;
* only ``POST /api/blobs/<digest>`` takes more than ``max_body_bytes``;
* a request must finish arriving in time: its headers within ``header_timeout_s`` of its
  first byte, a bounded body (every route but blob uploads) within ``body_timeout_s``
  of its headers. A client that trickles bytes to hold a connection is dropped; an idle
  keep-alive connection is dropped after waitress's ``channel_timeout``.

The checks run on waitress's I/O thread, so they only read RAM (the key store's
``verify(..., touch=False)`` never writes).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import WSGITask
from waitress.utilities import Error, RequestEntityTooLarge

from olol.api.errors import ApiError
from olol.api.streaming import JSON_CONTENT_TYPE

log = logging.getLogger(__name__)

BLOB_PATH = re.compile(r"^/api/blobs/[^/]+/?$")
#: Paths answered without a key even when keys are enabled (liveness probes).
PUBLIC_PATHS = frozenset({"/", "/olol/v1/health", "/olol/v1/ready"})
#: The dashboard's prefix (olol.ui) and the largest body its routes take.
UI_PREFIX = "/olol/ui"
UI_MAX_BODY = 64 * 1024
UNAUTHORIZED_MESSAGE = "a valid API key is required (Authorization: Bearer <key>)"


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def request_key(headers: Any) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>``, else ``x-api-key``
    (the header the official anthropic client sends). ``headers`` is a mapping with
    either HTTP spellings (Flask) or waitress's CGI spellings (``X_API_KEY``)."""
    token = bearer_token(headers.get("AUTHORIZATION") or headers.get("Authorization"))
    if token:
        return token
    other = headers.get("X_API_KEY") or headers.get("X-Api-Key") or ""
    return other.strip() or None


def is_ui_path(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def unauthorized() -> ApiError:
    return ApiError(
        401, UNAUTHORIZED_MESSAGE, openai_type="invalid_request_error", code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="olol"'},
    )


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"http: request body too large (limit {limit} bytes)")


class DoorPolicy:
    """What a request may send, judged from its method, path and headers.

    :param config: the proxy's config (``keys_enabled``, ``max_body_bytes``,
        ``max_blob_bytes``); read on every decision.
    :param keys: returns the key store (or None), read on every decision: the app
        creates it.
    """

    def __init__(self, config: Any, keys: Callable[[], Any]):
        self.config = config
        self.keys = keys

    def body_limit(self, method: str, path: str) -> int:
        if method == "POST" and BLOB_PATH.match(path):
            return int(self.config.max_blob_bytes)
        if is_ui_path(path):
            return min(UI_MAX_BODY, int(self.config.max_body_bytes))
        return int(self.config.max_body_bytes)

    def decide(self, method: str, path: str, headers: dict[str, str],
               length: int | None) -> tuple[ApiError | None, int]:
        """``(error, body_limit)``: the answer to give now (None: read the body), and
        the most body bytes the request may send. ``length`` is the declared
        ``Content-Length`` (None for a chunked body)."""
        limit = self.body_limit(method, path)
        has_body = length is None or length > 0
        # the dashboard checks its own log-ins (a form post, a session cookie): bounded
        # to a small body here, judged by the app
        if has_body and self.config.keys_enabled and path not in PUBLIC_PATHS \
                and not is_ui_path(path):
            store = self.keys()
            info = None
            if store is not None:
                info = store.verify(request_key(headers), touch=False)
            if info is None:
                return unauthorized(), limit
            if limit > self.config.max_body_bytes and not info.admin:
                return ApiError(403, "uploading blobs needs an admin API key"), limit
        if length is not None and length > limit:
            return too_large(limit), limit
        return None, limit


class Refusal(Error):
    """An answer given on the headers, rendered in the API's own error format."""

    def __init__(self, err: ApiError, path: str):
        super().__init__(err.message)
        self.err = err
        self.code = err.status
        self.reason = _REASONS.get(err.status, "Error")
        self.path = path

    def to_response(self, ident: str | None = None) -> tuple[str, list, bytes]:
        if self.path.rstrip("/") == "/v1/messages":
            body = orjson.dumps(self.err.anthropic_body())
        elif self.path == "/v1" or self.path.startswith("/v1/"):
            body = orjson.dumps(self.err.openai_body())
        else:
            body = orjson.dumps(self.err.ollama_body())
        headers = [("Content-Type", JSON_CONTENT_TYPE)]
        headers += [(k, str(v)) for k, v in (self.err.headers or {}).items()]
        return f"{self.code} {self.reason}", headers, body


_REASONS = {401: "Unauthorized", 403: "Forbidden", 408: "Request Timeout",
            413: "Request Entity Too Large"}


class GatedParser(HTTPRequestParser):
    """waitress's parser with the door's decisions at the end of the headers and a
    per-route bound on the body; keeps the deadline by which the request must have
    arrived (``deadline``, a ``time.monotonic()`` value; ``inf``: none)."""

    # set by waitress's parser (class defaults there), declared for the type checker
    error: Any
    expect_continue: bool

    def __init__(self, adj: Any, channel: GatedChannel):
        super().__init__(adj)
        self.channel = channel
        self.body_limit = math.inf
        self.deadline = channel.clock() + channel.header_timeout_s

    def received(self, data: bytes) -> int:
        in_headers = not self.headers_finished
        n = super().received(data)
        if in_headers and self.headers_finished:
            if isinstance(self.error, RequestEntityTooLarge):
                # waitress's bound is the largest of all routes; the door decides
                # (a missing key is a 401 whatever the size) and refuses it itself
                self.error, self.completed = None, False
            if self.expect_continue and self.body_rcv is None:
                # no body to ask for: waitress would send "100 Continue" and then wait
                # for a body that never comes, holding the connection
                self.expect_continue = False
            if self.error is None and not self.empty:
                self._decide()
            if self.error is not None:
                return self._refuse(data)
            self.deadline = (math.inf if self.body_limit > self.channel.policy.config.max_body_bytes
                             else self.channel.clock() + self.channel.body_timeout_s)
        elif not in_headers and self.error is None and self.body_bytes_received > self.body_limit:
            self.error = Refusal(too_large(int(self.body_limit)), self.path or "")
            self.completed = True
            return self._refuse(data)
        return n

    def _decide(self) -> None:
        length = None if self.chunked else self.content_length
        try:
            err, limit = self.channel.policy.decide(self.command or "", self.path or "",
                                                    self.headers, length)
        except Exception:  # noqa: BLE001 - never take the I/O loop down: the app decides
            log.exception("door policy failed on %s %s", self.command, self.path)
            # still bounded: what every route but blob uploads may send
            err, limit = None, int(self.channel.policy.config.max_body_bytes)
            if length is not None and length > limit:
                err = too_large(limit)
        self.body_limit = limit
        if err is not None:
            self.error = Refusal(err, self.path or "")
            self.completed = True

    def _refuse(self, data: bytes) -> int:
        """Answer now, read nothing more of this connection: no 100-continue, no body."""
        self.expect_continue = False
        self.connection_close = True
        self.channel.refusing = True
        return len(data)  # what is left of this read is body: dropped unparsed


#: WSGI environ key of :meth:`DirectTask.write_direct`.
DIRECT_WRITE = "olol.write_direct"
#: Most bytes a client may have unsent before direct writes stop (the response's
#: own thread then writes, and may wait for the client).
DIRECT_BACKLOG = 256 * 1024


class DirectTask(WSGITask):
    """A waitress task whose response body may also be written by another thread
    while its own thread waits in the app iterator (``environ[DIRECT_WRITE]``):
    a node's records go to the client from the thread that received them, with no
    hand-off to the response's thread for each one."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[DIRECT_WRITE] = self.write_direct
        return environ

    def write_direct(self, data: bytes) -> bool:
        """Write ``data`` as the next piece of the body; False, with nothing written,
        before the headers went out, when the client is gone, or when it has more
        than :data:`DIRECT_BACKLOG` bytes unsent (a write would wait for it). Only
        while the response's thread waits for the iterator's next piece."""
        channel = self.channel
        if (not self.wrote_header or not channel.connected or channel.will_close
                or channel.total_outbufs_len > DIRECT_BACKLOG):
            return False
        try:
            self.write(data)
        except Exception:  # noqa: BLE001 - ClientDisconnected: the response's thread sees it
            return False
        return True


class GatedChannel(HTTPChannel):
    """A waitress channel whose requests go through :class:`GatedParser`; once a request
    has been refused, what the client still sends is dropped until the answer is out
    and the connection closes."""

    policy: DoorPolicy
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    refusing = False

    task_class = DirectTask

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.parser_class = lambda adj: GatedParser(adj, self)  # type: ignore[assignment]

    def received(self, data: bytes) -> bool:
        if self.refusing:
            return bool(data)
        return super().received(data)

    def overdue(self, now: float) -> bool:
        """True when a request is still arriving past its deadline."""
        req = self.request
        return req is not None and not self.requests and getattr(req, "deadline", math.inf) < now


def install(server: Any, policy: DoorPolicy, *, header_timeout_s: float,
            body_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Make ``server`` (from ``waitress.create_server``) use the door's parser and
    drop connections whose request is overdue (checked every ``cleanup_interval``)."""
    server.channel_class = type("OlolChannel", (GatedChannel,), {
        "policy": policy, "header_timeout_s": float(header_timeout_s),
        "body_timeout_s": float(body_timeout_s), "clock": staticmethod(clock),
    })
    idle_sweep = server.maintenance

    def maintenance(now: float) -> None:
        idle_sweep(now)
        mono = clock()
        for channel in list(server.active_channels.values()):
            if isinstance(channel, GatedChannel) and channel.overdue(mono):
                log.info("dropping %s: its request did not arrive in time", channel.addr)
                channel.will_close = True

    server.maintenance = maintenance

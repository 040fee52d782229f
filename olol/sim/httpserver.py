"""A small HTTP/1.1 server for the simulator: keep-alive, chunked streaming, named threads.

Built on :class:`http.server.ThreadingHTTPServer`. Each connection runs on its own named
thread (``olol-sim-conn-N``); the number of open connections is bounded; every streamed
record is written (and so flushed) as one chunk as soon as it is produced.
"""

from __future__ import annotations

import itertools
import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered in the API's own shape with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """Writing to the client failed, or the connection was cut on purpose."""


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def go_json_error(raw: bytes) -> str:
    """Describe a JSON syntax error the way Go's encoding/json does (approximately)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return "unexpected EOF"
        ch = text[exc.pos]
        if exc.msg.startswith("Expecting value"):
            return f"invalid character {ch!r} looking for beginning of value"
        if exc.msg.startswith("Extra data"):
            return f"invalid character {ch!r} after top-level value"
        if "property name" in exc.msg:
            return f"invalid character {ch!r} looking for beginning of object key string"
        if "delimiter" in exc.msg:
            return f"invalid character {ch!r} after object key:value pair"
        return f"invalid character {ch!r} in JSON"
    return "invalid JSON"


class Exchange:
    """One request and its response, handed to route handlers."""

    def __init__(self, handler: SimRequestHandler, method: str):
        self._h = handler
        self.method = method
        parts = urlsplit(handler.path)
        self.path = unquote(parts.path)
        self.query = parts.query
        self.headers = handler.headers
        self.started = False  # response status line sent
        self.streaming = False
        self.records = 0
        self.stream_fault: Any = None  # an armed olol.sim.faults.StreamFault
        self._body: bytes | None = None
        self._held: list[bytes] | None = None  # writes kept by capture()

    # -- request -----------------------------------------------------------------------

    def body(self) -> bytes:
        if self._body is None:
            self._body = self._h.read_body()
        return self._body

    def json(self, type_name: str = "request") -> dict:
        raw = self.body()
        if not raw.strip():
            raise ApiError(400, "missing request body")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, go_json_error(raw)) from None
        if not isinstance(value, dict):
            kind = {list: "array", str: "string", bool: "bool", type(None): "null"}.get(
                type(value), "number")
            raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {type_name}")
        return value

    def gone(self) -> bool:
        """True when the client has closed its end of the connection."""
        sock = self._h.connection
        try:
            if not _ready(sock, select.POLLIN):
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def capture(self, fn: Callable[[], None]) -> bytes:
        """Run ``fn``, keeping what it writes instead of sending it; returns those
        bytes (for :meth:`send_captured`)."""
        self._held = []
        try:
            fn()
            return b"".join(self._held)
        finally:
            self._held = None

    def send_captured(self, data: bytes) -> None:
        self._write(data)

    def can_write_now(self) -> bool:
        """True when a record's write would not wait: no stream fault is due and the
        socket has room."""
        fault = self.stream_fault
        if fault is not None and self.records >= fault.after:
            return False
        try:
            return _ready(self._h.connection, select.POLLOUT)
        except (OSError, ValueError):
            return False  # the write itself reports it

    # -- response ----------------------------------------------------------------------

    def send(self, status: int, body: bytes, content_type: str,
             headers: dict[str, str] | None = None) -> None:
        h = self._h
        self.started = True
        lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n",
                 f"Content-Type: {content_type}\r\n",
                 f"Content-Length: {len(body)}\r\n",
                 f"Date: {h.date_time_string()}\r\n"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}\r\n")
        if h.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        payload = "".join(lines).encode("latin-1")
        if self.method != "HEAD":
            payload += body
        self._write(payload)

    def send_json(self, status: int, obj: Any) -> None:
        self.send(status, dumps(obj), "application/json; charset=utf-8")

    def send_empty(self, status: int = 200) -> None:
        self.send(status, b"", "text/plain; charset=utf-8")

    def start_stream(self, content_type: str, status: int = 200,
                     headers: dict[str, str] | None = None) -> None:
        h = self._h
        self.started = self.streaming = True
        lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n",
                 f"Content-Type: {content_type}\r\n",
                 "Transfer-Encoding: chunked\r\n",
                 f"Date: {h.date_time_string()}\r\n"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}\r\n")
        lines.append("\r\n")
        self._write("".join(lines).encode("latin-1"))

    def write_record(self, data: bytes) -> None:
        """Send one record as one chunk; honours an armed stream fault."""
        fault = self.stream_fault
        if fault is not None and self.records >= fault.after:
            self._apply_fault(fault)
        self._write(b"%x\r\n%s\r\n" % (len(data), data))
        self.records += 1

    def _apply_fault(self, fault: Any) -> None:
        self.stream_fault = None
        if fault.how == "stall":
            fault.wait(self.gone)  # then the stream goes on
            return
        if fault.how == "end":
            self._write(b"0\r\n\r\n")
        elif fault.how == "error":
            line = dumps({"error": fault.error})
            if self.path.startswith("/v1/"):
                line = b"data: " + line + b"\n"
            line += b"\n"
            self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
        else:
            self.abort()
        self._h.close_connection = True
        raise ClientGone(f"stream cut by fault injection ({fault.how})")

    def end_stream(self) -> None:
        self._write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Cut the connection abruptly (no terminating chunk)."""
        self._h.close_connection = True
        try:
            self._h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
            return
        try:
            self._h.wfile.write(data)
        except (OSError, ValueError) as exc:
            self._h.close_connection = True
            raise ClientGone(str(exc)) from None


def _ready(sock: socket.socket, event: int) -> bool:
    """Whether ``sock`` is ready for ``event`` now (poll: any descriptor number)."""
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(0))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class SimRequestHandler(BaseHTTPRequestHandler):
    """Parses requests and hands an :class:`Exchange` to ``server.app``."""

    protocol_version = "HTTP/1.1"
    server_version = "olol-sim"
    sys_version = ""
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 60
    server: SimHTTPServer

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def read_body(self) -> bytes:
        limit = self.server.max_body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise ApiError(400, "malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    self.close_connection = True
                    raise ApiError(413, "request body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(16)
            return b"".join(parts)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length") from None
        if length > limit:
            self.close_connection = True
            raise ApiError(413, "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        ex = Exchange(self, self.command)
        try:
            self.server.app(ex)
        except ClientGone:
            self.close_connection = True
        finally:
            if not self.close_connection and ex._body is None:
                # Drain an unread body so the next request on this connection parses.
                try:
                    ex.body()
                except ApiError:
                    self.close_connection = True

    do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class SimHTTPServer(ThreadingHTTPServer):
    """Threading server with named, tracked, bounded connection threads."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Callable[[Exchange], None], *,
                 max_connections: int = 256, max_body: int = 64 * 1024 * 1024):
        self.app = app
        self.max_connections = max_connections
        self.max_body = max_body
        self._conn_lock = threading.Lock()
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._ids = itertools.count(1)
        super().__init__(address, SimRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            if len(self._conns) >= self.max_connections:
                full = True
            else:
                full = False
                conn_id = next(self._ids)
                thread = threading.Thread(
                    target=self._run_connection, args=(conn_id, request, client_address),
                    name=f"olol-sim-conn-{conn_id}", daemon=True)
                self._conns[conn_id] = (request, thread)
        if full:
            log.warning("connection limit (%d) reached; refusing %s",
                        self.max_connections, client_address)
            body = b'{"error":"too many connections"}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                                b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        thread.start()

    def _run_connection(self, conn_id: int, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.pop(conn_id, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)

    def open_connections(self) -> int:
        with self._conn_lock:
            return len(self._conns)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and wait (bounded) for their threads."""
        with self._conn_lock:
            conns = list(self._conns.values())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in conns:
            thread.join(timeout=max(0.1, timeout / max(1, len(conns))))

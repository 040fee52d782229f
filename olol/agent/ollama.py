"""A lean HTTP client for the local Ollama, with keep-alive and hard cancellation.

The agent relays bodies as bytes: nothing here re-encodes JSON. Streamed answers
are read line by line and handed over as soon as each line arrives. A call can
be aborted from another thread (the gRPC cancellation callback): the socket is
shut down, which wakes the reading thread and makes Ollama see the disconnect
and stop generating.

Errors: :class:`OllamaHTTPError` (Ollama answered a non-2xx status, message kept
word for word) and :class:`OllamaUnavailable` (no connection or the connection
broke). :func:`grpc_code_for_status` is the one place an Ollama HTTP status
becomes a gRPC status code.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson

_LOG = logging.getLogger(__name__)

#: Longest NDJSON record accepted from Ollama (final records carry the context array).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: A streamed answer that ended cleanly without its final record.
TRUNCATED_MESSAGE = "ollama ended the stream without its final record"
#: Largest non-streamed body accepted from Ollama (embeddings of a big batch).
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Largest error body read from Ollama.
MAX_ERROR_BYTES = 64 * 1024

_RETRYABLE_ON_REUSE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    BrokenPipeError,
    ConnectionResetError,
)


class OllamaHTTPError(Exception):
    """Ollama answered with a non-2xx status; ``message`` is its own wording."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


class OllamaUnavailable(Exception):
    """Ollama could not be reached, or the connection broke mid-answer."""


class OllamaStreamError(Exception):
    """Ollama sent an ``{"error": ...}`` record after the stream had started."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def grpc_code_for_status(status: int) -> grpc.StatusCode:
    """Map an Ollama HTTP status to the gRPC code the agent answers with."""
    if status == 404:
        return grpc.StatusCode.NOT_FOUND
    if status == 400:
        return grpc.StatusCode.INVALID_ARGUMENT
    if status == 503:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if status == 499:
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def error_message(body: bytes) -> str:
    """Ollama's error message from an error body: the ``error`` string, else the text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return body.decode("utf-8", "replace").strip()


def classify_line(line: bytes) -> tuple[bool, str | None]:
    """Return ``(done, error_message)`` for one NDJSON record.

    Only records that may carry a top-level ``done: true`` or ``error`` key are
    parsed, so ordinary token records are forwarded without decoding.
    """
    maybe_error = b'"error"' in line
    maybe_done = b'"done"' in line and b"true" in line
    if not (maybe_error or maybe_done):
        return False, None
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(data, dict):
        return False, None
    if maybe_error and "error" in data:
        err = data["error"]
        return False, err if isinstance(err, str) else orjson.dumps(err).decode()
    return data.get("done") is True, None


def sort_records(lines: list[bytes]) -> tuple[list[bytes], bool, str | None]:
    """``(good, done, error)``: the records before the first error record, whether
    the last of them is the final one, and that error's message (None: none)."""
    good: list[bytes] = []
    done = False
    for line in lines:
        final, error = classify_line(line)
        if error is not None:
            return good, False, error
        good.append(line)
        done = final
    return good, done, None


class ChunkedLines:
    """Decodes an HTTP/1.1 chunked body fed in arbitrary pieces into NDJSON records.

    :meth:`feed` returns the complete, non-blank records (without their newline)
    that the piece completed. ``finished`` becomes true after the last chunk and
    its trailer; ``tail`` is then any last record that had no newline.

    :raises ValueError: a malformed chunk header, or a record longer than ``max_line``.
    """

    _SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._raw = bytearray()
        self._body = bytearray()
        self._state = self._SIZE
        self._left = 0
        self.extra = False  # bytes after the end of the body
        self.tail = b""

    @property
    def finished(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> list[bytes]:
        raw = self._raw
        if self._state == self._DATA and not raw and len(data) <= self._left:
            self._body += data  # the common case: the piece is all record data
            self._left -= len(data)
            if not self._left:
                self._state = self._CRLF
        else:
            raw += data
            self._parse()
        return self._lines()

    def _parse(self) -> None:
        raw = self._raw
        while raw:
            state = self._state
            if state == self._SIZE:
                end = raw.find(b"\r\n")
                if end < 0:
                    if len(raw) > 1024:
                        raise ValueError("chunk size line too long")
                    return
                field = bytes(raw[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(field, 16)
                except ValueError:
                    raise ValueError(f"bad chunk size {field[:20]!r}") from None
                if size < 0:
                    raise ValueError("negative chunk size")
                del raw[:end + 2]
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._left = size
                    self._state = self._DATA
            elif state == self._DATA:
                take = min(self._left, len(raw))
                self._body += raw[:take]
                del raw[:take]
                self._left -= take
                if not self._left:
                    self._state = self._CRLF
            elif state == self._CRLF:
                if len(raw) < 2:
                    return
                if raw[:2] != b"\r\n":
                    raise ValueError("missing CRLF after a chunk")
                del raw[:2]
                self._state = self._SIZE
            elif state == self._TRAILER:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                del raw[:end + 2]
                if end == 0:  # the empty line that ends the trailer
                    self._state = self._DONE
            else:
                self.extra = True
                raw.clear()

    def _lines(self) -> list[bytes]:
        body = self._body
        cut = body.rfind(b"\n")
        if cut < 0:
            if len(body) > self.max_line:
                raise ValueError(f"record longer than {self.max_line} bytes")
            if self._state == self._DONE:
                self.tail = bytes(body).strip()
                body.clear()
            return []
        lines = bytes(body[:cut]).split(b"\n")
        del body[:cut + 1]
        if self._state == self._DONE:
            self.tail = bytes(body).strip()
            body.clear()
        out = []
        for line in lines:
            if len(line) > self.max_line:
                raise ValueError(f"record longer than {self.max_line} bytes")
            line = line.rstrip(b"\r")
            if line.strip():
                out.append(line)
        return out


class OllamaCall:
    """One HTTP exchange with Ollama; :meth:`abort` may be called from any thread."""

    def __init__(
        self,
        client: OllamaClient,
        method: str,
        path: str,
        body: Any,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        self._method = method
        self._path = path
        self._body = body
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._aborted = False
        self._finished = False
        self.status = 0

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Close the connection now so that Ollama stops working on this request."""
        with self._lock:
            if self._aborted or self._finished:
                return
            self._aborted = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self) -> int:
        """Send the request and read the status line and headers; returns the status.

        Raises :class:`OllamaUnavailable` when no answer could be obtained.
        """
        attempts = 2
        for attempt in range(attempts):
            conn, reused = self._client._acquire()
            with self._lock:
                if self._aborted:
                    conn.close()
                    raise OllamaUnavailable("request cancelled")
                self._conn = conn
            try:
                if conn.sock is None:
                    if self._timeout is not None:
                        conn.timeout = (self._timeout if conn.timeout is None
                                        else min(conn.timeout, self._timeout))
                    conn.connect()
                    assert conn.sock is not None  # connect() sets it or raises
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self._aborted:  # abort() came while there was no socket to shut
                        conn.close()
                        raise OllamaUnavailable("request cancelled")
                conn.sock.settimeout(self._timeout or self._client.read_timeout)
                conn.request(self._method, self._path, body=self._body, headers=self._headers)
                self._response = conn.getresponse()
            except _RETRYABLE_ON_REUSE as exc:
                conn.close()
                # A pooled connection the server closed while idle: retry once on
                # a fresh one, unless the body was a one-shot iterator.
                replayable = self._body is None or isinstance(self._body, bytes)
                if reused and replayable and attempt + 1 < attempts and not self._aborted:
                    continue
                raise OllamaUnavailable(self._describe(exc)) from exc
            except OSError as exc:
                conn.close()
                raise OllamaUnavailable(self._describe(exc)) from exc
            except http.client.HTTPException as exc:
                conn.close()
                raise OllamaUnavailable(self._describe(exc)) from exc
            self.status = self._response.status
            return self.status
        raise AssertionError("unreachable")

    def _give_up(self, message: str) -> OllamaUnavailable:
        """Drop the connection (it is in an unknown state) and return the error to raise."""
        self.close(reusable=False)
        return OllamaUnavailable(message)

    def _describe(self, exc: BaseException) -> str:
        if self._aborted:
            return "request cancelled"
        return f"ollama unreachable at {self._client.base_url}: {exc}"

    def read_body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """Read the whole (bounded) body and release the connection."""
        assert self._response is not None
        try:
            data = self._response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._give_up(self._describe(exc)) from exc
        if len(data) > limit:
            raise self._give_up(f"ollama answer larger than {limit} bytes")
        self.close(reusable=True)
        return data

    def raise_for_status(self) -> None:
        """Raise :class:`OllamaHTTPError` with Ollama's message when the status is not 2xx."""
        if 200 <= self.status < 300:
            return
        body = self.read_body(MAX_ERROR_BYTES) if self._response is not None else b""
        raise OllamaHTTPError(self.status, error_message(body) or f"HTTP {self.status}")

    def lines(self) -> Iterator[bytes]:
        """Yield the NDJSON records of a streamed answer, each as soon as it arrives."""
        resp = self._response
        assert resp is not None
        if resp.chunked and resp.fp is not None:
            # http.client's readline cannot tell a chunked body cut before its first
            # chunk from a complete one (both leave chunk_left None and fp closed):
            # decode the framing ourselves, which sees the missing last chunk.
            for batch in self.arrived():
                yield from batch
            return
        try:
            while True:
                line = resp.readline(MAX_LINE_BYTES + 1)
                if not line:
                    # readline hides a truncated body (it peeks and swallows
                    # IncompleteRead): after a complete sized body length is 0.
                    # (Chunked bodies never get here, see above.) A body framed by
                    # the connection's close has no end to check.
                    truncated = bool(resp.length)
                    if truncated and not self._aborted:
                        raise OllamaUnavailable("ollama closed the stream before its end")
                    if not truncated:
                        resp.close()  # read to its end: the connection may be reused
                    break
                if len(line) > MAX_LINE_BYTES:
                    raise OllamaUnavailable(f"ollama record longer than {MAX_LINE_BYTES} bytes")
                line = line.rstrip(b"\r\n")
                if line:
                    yield line
        except (OSError, http.client.HTTPException) as exc:
            raise self._give_up(self._describe(exc)) from exc
        if self._aborted:
            raise self._give_up("request cancelled")
        self.close(reusable=True)

    def batches(self, max_batch: int = 64) -> Iterator[list[bytes]]:
        """Like :meth:`lines`, but hands over every record that has already arrived
        together: a batch is the first record read plus those already buffered
        behind it. Nothing waits for more data, so no record is delayed."""
        lines = self.lines()
        for line in lines:
            batch = [line]
            while len(batch) < max_batch and self._record_buffered():
                nxt = next(lines, None)
                if nxt is None:
                    break
                batch.append(nxt)
            yield batch

    def arrived(self, read_size: int = 65536) -> Iterator[list[bytes]]:
        """The records of a streamed answer, grouped as they arrived: each list holds
        the complete records that one read from the socket delivered (one record on
        a paced stream, several when Ollama got ahead). Nothing waits for more.

        Chunked answers (what Ollama sends) are decoded here directly from the
        socket's buffer, without a Python-level ``readline`` per record; other
        framings fall back to :meth:`batches`.
        """
        resp = self._response
        assert resp is not None
        if not resp.chunked or resp.fp is None:
            yield from self.batches()
            return
        fp = resp.fp
        decoder = ChunkedLines(MAX_LINE_BYTES)
        try:
            while not decoder.finished and not self._aborted:
                data = fp.read1(read_size)
                if not data:
                    if self._aborted:
                        break
                    raise OllamaUnavailable("ollama closed the stream before its end")
                lines = decoder.feed(data)
                if lines:
                    yield lines
        except ValueError as exc:  # bad framing or an overlong record
            raise self._give_up(f"ollama sent a malformed stream: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._give_up(self._describe(exc)) from exc
        if self._aborted:
            raise self._give_up("request cancelled")
        if decoder.tail:
            yield [decoder.tail]  # a last record without its newline
        clean = not decoder.extra
        resp.close()  # the body was read to its end: the connection may be reused
        self.close(reusable=clean)

    def _record_buffered(self) -> bool:
        """True when a whole further record is already in our buffer (never blocks)."""
        resp = self._response
        conn = self._conn
        if resp is None or resp.fp is None or conn is None or conn.sock is None:
            return False
        sock = conn.sock
        previous = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            data = resp.fp.peek(1)
        except (OSError, ValueError):
            return False
        finally:
            try:
                sock.settimeout(previous)
            except OSError:
                pass
        if resp.chunked and not resp.chunk_left:
            # the chunk trailer, the next chunk's size line and the record itself
            return data.count(b"\n") >= 3
        return b"\n" in data

    def close(self, reusable: bool = False) -> None:
        """Release the connection: back to the pool when the answer was fully read."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            conn, self._conn = self._conn, None
            resp = self._response
        if conn is None:
            return
        keep = (
            reusable
            and not self._aborted
            and resp is not None
            and resp.isclosed()
            and not resp.will_close
        )
        if keep:
            self._client._release(conn)
        else:
            conn.close()


class OllamaClient:
    """Talks to one Ollama over HTTP with a bounded pool of keep-alive connections.

    :param base_url: e.g. ``http://127.0.0.1:11434``.
    :param pool_size: most idle connections kept open.
    :param connect_timeout: seconds to establish a connection.
    :param read_timeout: seconds a single socket read may block (model loads are slow).
    """

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
    ) -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported Ollama URL scheme: {parts.scheme!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 11434)
        self._prefix = parts.path.rstrip("/")
        self._pool: deque[http.client.HTTPConnection] = deque()
        self._pool_size = pool_size
        self._pool_lock = threading.Lock()
        self._closed = False
        self.connections_opened = 0  # how many connections were made (reuse shows here)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        with self._pool_lock:
            self.connections_opened += 1
        return cls(self._host, self._port, timeout=self.connect_timeout), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if not self._closed and len(self._pool) < self._pool_size:
                self._pool.append(conn)
                return
        conn.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> OllamaCall:
        """Prepare one exchange; the caller registers ``abort`` then calls ``send``.

        ``body`` is bytes, None, or an iterable of bytes (sent chunked unless
        ``headers`` carries a Content-Length). ``timeout`` bounds every socket
        operation of this exchange (default: the client's connect and read timeouts).
        """
        return OllamaCall(self, method, self._prefix + path, body, timeout, headers)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One non-streamed exchange: ``(status, body)``; raises on non-2xx or no connection."""
        c = self.call(method, path, body)
        c.send()
        c.raise_for_status()
        return c.status, c.read_body()

    def request_json(self, method: str, path: str, timeout: float | None = None) -> object:
        """GET-style helper for the status report, with an optional short timeout."""
        c = self.call(method, path, None, timeout)
        c.send()
        c.raise_for_status()
        try:
            return orjson.loads(c.read_body())
        except orjson.JSONDecodeError as exc:
            raise OllamaUnavailable(f"ollama answered {path} with invalid JSON: {exc}") from exc

    def close(self) -> None:
        """Close every pooled connection; calls in progress finish on their own."""
        with self._pool_lock:
            self._closed = True
            conns = list(self._pool)
            self._pool.clear()
        for conn in conns:
            conn.close()

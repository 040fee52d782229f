"""The agent's side of ``rpc Mux``: Generate and Chat calls multiplexed on one call.

A :class:`MuxSession` serves one session: a ``MuxListen`` call that carries the
agent's messages, joined by the ``MuxSend`` call that carries the coordinator's
(the handler of ``MuxSend`` reads them), or one bidirectional ``Mux`` call (a
thread named ``olol-agent-mux-in`` reads them). Each ``MuxOpen`` goes to
the worker pool, which opens the call to Ollama with the servicer's own code
(:meth:`NodeAgentServicer._mux_start`) and a :class:`CallContext` standing in for
a gRPC context, so records, errors, in-flight counts and cancellation are those
of the plain calls. A streamed answer is then read by the handler's thread,
together with every other streamed answer of the session: it waits on all their
sockets at once, reads each one that is ready and sends the records of all of
them as one ``MuxDown``. Ollama's runner decodes one token of every running
request per step, so the records of a node's busy slots arrive together and
cross as one message, read with one wake-up. Nothing waits for more: a lone
paced stream is sent record by record. Other answers (non-streamed, or built by
the agent) are relayed by their worker.

Bounds: at most ``max_calls`` calls open at once on a session (more are answered
503 at once); each call may have its window (1 MiB) of records sent and not yet
acknowledged (``MuxAck``) before the agent stops reading its answer, so a slow
caller holds back its own call and nobody else's.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc

from olol.agent.ollama import (
    MAX_LINE_BYTES,
    TRUNCATED_MESSAGE,
    ChunkedLines,
    OllamaCall,
    sort_records,
)
from olol.rpc import node_pb2

_LOG = logging.getLogger(__name__)

#: Bytes of one call's records that may be sent and not yet acknowledged.
WINDOW_BYTES = 1024 * 1024
PATHS = ("/api/generate", "/api/chat")
STATUS_METADATA = "x-ollama-status"
STREAM_ERROR_METADATA = "x-ollama-stream-error"
#: Request metadata: "build the non-streamed answer here and show progress every
#: N seconds" (value: N). See :mod:`olol.agent.aggregate`.
AGGREGATE_METADATA = "x-olol-aggregate"
#: How often a waiting session checks that its call is still alive.
CHECK_S = 1.0
#: A session that no ``MuxSend`` joins within this many seconds ends.
JOIN_S = 10.0
READ_SIZE = 65536
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]


@dataclass
class MuxStart:
    """How one call goes on once opened: ``chunks`` (its worker relays them), or
    ``call``, a chunked stream the session reads, and ``release`` (once, when it
    is over)."""

    chunks: Iterator[Any] | None = None
    call: OllamaCall | None = None
    release: Callable[[], None] | None = None


class CallAborted(Exception):
    """Raised by :meth:`CallContext.abort`, as gRPC's own ``abort`` raises."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """What the servicer's relay uses of a ``grpc.ServicerContext``, for one
    multiplexed call: callbacks run on cancel, ``abort`` raises, trailing
    metadata is kept for the error part, the aggregate interval is metadata."""

    def __init__(self, aggregate_s: float) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], Any]] = []
        self._active = True
        self.trailing: dict[str, str] = {}
        # not ``> 0`` (a NaN among them): a plain stream
        self._metadata = ((AGGREGATE_METADATA, f"{aggregate_s:g}"),) if aggregate_s > 0 else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        with self._lock:
            if not self._active:
                return False
            self._callbacks.append(callback)
            return True

    def is_active(self) -> bool:
        return self._active

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing.update((str(k), str(v)) for k, v in metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CallAborted(code, details)

    def cancel(self) -> None:
        """The caller cancelled (or the session ended): run the callbacks once."""
        with self._lock:
            if not self._active:
                return
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - closing an Ollama request that is over
                _LOG.debug("a cancel callback failed", exc_info=True)


class _Call:
    __slots__ = ("ctx", "sent", "acked", "stream")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.sent = 0
        self.acked = 0
        self.stream: _Stream | None = None  # once the session reads its answer


class _Stream:
    """A streamed answer the session reads (one call's socket and decoder)."""

    __slots__ = ("cid", "call", "ollama", "sock", "decoder", "release", "finished",
                 "registered", "over")

    def __init__(self, cid: int, call: _Call, ollama: OllamaCall, sock: socket.socket,
                 release: Callable[[], None]) -> None:
        self.cid = cid
        self.call = call
        self.ollama = ollama
        self.sock = sock
        self.decoder = ChunkedLines(MAX_LINE_BYTES)
        self.release = release
        self.finished = False  # the final record went out
        self.registered = False
        self.over = False


class MuxSession:
    """One ``Mux`` call (see the module's docstring).

    :param start: ``start(context, path, request)`` opens one call and says how it
        goes on (:class:`MuxStart`).
    :param workers: runs one call each (the agent's RPC pool).
    :param max_calls: calls open at once on this session.
    :param window: bytes of one call's records sent and not yet acknowledged.
    :ivar messages: ``MuxDown`` messages sent so far; ``parts``: the parts they carried.
    """

    def __init__(self, start: Callable[[Any, str, Any], MuxStart], workers: Executor,
                 max_calls: int, window: int = WINDOW_BYTES) -> None:
        self._start = start
        self._window = window
        self.messages = 0
        self.parts = 0
        self._workers = workers
        self._max_calls = max_calls
        self._cond = threading.Condition()
        self._parts: list[Any] = []
        self._calls: dict[int, _Call] = {}
        self._input_over = False
        self._joined = False  # the coordinator's messages have a reader
        self._closed = False
        self._draining = False
        self._handed: list[_Stream] = []  # streams to register with the selector
        self._streams: set[_Stream] = set()  # streams read by the session, not over
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    # ------------------------------------------------------------------ serving
    def serve(self, context: grpc.ServicerContext,
              requests: Iterator[Any] | None = None) -> Iterator[Any]:
        """The handler's body: read the streams and send until the session is over.
        ``requests``: the coordinator's messages on this same call (``Mux``), read
        by a thread started here; None: a ``MuxSend`` call brings them
        (:meth:`join`), within :data:`JOIN_S` seconds or the session ends."""
        context.add_callback(self.close)
        reader = None
        if requests is not None:
            self._joined = True
            reader = threading.Thread(target=self._read, args=(requests,),
                                      name="olol-agent-mux-in", daemon=True)
            reader.start()
        join_by = time.monotonic() + JOIN_S
        try:
            while True:
                with self._cond:
                    parts, self._parts = self._parts, []
                    handed, self._handed = self._handed, []
                    over = self._closed or ((self._input_over or self._draining)
                                            and not self._calls)
                for stream in handed:
                    self._watch(stream)
                if parts:
                    self.messages += 1
                    self.parts += len(parts)
                    if self.messages == 1:
                        yield node_pb2.MuxDown(parts=parts, window=self._window)
                    else:
                        yield node_pb2.MuxDown(parts=parts)
                    continue
                if over:
                    return
                events = self._selector.select(CHECK_S)
                if not events:
                    if not context.is_active():
                        return
                    if not self._joined and time.monotonic() > join_by:
                        _LOG.warning("multiplexed session: no MuxSend joined it in %g s",
                                     JOIN_S)
                        return
                while events:
                    for key, _ in events:
                        if key.data is None:
                            self._drain_wake()
                        else:
                            self._pump(key.data)
                    # what became ready meanwhile goes in the same message (no wait)
                    events = self._selector.select(0)
        finally:
            self.close()
            with self._cond:
                left = list(self._streams)
                self._handed = []
            for stream in left:
                self._finish(stream, None)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            if reader is not None:
                reader.join(timeout=CHECK_S)

    def join(self, requests: Iterator[Any]) -> bool:
        """Read the coordinator's messages from a ``MuxSend`` call, in the calling
        thread, until that call ends; False (nothing read) when the session already
        has its reader or is over."""
        with self._cond:
            if self._joined or self._closed:
                return False
            self._joined = True
        self._read(requests)
        return True

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            for up in requests:
                for ack in up.ack:
                    self._ack(ack.id, ack.bytes)
                for cid in up.cancel:
                    self._cancel(cid)
                for op in up.open:
                    self._open(op)
                if self._closed:
                    break  # the session ended (its MuxListen call is over)
        except grpc.RpcError:
            pass  # the coordinator went away: close() cancels what is left
        except Exception:  # noqa: BLE001 - a reader that dies must not leave calls open
            _LOG.exception("multiplexed call: reading the coordinator's messages failed")
            self.close()
        finally:
            with self._cond:
                self._input_over = True
            self._wake()

    def drain(self) -> None:
        """Take no new calls (they are answered 503, which the coordinator retries
        elsewhere); the session ends once its open calls are over."""
        with self._cond:
            self._draining = True
        self._wake()

    def close(self) -> None:
        """The session is over: cancel every call still open (idempotent)."""
        with self._cond:
            self._closed = True
            calls = list(self._calls.values())
            self._calls.clear()
        self._wake()
        for call in calls:
            call.ctx.cancel()
        with self._cond:
            self._cond.notify_all()  # a worker waiting on a full window sees it cancelled

    # ------------------------------------------------------------------ calls
    def _open(self, op: Any) -> None:
        cid = op.id
        refusal = None
        if op.path not in PATHS:
            refusal = (grpc.StatusCode.INVALID_ARGUMENT, f"unknown multiplexed path {op.path[:100]!r}", 400)
        with self._cond:
            if self._closed:
                return
            if refusal is None and cid in self._calls:
                refusal = (grpc.StatusCode.INVALID_ARGUMENT, f"call id {cid} is already open", 400)
            if refusal is None and self._draining:
                refusal = (grpc.StatusCode.UNAVAILABLE, "the agent is stopping", 503)
            if refusal is None and len(self._calls) >= self._max_calls:
                refusal = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"agent busy: {self._max_calls} calls already open", 503)
            if refusal is not None:
                code, message, status = refusal
                self._post(node_pb2.MuxPart(id=cid, end=True, code=code.value[0], error=message,
                                            http_status=status))
                return
            call = _Call(CallContext(op.aggregate_s))
            self._calls[cid] = call
        request = node_pb2.OllamaRequest(model=op.model, body=op.body)
        try:
            self._workers.submit(self._run, cid, call, op.path, request)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self._end(cid, call, node_pb2.MuxPart(
                id=cid, end=True, code=UNAVAILABLE, error="the agent is stopping",
                http_status=503))

    def _run(self, cid: int, call: _Call, path: str, request: Any) -> None:
        ctx = call.ctx
        final = node_pb2.MuxPart(id=cid, end=True)
        try:
            start = self._start(ctx, path, request)
            if start.call is not None:
                self._hand_over(cid, call, start)
                return
            assert start.chunks is not None
            for chunk in start.chunks:
                if not self._send(cid, call, chunk.body, chunk.done):
                    return  # cancelled: the relay's callbacks closed Ollama's request
        except CallAborted as exc:
            status = ctx.trailing.get(STATUS_METADATA, "")
            final = node_pb2.MuxPart(
                id=cid, end=True, code=exc.code.value[0], error=exc.details,
                http_status=int(status) if status.isdigit() else 0,
                stream_error=ctx.trailing.get(STREAM_ERROR_METADATA) == "1")
        except Exception as exc:  # noqa: BLE001 - one call's bug must end that call only
            _LOG.exception("multiplexed %s call failed", path)
            final = node_pb2.MuxPart(id=cid, end=True, code=INTERNAL,
                                     error=f"agent error: {type(exc).__name__}", http_status=500)
        self._end(cid, call, final)

    # ------------------------------------------------------------------ read by the session
    def _hand_over(self, cid: int, call: _Call, start: MuxStart) -> None:
        """A streamed answer: read its first piece here (what the HTTP reader may
        already hold), then give its socket to the session's thread."""
        ollama = start.call
        assert ollama is not None and start.release is not None
        resp = ollama._response
        conn = ollama._conn
        sock = conn.sock if conn is not None else None
        stream = _Stream(cid, call, ollama, sock, start.release)  # type: ignore[arg-type]
        if sock is None or resp is None or resp.fp is None:
            self._fail(stream, UNAVAILABLE, "request cancelled", 502)
            return
        try:
            data = resp.fp.read1(READ_SIZE)  # empties the reader's buffer
        except (OSError, ValueError) as exc:
            self._fail(stream, UNAVAILABLE, ollama._describe(exc), 502)
            return
        if not self._feed(stream, data, wake=True):
            return
        try:
            sock.setblocking(False)
        except OSError as exc:
            self._fail(stream, UNAVAILABLE, ollama._describe(exc), 502)
            return
        with self._cond:
            if self._calls.get(cid) is not call:
                over = True
            else:
                over = False
                call.stream = stream
                self._streams.add(stream)
                self._handed.append(stream)
        if over:  # cancelled meanwhile
            self._finish(stream, None)
            return
        self._wake()

    def _watch(self, stream: _Stream) -> None:
        # on the session's thread
        if stream.over:
            return
        with self._cond:
            # membership, not ctx.is_active(): _cancel drops the call under this
            # lock, and runs the context's callbacks only after releasing it
            gone = self._calls.get(stream.cid) is not stream.call
            full = stream.call.sent - stream.call.acked > self._window
            register = not gone and not full and not stream.registered
            if register:
                stream.registered = True
        if gone:
            self._finish(stream, None)  # cancelled (paused, or about to be)
            return
        if not register:
            return  # reading already, or paused: _ack hands it back once caught up
        try:
            self._selector.register(stream.sock, selectors.EVENT_READ, stream)
        except (OSError, ValueError, KeyError):
            stream.registered = False
            self._finish(stream, None)

    def _pump(self, stream: _Stream) -> None:
        # on the session's thread: the socket is readable
        try:
            data = stream.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if stream.ollama.aborted or not stream.call.ctx.is_active():
                self._finish(stream, None)
            else:
                self._fail(stream, UNAVAILABLE, stream.ollama._describe(exc), 502)
            return
        if stream.ollama.aborted or not stream.call.ctx.is_active():
            self._finish(stream, None)  # cancelled: nothing more to say
            return
        if self._feed(stream, data, wake=False):
            # pausing is decided under the lock _cancel and _ack take, so neither
            # sees the stream still read when it is about to be paused (a cancel
            # would then leave it paused, its Ollama request and slot held)
            with self._cond:
                gone = self._calls.get(stream.cid) is not stream.call
                pause = (not gone and stream.registered
                         and stream.call.sent - stream.call.acked > self._window)
                if pause:
                    stream.registered = False
            if gone:
                self._finish(stream, None)
            elif pause:
                self._selector.unregister(stream.sock)

    def _feed(self, stream: _Stream, data: bytes, wake: bool) -> bool:
        """Decode ``data`` and queue its records; False once the stream is over."""
        if not data:
            self._fail(stream, UNAVAILABLE, "ollama closed the stream before its end", 502)
            return False
        try:
            lines = stream.decoder.feed(data)
            if stream.decoder.finished and stream.decoder.tail:
                lines.append(stream.decoder.tail)
        except ValueError as exc:
            self._fail(stream, UNAVAILABLE, f"ollama sent a malformed stream: {exc}", 502)
            return False
        good, done, error = sort_records(lines)
        if error is not None:
            if good:
                self._queue(stream, b"\n".join(good), False, wake)
            self._fail(stream, INTERNAL, error, 500, stream_error=True)
            return False
        stream.finished = stream.finished or done
        if good:
            self._queue(stream, b"\n".join(good), done, wake)
        if stream.decoder.finished:
            if stream.finished:
                self._finish(stream, node_pb2.MuxPart(id=stream.cid, end=True),
                             reusable=not stream.decoder.extra)
            else:
                self._fail(stream, UNAVAILABLE, TRUNCATED_MESSAGE, 502)
            return False
        return True

    def _queue(self, stream: _Stream, body: bytes, done: bool, wake: bool) -> None:
        with self._cond:
            stream.call.sent += len(body)
            self._post(node_pb2.MuxPart(id=stream.cid, body=body, done=done), wake)

    def _fail(self, stream: _Stream, code: int, message: str, status: int,
              stream_error: bool = False) -> None:
        self._finish(stream, node_pb2.MuxPart(id=stream.cid, end=True, code=code, error=message,
                                              http_status=status, stream_error=stream_error))

    def _finish(self, stream: _Stream, part: Any, reusable: bool = False) -> None:
        """The stream is over: stop reading it, release its connection and its
        in-flight count, and send ``part`` (None: nothing, it was cancelled)."""
        with self._cond:
            if stream.over:
                return
            stream.over = True
            self._streams.discard(stream)
        if stream.registered:
            try:
                self._selector.unregister(stream.sock)
            except (KeyError, ValueError, OSError):
                pass
            stream.registered = False
        resp = stream.ollama._response
        if reusable and resp is not None:
            resp.close()
        stream.ollama.close(reusable=reusable)
        stream.release()
        self._end(stream.cid, stream.call, part)

    def _send(self, cid: int, call: _Call, body: bytes, done: bool) -> bool:
        """Queue one part; waits while the call's window is full. False once the
        call was cancelled or the session closed."""
        with self._cond:
            while call.sent - call.acked > self._window and call.ctx.is_active():
                self._cond.wait(CHECK_S)
            if not call.ctx.is_active():
                return False
            call.sent += len(body)
            self._post(node_pb2.MuxPart(id=cid, body=body, done=done))
            return True

    def _end(self, cid: int, call: _Call, part: Any) -> None:
        """The call is over; ``part`` (None: nothing) is its last word, unless it was
        cancelled (the coordinator expects nothing more)."""
        with self._cond:
            if self._calls.get(cid) is not call:
                return
            del self._calls[cid]
            if part is not None:
                self._post(part)

    def _post(self, part: Any, wake: bool = True) -> None:
        # under self._cond; ``wake``: not from the session's own thread
        self._parts.append(part)
        if wake and len(self._parts) == 1:
            self._wake()

    def _wake(self) -> None:
        """Wake the session's thread (it waits on the sockets)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (the session is over)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def unacked(self) -> dict[int, int]:
        """Bytes sent and not yet acknowledged, per open call."""
        with self._cond:
            return {cid: call.sent - call.acked for cid, call in self._calls.items()}

    def _ack(self, cid: int, total: int) -> None:
        resume = False
        with self._cond:
            call = self._calls.get(cid)
            if call is not None and total > call.acked:
                call.acked = total
                self._cond.notify_all()
                stream = call.stream
                if stream is not None and not stream.registered and not stream.over:
                    self._handed.append(stream)  # the session reads it again
                    resume = True
        if resume:
            self._wake()

    def _cancel(self, cid: int) -> None:
        with self._cond:
            call = self._calls.pop(cid, None)
            if call is None:
                return
            if call.stream is not None and not call.stream.registered:
                self._handed.append(call.stream)  # paused: the session finishes it
            # else a read stream: its next read sees the call gone, and the
            # context's callbacks below shut its socket, which makes it readable
        call.ctx.cancel()
        self._wake()
        with self._cond:
            self._cond.notify_all()  # a worker waiting on a full window sees it cancelled

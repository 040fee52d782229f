"""The coordinator's side of ``rpc Mux``: Generate and Chat calls to one node on
one long-lived call.

:class:`MuxChannel` (one per :class:`~olol.rpc.client.NodeClient`) opens a
session when first needed and keeps it: a ``MuxListen`` call that brings the
agent's messages and a ``MuxSend`` call that carries this side's, naming the
session. A thread named ``olol-mux-<address>`` reads the agent's messages
straight from gRPC (a server-streaming call on a channel made with
``SingleThreadedUnaryStream``: no channel thread wakes it for each message, as
it would for a bidirectional call) and hands each part to its
:class:`MuxStream`; the thread that reads a :class:`MuxStream` (the HTTP thread
serving the caller) wakes once per message for its own call. A stream behaves
as a :class:`~olol.rpc.client.NodeStream` does: the same records, the same
:class:`~olol.rpc.client.NodeError` for the same failures, ``cancel()`` ends the
call on the node at once.

When the session fails, every stream open on it fails with the call's error (a
node that went away: UNAVAILABLE, which the dispatcher retries) and the next
stream opens a new session. An agent that does not serve ``MuxListen`` (older
than this coordinator) answers UNIMPLEMENTED: the streams waiting for it are
reopened as plain calls, and so are all later ones.

Each stream keeps what the agent sent and its reader has not taken yet; the
agent sends at most its window (``MuxDown.window``, 1 MiB by default) more than
this side has acknowledged, so that buffer has a bound without a slow caller
holding back the other calls on the node.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import orjson

import olol.rpc.node_pb2 as node_pb2
from olol.ids import new_id

log = logging.getLogger(__name__)

#: Acknowledge a stream's bytes once this many were taken since the last ack, until
#: the agent says its window (then a quarter of it).
ACK_BYTES = 256 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CLOSE = object()
#: The metadata of the ``MuxSend`` call that names its session.
SESSION_METADATA = "x-olol-mux-session"
#: How an agent refuses a ``MuxSend`` that does not fit its session.
_SESSION_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS})


def _error_of(part: Any, channel: MuxChannel) -> Exception:
    code = _CODES.get(part.code, grpc.StatusCode.UNKNOWN)
    status = part.http_status or channel.http_for_code(code)
    return channel.error(code, part.error or code.name, status, mid_stream=part.stream_error)


class MuxStream:
    """One Generate or Chat call on a :class:`MuxChannel` (a ``NodeStream``)."""

    def __init__(self, channel: MuxChannel, cid: int, raw: bool, deadline: float | None,
                 reopen: Callable[[], Any]) -> None:
        self._channel = channel
        self.id = cid
        self._raw = raw
        self._deadline = deadline
        self._reopen = reopen
        self._cond = threading.Condition(threading.Lock())
        self._parts: collections.deque[Any] = collections.deque()
        self._failure: Any = None
        self._ended = False
        self._cancelled = False
        self._plain: Any = None  # the plain call that replaced this one (UNIMPLEMENTED)
        self._taken = 0
        self._acked = 0
        self._pending: list[bytes] = []
        self._last_done = False
        self._done = False
        self._received = 0
        self._sink: Callable[[bytes], bool] | None = None
        # held while the sink writes: the reader of the stream takes it before it
        # writes anything itself (an error line after a cancel or a deadline)
        self._sink_lock = threading.Lock()

    @property
    def done(self) -> bool:
        """The final record was read."""
        return self._plain.done if self._plain is not None else self._done

    @property
    def received(self) -> int:
        """Messages received so far, progress messages included."""
        return self._received + (self._plain.received if self._plain is not None else 0)

    # ------------------------------------------------------------------ fed by the channel
    def set_sink(self, sink: Callable[[bytes], bool] | None) -> bool:
        """Hand the records of later messages to ``sink(body)`` on the channel's
        reader thread instead of queueing them: a message is queued as before when
        it ends the call, when it carries nothing, or when ``sink`` says False (it
        did nothing; no sink is used after that). False when messages are already
        queued (read them first)."""
        with self._sink_lock, self._cond:
            if sink is not None and (self._parts or self._ended or self._plain is not None):
                return False
            self._sink = sink
            return True

    def _stop_sink(self) -> None:
        """No more direct writes; returns once one in progress is over."""
        if self._sink is not None:
            with self._sink_lock:
                self._sink = None

    def deliver(self, part: Any) -> None:
        if self._sink is not None:
            with self._sink_lock:
                sink = self._sink
                if (sink is not None and part.body and not part.done and not part.end
                        and not self._parts):
                    try:
                        taken = sink(part.body)
                    except Exception:  # noqa: BLE001 - the reader thread serves every call
                        log.exception("writing a relayed record failed")
                        taken = False
                    if taken:
                        self._received += 1
                        self._account(part.body)
                        return
                self._sink = None
        with self._cond:
            self._parts.append(part)
            if len(self._parts) == 1:
                self._cond.notify()

    def _account(self, body: bytes) -> None:
        self._taken += len(body)
        if self._taken - self._acked >= self._channel.ack_bytes:
            self._acked = self._taken
            self._channel.ack(self.id, self._taken)

    def fail(self, error: Any, reopen: bool = False) -> None:
        """The ``Mux`` call is over: end this stream with ``error``; ``reopen``: go
        on as a plain call (the agent does not serve ``Mux``)."""
        with self._cond:
            if self._ended:
                return
            self._failure = ("reopen", error) if reopen else ("error", error)
            self._cond.notify()

    # ------------------------------------------------------------------ reading
    def _next_part(self) -> Any:
        """The next part; None when the call went on as a plain call. Raises the
        call's failure, CANCELLED after :meth:`cancel`, DEADLINE_EXCEEDED."""
        make_error = self._channel.error
        with self._cond:
            while not self._parts:
                if self._cancelled:
                    self._cond.release()
                    try:
                        self._stop_sink()
                    finally:
                        self._cond.acquire()
                    raise make_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!",
                                     499)
                if self._failure is not None:
                    kind, failure = self._failure
                    if kind == "reopen" and not self._received:
                        self._plain = self._reopen()
                        return None
                    self._ended = True
                    raise failure
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            else:
                return self._parts.popleft()
        self._stop_sink()
        self.cancel()
        raise make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 504)

    def next_message(self) -> tuple[bytes, bool]:
        """As :meth:`olol.rpc.client.NodeStream.next_message`."""
        if self._plain is not None:
            return self._plain.next_message()
        if self._pending:
            raise RuntimeError("next_message() after a partial read of a message")
        body, done = self._next_body()
        self._done = done
        return body, done

    def _next_body(self) -> tuple[bytes, bool]:
        while True:
            if self._ended:
                raise StopIteration
            part = self._next_part()
            if part is None:  # went on as a plain call
                assert self._plain is not None
                return self._plain.next_message()
            self._received += 1
            if part.end:
                self._finish()
                if part.code:
                    raise _error_of(part, self._channel)
            if part.body:
                self._account(part.body)
            if part.body or part.done:
                if part.done:
                    self._finish()
                return part.body, part.done
            if part.end:
                raise StopIteration

    def __iter__(self) -> MuxStream:
        return self

    def __next__(self) -> Any:
        if self._plain is not None and not self._pending:
            return next(self._plain)
        if not self._pending:
            body, done = self._next_body()
            self._pending = body.split(b"\n")[::-1]
            self._last_done = done
        record = self._pending.pop()
        if not self._pending and self._last_done:
            self._done = True
        return record if self._raw else orjson.loads(record)

    # ------------------------------------------------------------------ ending
    def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            self._channel.forget(self.id)

    def drain(self, most: int = 4) -> None:
        """After the final record: nothing to read (the agent ends the call itself)."""
        self._pending = []
        if self._plain is not None:
            self._plain.drain(most)
            return
        if not self._ended:
            self.cancel()

    def cancel(self) -> None:
        """End the call; the agent closes its Ollama request at once."""
        if self._plain is not None:
            self._plain.cancel()
            return
        with self._cond:
            open_ = not (self._ended or self._cancelled)
            self._cancelled = True
            self._cond.notify()
        if open_:
            self._channel.cancel(self.id)

    close = cancel

    def __enter__(self) -> MuxStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class MuxChannel:
    """The ``Mux`` call to one agent, opened on first use and reopened after a failure.

    :param stub: the agent's ``NodeAgentStub``.
    :param metadata: the call's metadata (the bearer token).
    :param address: the agent's address (names the reader thread).
    :param http_for_code: the HTTP status of a gRPC code (when the agent sent none).
    :param node_error: turns a ``grpc.RpcError`` into a ``NodeError``.
    :param error: builds a ``NodeError`` (``code, message, http_status, mid_stream=``).
    """

    def __init__(self, stub: Any, metadata: Any, address: str,
                 http_for_code: Callable[[grpc.StatusCode], int],
                 node_error: Callable[[grpc.RpcError], Exception],
                 error: Callable[..., Exception]) -> None:
        self._stub = stub
        self.error = error
        self._metadata = metadata
        self._address = address
        self.http_for_code = http_for_code
        self._node_error = node_error
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._streams: dict[int, MuxStream] = {}
        self._outbox: queue.SimpleQueue[Any] | None = None
        self._call: Any = None  # the MuxListen call
        self._send_call: Any = None  # the MuxSend call
        self._reader: threading.Thread | None = None
        self.supported = True
        self._closed = False
        self.ack_bytes = ACK_BYTES
        self.messages = 0  # MuxDown messages received (the reader thread counts)
        self.records = 0  # parts with records among them

    def open(self, path: str, model: str, body: bytes, *, raw: bool,
             timeout: float | None, aggregate: float | None,
             reopen: Callable[[], Any]) -> MuxStream:
        """Open one call; ``reopen()`` makes the same call as a plain RPC."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("the node client is closed")
            cid = next(self._ids)
            stream = MuxStream(self, cid, raw, deadline, reopen)
            self._streams[cid] = stream
            if self._call is None:
                self._start()
            outbox = self._outbox
        assert outbox is not None
        outbox.put(node_pb2.MuxUp(open=[node_pb2.MuxOpen(
            id=cid, path=path, model=model, body=body,
            aggregate_s=max(0.01, aggregate) if aggregate is not None else 0.0)]))
        return stream

    def _start(self) -> None:
        # under self._lock
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def requests() -> Iterator[Any]:
            while True:
                item = outbox.get()
                if item is _CLOSE:
                    return
                yield item

        name = new_id()
        call = self._stub.MuxListen(node_pb2.MuxHello(session=name), metadata=self._metadata)
        sender = self._stub.MuxSend.future(
            requests(), metadata=(*(self._metadata or ()), (SESSION_METADATA, name)))
        self._outbox, self._call, self._send_call = outbox, call, sender
        failed: list[Any] = []  # the MuxSend call's code, when it failed

        def sender_done(future: Any) -> None:
            # this side's messages cannot reach the agent any more: end the session
            # now (its streams are retried) rather than when the agent gives up on it
            if not future.cancelled() and future.code() != grpc.StatusCode.OK:
                failed.append(future.exception())
                call.cancel()

        sender.add_done_callback(sender_done)
        self._reader = threading.Thread(target=self._read, args=(call, sender, outbox, failed),
                                        name=f"olol-mux-{self._address}", daemon=True)
        self._reader.start()

    def _read(self, call: Any, sender: Any, outbox: queue.SimpleQueue[Any],
              failed: list[Any]) -> None:
        streams = self._streams
        error: Any = None
        unimplemented = False
        try:
            for down in call:
                if down.window:
                    self.ack_bytes = max(1, down.window // 4)
                self.messages += 1
                for part in down.parts:
                    if part.body:
                        self.records += 1
                    stream = streams.get(part.id)
                    if stream is not None:
                        stream.deliver(part)
            error = self.error(grpc.StatusCode.UNAVAILABLE, "the node ended its multiplexed call", 503)
        except grpc.RpcError as exc:
            if failed and exc.code() == grpc.StatusCode.CANCELLED:  # cancelled by sender_done
                code = failed[0].code()
                unimplemented = code == grpc.StatusCode.UNIMPLEMENTED
                if code in _SESSION_CODES:  # the session itself went wrong: try again
                    error = self.error(grpc.StatusCode.UNAVAILABLE,
                                       f"the node's multiplexed session failed ({code.name})", 503)
                else:  # what the node says of any call (a bad token, going away, ...)
                    error = self._node_error(failed[0])
            else:
                unimplemented = exc.code() == grpc.StatusCode.UNIMPLEMENTED
                error = self._node_error(exc)
        except Exception as exc:  # noqa: BLE001 - the streams must hear of it
            log.exception("reading the multiplexed call of %s failed", self._address)
            error = self.error(grpc.StatusCode.INTERNAL, f"multiplexed call failed: {exc}", 502)
        with self._lock:
            if self._call is call:
                self._call, self._send_call, self._outbox, self._reader = None, None, None, None
            if unimplemented:
                self.supported = False
            orphans = list(streams.values())
            streams.clear()
        outbox.put(_CLOSE)
        sender.cancel()
        for s in orphans:
            s.fail(error, reopen=unimplemented)

    def open_count(self) -> int:
        """Streams open on the call."""
        return len(self._streams)

    # ------------------------------------------------------------------ from streams
    def ack(self, cid: int, total: int) -> None:
        self._send(node_pb2.MuxUp(ack=[node_pb2.MuxAck(id=cid, bytes=total)]))

    def cancel(self, cid: int) -> None:
        with self._lock:
            known = self._streams.pop(cid, None) is not None
        if known:
            self._send(node_pb2.MuxUp(cancel=[cid]))

    def forget(self, cid: int) -> None:
        with self._lock:
            self._streams.pop(cid, None)

    def _send(self, up: Any) -> None:
        outbox = self._outbox
        if outbox is not None:
            outbox.put(up)

    def close(self, timeout: float = 2.0) -> None:
        """End the call (the streams still open fail as cancelled) and its reader."""
        with self._lock:
            self._closed = True
            call, sender = self._call, self._send_call
            outbox, reader = self._outbox, self._reader
        if outbox is not None:
            outbox.put(_CLOSE)
        if sender is not None:
            sender.cancel()
        if call is not None:
            call.cancel()
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)

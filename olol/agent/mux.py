"""The agent's side of ``rpc Mux``: Generate and Chat calls multiplexed on one call.

A :class:`MuxSession` serves one ``Mux`` call. A thread named
``olol-agent-mux-in`` reads the coordinator's messages: each ``MuxOpen`` runs the
servicer's own Generate/Chat relay (:meth:`NodeAgentServicer._stream`) on the
worker pool with a :class:`CallContext` standing in for a gRPC context, so the
records, errors, in-flight counts and cancellation are exactly those of the
plain calls. The handler's thread sends: whenever it is free it takes every part
the workers have queued and sends them as one ``MuxDown``. Nothing waits for
more: a paced stream is sent record by record, and the records of the node's
parallel slots, written by Ollama at the same decode step, share a message.

Bounds: at most ``max_calls`` calls open at once on a session (more are answered
503 at once); each call may have :data:`WINDOW_BYTES` of records sent and not yet
acknowledged (``MuxAck``) before its worker stops reading Ollama, so a slow
caller holds its own call back and nobody else's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc

from olol.rpc import node_pb2

_LOG = logging.getLogger(__name__)

#: Bytes of one call's records that may be sent and not yet acknowledged.
WINDOW_BYTES = 1024 * 1024
PATHS = ("/api/generate", "/api/chat")
STATUS_METADATA = "x-ollama-status"
STREAM_ERROR_METADATA = "x-ollama-stream-error"
AGGREGATE_METADATA = "x-olol-aggregate"
#: How many times the sender lets ready workers run before it sends.
YIELDS = 3
#: How often a waiting sender checks that the session is still alive.
CHECK_S = 1.0


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
    __slots__ = ("ctx", "sent", "acked")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.sent = 0
        self.acked = 0


class MuxSession:
    """One ``Mux`` call (see the module's docstring).

    :param relay: ``relay(context, path, request)`` yields the ``OllamaChunk``s of
        one call (the servicer's Generate/Chat relay).
    :param workers: runs one call each (the agent's RPC pool).
    :param max_calls: calls open at once on this session.
    :param window: bytes of one call's records sent and not yet acknowledged.
    :ivar messages: ``MuxDown`` messages sent so far; ``parts``: the parts they carried.
    """

    def __init__(self, relay: Callable[[Any, str, Any], Iterator[Any]], workers: Executor,
                 max_calls: int, window: int = WINDOW_BYTES) -> None:
        self._relay = relay
        self._window = window
        self.messages = 0
        self.parts = 0
        self._workers = workers
        self._max_calls = max_calls
        self._cond = threading.Condition()
        self._parts: list[Any] = []
        self._calls: dict[int, _Call] = {}
        self._input_over = False
        self._closed = False
        self._draining = False

    # ------------------------------------------------------------------ serving
    def serve(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """The handler's body: start the reader, then send until the session is over."""
        context.add_callback(self.close)
        reader = threading.Thread(target=self._read, args=(requests,),
                                  name="olol-agent-mux-in", daemon=True)
        reader.start()
        try:
            while True:
                with self._cond:
                    while not self._parts:
                        if self._closed or ((self._input_over or self._draining)
                                            and not self._calls):
                            return
                        self._cond.wait(CHECK_S)
                        if not context.is_active():
                            return
                    for _ in range(YIELDS):
                        if len(self._parts) >= len(self._calls):
                            break
                        # let the workers that are ready add theirs (a decode step
                        # writes every slot's record at once); no timed wait
                        self._cond.release()
                        time.sleep(0)
                        self._cond.acquire()
                    parts, self._parts = self._parts, []
                    self.messages += 1
                    self.parts += len(parts)
                if self.messages == 1:
                    yield node_pb2.MuxDown(parts=parts, window=self._window)
                else:
                    yield node_pb2.MuxDown(parts=parts)
        finally:
            self.close()
            reader.join(timeout=CHECK_S)

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            for up in requests:
                for ack in up.ack:
                    self._ack(ack.id, ack.bytes)
                for cid in up.cancel:
                    self._cancel(cid)
                for op in up.open:
                    self._open(op)
        except grpc.RpcError:
            pass  # the coordinator went away: close() cancels what is left
        except Exception:  # noqa: BLE001 - a reader that dies must not leave calls open
            _LOG.exception("multiplexed call: reading the coordinator's messages failed")
            self.close()
        finally:
            with self._cond:
                self._input_over = True
                self._cond.notify_all()

    def drain(self) -> None:
        """Take no new calls (they are answered 503, which the coordinator retries
        elsewhere); the session ends once its open calls are over."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def close(self) -> None:
        """The session is over: cancel every call still open (idempotent)."""
        with self._cond:
            self._closed = True
            calls = list(self._calls.values())
            self._calls.clear()
            self._cond.notify_all()
        for call in calls:
            call.ctx.cancel()

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
            call = _Call(CallContext(op.aggregate_s if op.aggregate_s == op.aggregate_s else 0.0))
            self._calls[cid] = call
        request = node_pb2.OllamaRequest(model=op.model, body=op.body)
        try:
            self._workers.submit(self._run, cid, call, op.path, request)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self._end(cid, call, node_pb2.MuxPart(
                id=cid, end=True, code=grpc.StatusCode.UNAVAILABLE.value[0],
                error="the agent is stopping", http_status=503))

    def _run(self, cid: int, call: _Call, path: str, request: Any) -> None:
        ctx = call.ctx
        final = node_pb2.MuxPart(id=cid, end=True)
        try:
            for chunk in self._relay(ctx, path, request):
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
            final = node_pb2.MuxPart(id=cid, end=True, code=grpc.StatusCode.INTERNAL.value[0],
                                     error=f"agent error: {type(exc).__name__}", http_status=500)
        self._end(cid, call, final)

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
        with self._cond:
            if self._calls.get(cid) is not call:
                return  # cancelled: the coordinator expects nothing more
            del self._calls[cid]
            self._post(part)

    def _post(self, part: Any) -> None:
        # under self._cond
        self._parts.append(part)
        if len(self._parts) == 1:
            self._cond.notify_all()

    def unacked(self) -> dict[int, int]:
        """Bytes sent and not yet acknowledged, per open call."""
        with self._cond:
            return {cid: call.sent - call.acked for cid, call in self._calls.items()}

    def _ack(self, cid: int, total: int) -> None:
        with self._cond:
            call = self._calls.get(cid)
            if call is not None and total > call.acked:
                call.acked = total
                self._cond.notify_all()

    def _cancel(self, cid: int) -> None:
        with self._cond:
            call = self._calls.pop(cid, None)
            self._cond.notify_all()
        if call is not None:
            call.ctx.cancel()

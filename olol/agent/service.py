"""The gRPC servicer: relays every Ollama endpoint and reports the node's status.

Bodies pass through as bytes in both directions. Streamed answers are relayed
one record per gRPC message as soon as Ollama writes it. When the caller
cancels or its deadline passes, gRPC runs the callback registered with
``context.add_callback``, which closes the HTTP connection to Ollama at once.

Errors (one mapping, :func:`olol.agent.ollama.grpc_code_for_status`): Ollama's
message is the status details word for word; the HTTP status goes into the
trailing metadata ``x-ollama-status`` (502 when Ollama is unreachable). An
``{"error": ...}`` record after a stream started ends the call with INTERNAL
and trailing metadata ``x-ollama-stream-error: 1``.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import grpc

from olol import __version__
from olol.agent.aggregate import AggregateError, Aggregator
from olol.agent.forward import forward
from olol.agent.hardware import HardwareProbe
from olol.agent.mux import (
    AGGREGATE_METADATA,
    JOIN_S,
    STATUS_METADATA,
    STREAM_ERROR_METADATA,
    WINDOW_BYTES,
    MuxSession,
    MuxStart,
)
from olol.agent.ollama import (
    TRUNCATED_MESSAGE,
    OllamaCall,
    OllamaClient,
    OllamaHTTPError,
    OllamaUnavailable,
    grpc_code_for_status,
    sort_records,
)
from olol.rpc import node_pb2, node_pb2_grpc
from olol.rpc.mux import SESSION_METADATA

_LOG = logging.getLogger(__name__)

#: A ``MuxListen`` session's name: at most this many characters.
MAX_SESSION_CHARS = 64
#: ``MuxListen`` sessions open at once.
MAX_SESSIONS = 256
UNREACHABLE_STATUS = 502
_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_SUCCESS = b'{"status":"success"}'


class InFlight:
    """Requests in flight per model (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def enter(self, model: str) -> None:
        with self._lock:
            self._counts[model] = self._counts.get(model, 0) + 1

    def leave(self, model: str) -> None:
        with self._lock:
            left = self._counts.get(model, 0) - 1
            if left > 0:
                self._counts[model] = left
            else:
                self._counts.pop(model, None)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, status: int,
           stream_error: bool = False) -> None:
    metadata = [(STATUS_METADATA, str(status))]
    if stream_error:
        metadata.append((STREAM_ERROR_METADATA, "1"))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(code, message)


def _abort_http(context: grpc.ServicerContext, exc: OllamaHTTPError) -> None:
    _abort(context, grpc_code_for_status(exc.status), exc.message, exc.status)


def _abort_unavailable(context: grpc.ServicerContext, exc: OllamaUnavailable) -> None:
    _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), UNREACHABLE_STATUS)


def _aggregate_interval(context: grpc.ServicerContext) -> float | None:
    """The progress interval the caller asked for with ``x-olol-aggregate``, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == AGGREGATE_METADATA:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return min(3600.0, max(0.01, seconds)) if seconds == seconds else None
    return None


def _pick(cls: Any, data: Any) -> dict[str, Any]:
    """Keep the scalar/list keys of ``data`` that ``cls`` declares, dropping nulls."""
    if not isinstance(data, dict):
        return {}
    fields = cls.DESCRIPTOR.fields_by_name
    out = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None or field.message_type is not None:
            continue
        if field.type == field.TYPE_STRING and not isinstance(value, str):
            continue
        if field.type in (field.TYPE_UINT64, field.TYPE_UINT32) and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            continue
        out[key] = value
    return out


def _models_from(cls: Any, payload: Any) -> list[Any]:
    models = payload.get("models") if isinstance(payload, dict) else None
    out = []
    for item in models or []:
        if not isinstance(item, dict):
            continue
        fields = _pick(cls, item)
        details = _pick(node_pb2.ModelDetails, item.get("details"))
        families = (item.get("details") or {}).get("families") if isinstance(
            item.get("details"), dict) else None
        if isinstance(families, list):
            details["families"] = [f for f in families if isinstance(f, str)]
        out.append(cls(details=node_pb2.ModelDetails(**details), **fields))
    return out


class NodeAgentServicer(node_pb2_grpc.NodeAgentServicer):
    """Relays calls to one Ollama and answers ``GetCompleteNodeStatus``.

    :param ollama: the HTTP client of the local Ollama.
    :param hardware: the host probe (CPU, memory, disk, GPUs).
    :param parallel: configured parallel slots, reported to the coordinator.
    :param status_pool: a small executor used to query Ollama concurrently for the status.
    :param status_timeout: seconds each Ollama query of the status may take.
    :param clock: wall clock (``time.time``); ``monotonic`` measures uptime.
    :param mux_pool: runs the calls opened on ``Mux`` sessions (None: ``Mux`` is
        answered UNIMPLEMENTED and coordinators use Generate and Chat).
    :param mux_calls: calls open at once on one ``Mux`` session.
    :param mux_window: bytes of one multiplexed call's records sent and not yet
        acknowledged before its relay stops reading Ollama.
    """

    def __init__(
        self,
        ollama: OllamaClient,
        hardware: HardwareProbe,
        *,
        parallel: int,
        status_pool: ThreadPoolExecutor,
        status_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        mux_pool: Executor | None = None,
        mux_calls: int = 64,
        mux_window: int = WINDOW_BYTES,
    ) -> None:
        self._ollama = ollama
        self._mux_pool = mux_pool
        self._mux_calls = mux_calls
        self._mux_window = mux_window
        self._mux_sessions: weakref.WeakSet[MuxSession] = weakref.WeakSet()
        self._mux_lock = threading.Condition(threading.Lock())
        self._mux_named: dict[str, MuxSession] = {}  # MuxListen sessions, for MuxSend
        self._mux_draining = False
        self._hardware = hardware
        self._parallel = parallel
        self._status_pool = status_pool
        self._status_timeout = status_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._hostname = socket.gethostname()
        self.in_flight = InFlight()

    # -- relay helpers ------------------------------------------------------

    def _open(self, context: grpc.ServicerContext, method: str, path: str,
              body: Any, headers: dict[str, str] | None = None) -> OllamaCall | None:
        """Send one request with cancellation wired; aborts the RPC on any error."""
        call = self._ollama.call(method, path, body, headers=headers)
        if not context.add_callback(call.abort):
            return None  # the RPC is already over
        try:
            call.send()
            call.raise_for_status()
        except OllamaHTTPError as exc:
            _abort_http(context, exc)
        except OllamaUnavailable as exc:
            _abort_unavailable(context, exc)
        return call

    def _stream(self, context: grpc.ServicerContext, path: str, request: Any,
                track: bool = False) -> Iterator[node_pb2.OllamaChunk]:
        """Relay a streamed answer. ``track``: an inference call (generate, chat),
        counted in flight, whose stream must end with a final record."""
        call = self._open_counted(context, path, request, track)
        if call is not None:
            yield from self._relay_call(context, call, path, request.model, track)

    def _open_counted(self, context: Any, path: str, request: Any,
                      track: bool) -> OllamaCall | None:
        """:meth:`_open` a POST; ``track``: count it in flight (uncounted again when
        opening fails)."""
        if track:
            self.in_flight.enter(request.model)
        try:
            call = self._open(context, "POST", path, request.body or None)
        except BaseException:
            if track:
                self.in_flight.leave(request.model)
            raise
        if call is None and track:
            self.in_flight.leave(request.model)
        return call

    def _relay_call(self, context: Any, call: OllamaCall, path: str, model: str,
                    track: bool) -> Iterator[node_pb2.OllamaChunk]:
        """The chunks of an open call's answer; then the call is closed and, with
        ``track``, no longer counted in flight."""
        try:
            yield from self._records(context, call, path, track)
        finally:
            call.close(reusable=False)
            if track:
                self.in_flight.leave(model)

    def _records(self, context: Any, call: OllamaCall, path: str,
                 track: bool) -> Iterator[node_pb2.OllamaChunk]:
        """The chunks of an open call's answer (see :meth:`_stream`)."""
        interval = _aggregate_interval(context) if track else None
        try:
            if interval is not None:
                yield from self._aggregated(context, call, path == "/api/chat", interval)
                return
            finished = False
            for batch in call.arrived():
                good, done, error = sort_records(batch)
                if error is not None:
                    if good:
                        yield node_pb2.OllamaChunk(body=b"\n".join(good), done=False)
                    call.close(reusable=False)
                    _abort(context, grpc.StatusCode.INTERNAL, error, 500, stream_error=True)
                finished = finished or done
                yield node_pb2.OllamaChunk(body=b"\n".join(good), done=done)
            if track and not finished and context.is_active():
                # A clean end with no final record (or no record at all) is a cut
                # stream all the same: the answer is incomplete.
                _abort_unavailable(context, OllamaUnavailable(TRUNCATED_MESSAGE))
        except OllamaUnavailable as exc:
            if context.is_active():
                _abort_unavailable(context, exc)

    def _mux_start(self, context: Any, path: str, request: Any) -> MuxStart:
        """Open one multiplexed Generate or Chat call. A chunked stream (Ollama's
        streamed answer) is handed to the session, which reads it with the others;
        anything else (a non-streamed answer, one the agent builds) is relayed by
        the worker as :meth:`_stream` relays it."""
        call = self._open_counted(context, path, request, True)
        if call is None:
            return MuxStart(chunks=iter(()))
        resp = call._response
        if (_aggregate_interval(context) is None and resp is not None and resp.chunked
                and resp.fp is not None):
            return MuxStart(call=call, release=functools.partial(self.in_flight.leave,
                                                                 request.model))
        return MuxStart(chunks=self._relay_call(context, call, path, request.model, True))

    def _aggregated(self, context: grpc.ServicerContext, call: OllamaCall, chat: bool,
                    interval: float) -> Iterator[node_pb2.OllamaChunk]:
        """Build the non-streamed answer from Ollama's stream (the request body asks
        Ollama to stream). While records arrive, an empty message goes out whenever
        ``interval`` seconds passed since the last message: the coordinator's proof
        that Ollama is working. The last message is the answer (``done``)."""
        agg = Aggregator(chat)
        last_sent = self._monotonic()
        for batch in call.arrived():
            for line in batch:
                try:
                    done, error = agg.add(line)
                except AggregateError as exc:
                    call.close(reusable=False)
                    _abort_unavailable(context, OllamaUnavailable(str(exc)))
                if error is not None:
                    call.close(reusable=False)
                    # nothing reached the caller: an error like any before the answer
                    _abort(context, grpc.StatusCode.INTERNAL, error, 500)
            if agg.complete:
                continue  # read the body to its end: the connection can be reused
            now = self._monotonic()
            if now - last_sent >= interval:
                last_sent = now
                yield node_pb2.OllamaChunk(body=b"", done=False)
        if not agg.complete:
            if context.is_active():
                _abort_unavailable(context, OllamaUnavailable(TRUNCATED_MESSAGE))
            return
        yield node_pb2.OllamaChunk(body=agg.result_bytes(), done=True)

    def _unary(self, context: grpc.ServicerContext, method: str, path: str, request: Any,
               track: bool = False) -> node_pb2.OllamaResponse:
        model = request.model
        if track:
            self.in_flight.enter(model)
        try:
            call = self._open(context, method, path, request.body or None)
            if call is None:
                return node_pb2.OllamaResponse()
            try:
                body = call.read_body()
            except OllamaUnavailable as exc:
                _abort_unavailable(context, exc)
            return node_pb2.OllamaResponse(body=body, http_status=call.status)
        finally:
            if track:
                self.in_flight.leave(model)

    # -- relayed endpoints --------------------------------------------------

    def Generate(self, request, context):
        return self._stream(context, "/api/generate", request, track=True)

    def Chat(self, request, context):
        return self._stream(context, "/api/chat", request, track=True)

    # Pull, Push, Create, Copy and Delete are deprecated (see the proto): the coordinator
    # sends model commands through RemoteModelCommand; these serve older coordinators.

    def Pull(self, request, context):
        return self._stream(context, "/api/pull", request)

    def Push(self, request, context):
        return self._stream(context, "/api/push", request)

    def Create(self, request, context):
        return self._stream(context, "/api/create", request)

    def Embed(self, request, context):
        return self._unary(context, "POST", "/api/embed", request, track=True)

    def Embeddings(self, request, context):
        return self._unary(context, "POST", "/api/embeddings", request, track=True)

    def Tags(self, request, context):
        return self._unary(context, "GET", "/api/tags", request)

    def Show(self, request, context):
        return self._unary(context, "POST", "/api/show", request)

    def Ps(self, request, context):
        return self._unary(context, "GET", "/api/ps", request)

    def Version(self, request, context):
        return self._unary(context, "GET", "/api/version", request)

    def Copy(self, request, context):
        return self._unary(context, "POST", "/api/copy", request)

    def Delete(self, request, context):
        return self._unary(context, "DELETE", "/api/delete", request)

    def BlobExists(self, request, context):
        digest = request.digest
        if not _DIGEST_RE.match(digest):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f'invalid digest "{digest}"', 400)
        call = self._ollama.call("HEAD", f"/api/blobs/{digest}")
        context.add_callback(call.abort)
        try:
            status = call.send()
            if status == 404:
                call.read_body()
                return node_pb2.BlobStatus(exists=False, http_status=404)
            call.raise_for_status()
            call.read_body()
        except OllamaHTTPError as exc:
            _abort_http(context, exc)
        except OllamaUnavailable as exc:
            _abort_unavailable(context, exc)
        return node_pb2.BlobStatus(exists=True, http_status=status)

    def UploadBlob(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not _DIGEST_RE.match(first.digest):
            digest = first.digest if first is not None else ""
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f'invalid digest "{digest}"', 400)
        assert first is not None  # _abort ended the call otherwise

        def chunks() -> Iterator[bytes]:
            if first.data:
                yield first.data
            for message in request_iterator:
                if message.data:
                    yield message.data

        headers = {"Content-Length": str(first.size)} if first.size else None
        call = self._open(context, "POST", f"/api/blobs/{first.digest}", chunks(), headers)
        if call is None:
            return node_pb2.BlobStatus()
        try:
            call.read_body()
        except OllamaUnavailable as exc:
            _abort_unavailable(context, exc)
        return node_pb2.BlobStatus(exists=True, http_status=call.status)

    def RemoteModelCommand(self, request, context):
        """The coordinator's one path for model commands: pull, push and create relay
        Ollama's progress stream; delete and copy answer one success record."""
        action = request.action.lower()
        relay = node_pb2.OllamaRequest(body=request.body)
        if action in ("pull", "push", "create"):
            yield from self._stream(context, f"/api/{action}", relay)
            return
        if action in ("delete", "copy"):
            method = "DELETE" if action == "delete" else "POST"
            self._unary(context, method, f"/api/{action}", relay)
            yield node_pb2.OllamaChunk(body=_SUCCESS, done=True)
            return
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
               f"unknown model command {request.action!r} (pull, push, delete, copy, create)", 400)

    def Forward(self, request, context):
        """A GET or POST olol has no typed call for, relayed as bytes
        (:mod:`olol.agent.forward` says what is refused)."""
        return forward(self._ollama, self.in_flight, request, context)

    def Mux(self, request_iterator, context):
        """Generate and Chat multiplexed on one call (:mod:`olol.agent.mux`)."""
        pool = self._mux_pool
        if pool is None:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "Mux is not served by this agent", 501)
            return None
        session = self._new_session(context, pool, None)
        return session.serve(context, request_iterator)

    def _new_session(self, context: Any, pool: Executor, name: str | None) -> MuxSession:
        """A session, counted among those served; ``name``: a ``MuxListen`` session,
        found by its ``MuxSend`` under that name."""
        session = MuxSession(self._mux_start, pool, self._mux_calls, self._mux_window)
        with self._mux_lock:
            if self._mux_draining:
                _abort(context, grpc.StatusCode.UNAVAILABLE, "the agent is stopping", 503)
            if name is not None:
                if name in self._mux_named:
                    _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                           "this session is open already", 409)
                if len(self._mux_named) >= MAX_SESSIONS:
                    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "too many multiplexed sessions", 503)
                self._mux_named[name] = session
                self._mux_lock.notify_all()
            self._mux_sessions.add(session)
        return session

    def MuxListen(self, request, context):
        """The agent's messages of a session whose coordinator's messages come on a
        ``MuxSend`` call naming it (:mod:`olol.agent.mux`)."""
        pool = self._mux_pool
        if pool is None:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "Mux is not served by this agent", 501)
            return None
        return self._listen(request.session, pool, context)

    def _listen(self, name: str, pool: Executor, context: Any) -> Iterator[Any]:
        # a generator from the start: a call gRPC never iterates registers nothing
        if not name or len(name) > MAX_SESSION_CHARS:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"a session name of 1 to {MAX_SESSION_CHARS} characters is required", 400)
        session = self._new_session(context, pool, name)
        try:
            yield from session.serve(context)
        finally:
            with self._mux_lock:
                if self._mux_named.get(name) is session:
                    del self._mux_named[name]

    def MuxSend(self, request_iterator, context):
        """The coordinator's messages of the session its ``x-olol-mux-session``
        metadata names (opened by ``MuxListen``, which may arrive just after)."""
        if self._mux_pool is None:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "Mux is not served by this agent", 501)
        name = dict(context.invocation_metadata() or ()).get(SESSION_METADATA, "")
        deadline = time.monotonic() + JOIN_S
        with self._mux_lock:
            while (session := self._mux_named.get(name)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not context.is_active():
                    break
                self._mux_lock.wait(min(left, 1.0))
        if session is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, "no such multiplexed session", 404)
        elif not session.join(request_iterator):
            _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                   "this session is joined already, or over", 409)
        return node_pb2.MuxSent()

    def mux_sessions(self) -> list[MuxSession]:
        """The ``Mux`` sessions being served."""
        with self._mux_lock:
            return list(self._mux_sessions)

    def drain_mux(self) -> None:
        """The agent is stopping: sessions take no new calls and end once their
        open calls are over."""
        with self._mux_lock:
            self._mux_draining = True
            sessions = list(self._mux_sessions)
        for session in sessions:
            session.drain()

    # -- status -------------------------------------------------------------

    def _query(self, path: str) -> Future:
        return self._status_pool.submit(
            self._ollama.request_json, "GET", path, self._status_timeout
        )

    def collect_status(self) -> node_pb2.NodeStatus:
        """Build the complete node status (Ollama is queried concurrently)."""
        futures = {name: self._query(f"/api/{name}") for name in ("version", "tags", "ps")}
        hw = self._hardware
        gpu = hw.gpu()
        status = node_pb2.NodeStatus(
            hostname=self._hostname,
            timestamp=self._clock(),
            cpu=node_pb2.CpuStatus(**hw.cpu()),
            memory=node_pb2.MemoryStatus(**hw.memory()),
            gpu=node_pb2.GpuReport(
                gpus=[node_pb2.GpuStatus(**g) for g in gpu.gpus],
                driver_version=gpu.driver_version,
                cuda_version=gpu.cuda_version,
                unavailable_reason=gpu.unavailable_reason,
            ),
            disk=node_pb2.DiskStatus(**hw.disk()),
        )
        in_flight = self.in_flight.snapshot()
        status.agent.CopyFrom(node_pb2.AgentStatus(
            version=__version__,
            uptime_seconds=self._monotonic() - self._started,
            parallel=self._parallel,
            in_flight=in_flight,
            in_flight_total=sum(in_flight.values()),
            ollama_url=self._ollama.base_url,
        ))
        ollama = status.ollama
        errors = []
        results: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=self._status_timeout + 1.0)
            except (OllamaHTTPError, OllamaUnavailable, TimeoutError) as exc:
                errors.append(f"/api/{name}: {exc or type(exc).__name__}")
        ollama.reachable = "version" in results
        version = results.get("version")
        if isinstance(version, dict) and isinstance(version.get("version"), str):
            ollama.version = version["version"]
        ollama.models.extend(_models_from(node_pb2.LocalModel, results.get("tags")))
        ollama.loaded.extend(_models_from(node_pb2.LoadedModel, results.get("ps")))
        ollama.error = "; ".join(errors)
        return status

    def GetCompleteNodeStatus(self, request, context):
        return self.collect_status()

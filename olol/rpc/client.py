"""The coordinator's client of one node agent.

One :class:`NodeClient` per node keeps one channel (thread-safe, reused by
every dispatcher thread). Request bodies are dicts (encoded once) or raw JSON
bytes (passed through untouched). Streamed calls return a :class:`NodeStream`:
iterate it for dict records (or bytes with ``raw=True``); ``cancel()`` or
``close()`` cancels the RPC, which makes the agent close its Ollama request.

Every failure is a :class:`NodeError` carrying the gRPC code, Ollama's message
word for word, and the HTTP status the proxy should answer. This module is the
one place a ``grpc.StatusCode`` becomes an HTTP status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental
import orjson
from google.protobuf.json_format import MessageToDict

import olol.rpc.node_pb2 as node_pb2
import olol.rpc.node_pb2_grpc as node_pb2_grpc
from olol.rpc.mux import MuxChannel, MuxStream

STATUS_METADATA = "x-ollama-status"
STREAM_ERROR_METADATA = "x-ollama-stream-error"
AGGREGATE_METADATA = "x-olol-aggregate"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
BLOB_CHUNK_BYTES = 1024 * 1024

_HTTP_FOR_CODE = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}


_MUX_PATHS = {"Generate": "/api/generate", "Chat": "/api/chat"}


class NodeError(Exception):
    """A failed node call.

    :ivar code: the ``grpc.StatusCode``.
    :ivar message: Ollama's message word for word (or the transport's).
    :ivar http_status: the status the proxy should answer with.
    :ivar mid_stream: True when Ollama reported the error after the stream started.
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, http_status: int, mid_stream: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.mid_stream = mid_stream

    @property
    def retryable(self) -> bool:
        """True when another node may succeed (the node, not the request, failed)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def __repr__(self) -> str:
        return f"NodeError({self.code.name}, {self.message!r}, http_status={self.http_status})"


def node_error(exc: grpc.RpcError) -> NodeError:
    """Translate a gRPC error into a :class:`NodeError`."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = (exc.details() if hasattr(exc, "details") else None) or str(code.name)
    trailing = {}
    try:
        trailing = dict(exc.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - some errors carry no call object
        trailing = {}
    status = trailing.get(STATUS_METADATA)
    if status is not None and str(status).isdigit():
        http = int(status)
    else:
        http = _HTTP_FOR_CODE.get(code, 500)
    return NodeError(code, message, http, mid_stream=trailing.get(STREAM_ERROR_METADATA) == "1")


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS: the CA that signed the agent, and optionally a client certificate.

    Each value is PEM bytes or a path. ``server_name`` overrides the name checked
    against the agent's certificate.
    """

    root_cert: bytes | str | Path | None = None
    client_cert: bytes | str | Path | None = None
    client_key: bytes | str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_cert),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _encode(body: dict | bytes | None) -> tuple[bytes, str]:
    if body is None:
        return b"", ""
    if isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
        model = ""
        if raw:
            try:
                data = orjson.loads(raw)
                if isinstance(data, dict) and isinstance(data.get("model"), str):
                    model = data["model"]
            except orjson.JSONDecodeError:
                pass  # the agent relays it; Ollama answers 400 in its own words
        return raw, model
    model = body.get("model") or body.get("name") or ""
    try:
        raw = orjson.dumps(body)
    except TypeError:
        raw = json.dumps(body).encode()  # e.g. ints beyond 64 bits
    return raw, model if isinstance(model, str) else ""


def _decode(body: bytes) -> dict:
    if not body:
        return {}
    return orjson.loads(body)


class NodeStream:
    """Iterator over a streamed node call; ``cancel()``/``close()`` cancel the RPC.

    Yields dicts, or the raw NDJSON record bytes when built with ``raw=True``.
    Raises :class:`NodeError` from ``next()`` when the call fails.

    An empty message that does not end the call is the agent saying that Ollama
    is making progress on an answer it builds itself (``aggregate``, see
    :meth:`NodeClient.chat`): it is counted in :attr:`received` and skipped.

    :ivar received: messages received so far, progress messages included (a
        watchdog reads it from another thread to see that the call is alive).
    """

    def __init__(self, call: Any, raw: bool = False) -> None:
        self._call = call
        self._raw = raw
        self._pending: list[bytes] = []
        self._last_done = False
        self.done = False
        self.received = 0

    def __iter__(self) -> NodeStream:
        return self

    def next_message(self) -> tuple[bytes, bool]:
        """The next gRPC message as it came: ``(records, done)``, where ``records`` is
        one or more NDJSON records joined by ``\n`` (no trailing newline) and
        ``done`` says the last of them is the final record. No record is decoded.

        :raises StopIteration: the call ended normally.
        :raises NodeError: the call failed.
        """
        if self._pending:
            raise RuntimeError("next_message() after a partial read of a message")
        chunk = self._receive()
        self.done = chunk.done
        return chunk.body, chunk.done

    def _receive(self) -> Any:
        try:
            while True:
                chunk = next(self._call)
                self.received += 1
                if chunk.body or chunk.done:
                    return chunk
        except grpc.RpcError as exc:
            raise node_error(exc) from None

    def __next__(self) -> Any:
        if not self._pending:
            chunk = self._receive()
            # one message may carry several records (those that arrived together)
            self._pending = chunk.body.split(b"\n")[::-1]
            self._last_done = chunk.done
        record = self._pending.pop()
        if not self._pending and self._last_done:
            self.done = True
        return record if self._raw else orjson.loads(record)

    def drain(self, most: int = 4) -> None:
        """After the final record, read the call's end (its status). A call dropped
        before its end is cancelled, which makes the agent close its connection to
        Ollama instead of reusing it. Reads at most ``most`` further messages
        (there should be none), then cancels."""
        self._pending = []
        try:
            for _ in range(most):
                next(self._call)
        except StopIteration:
            return
        except grpc.RpcError:
            return
        self._call.cancel()

    def cancel(self) -> None:
        """Cancel the RPC; the agent closes its Ollama request at once."""
        self._call.cancel()

    close = cancel

    def __enter__(self) -> NodeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ForwardStream:
    """The answer of a ``Forward`` call: :meth:`head` reads its first message
    (``(status, content_type, first bytes)``), :meth:`pieces` the rest of the body
    as it arrives. ``cancel()`` stops the call. Failures raise :class:`NodeError`.

    :ivar received: messages received so far (a watchdog reads it).
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self.received = 0

    def _next(self) -> Any:
        try:
            message = next(self._call)
        except grpc.RpcError as exc:
            raise node_error(exc) from None
        self.received += 1
        return message

    def head(self) -> tuple[int, str, bytes]:
        """Ollama's status, Content-Type and the first bytes of its answer.

        :raises NodeError: the call failed, or ended without an answer (502).
        """
        try:
            first = self._next()
        except StopIteration:
            raise NodeError(grpc.StatusCode.UNAVAILABLE,
                            "the node ended the call without an answer", 502) from None
        return int(first.http_status) or 200, first.content_type, first.body

    def pieces(self) -> Iterator[bytes]:
        """The rest of the answer's bytes, each piece as soon as it arrives."""
        while True:
            try:
                message = self._next()
            except StopIteration:
                return
            if message.body:
                yield message.body

    def cancel(self) -> None:
        self._call.cancel()

    close = cancel


class StatusFuture:
    """A status poll in flight (see :meth:`NodeClient.status_future`)."""

    def __init__(self, future: Any) -> None:
        self._future = future
        self.started_at = time.monotonic()
        #: ``time.monotonic()`` when the answer (or the failure) arrived
        self.finished_at: float | None = None
        future.add_done_callback(self._finished)

    def _finished(self, _future: Any) -> None:
        self.finished_at = time.monotonic()

    @property
    def latency_ms(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return (end - self.started_at) * 1000.0

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> dict:
        """The status dict; raises :class:`NodeError` (the call failed or its deadline
        passed) or ``TimeoutError`` (still running after ``timeout`` seconds)."""
        try:
            reply = self._future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError("status poll still running") from None
        except grpc.RpcError as exc:
            raise node_error(exc) from None
        return status_to_dict(reply)

    def cancel(self) -> None:
        self._future.cancel()


class NodeClient:
    """Client of one node agent.

    :param address: ``host:port`` of the agent.
    :param token: bearer token sent on every call (the admin token works for all calls).
    :param tls: a :class:`TLSConfig`; None means a plaintext channel.
    :param timeout: default deadline in seconds for unary calls; streamed calls have
        none unless given (a generation may legitimately run for minutes).
    :param mux: send Generate and Chat calls that overlap on one multiplexed call
        (:mod:`olol.rpc.mux`); a call with no other in flight goes on its own, and an
        agent that does not serve ``Mux`` gets plain calls.
    :param mux_lone: a lone call goes on the multiplexed call too.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float = 30.0,
        options: Iterable[tuple[str, Any]] = (),
        mux: bool = True,
        mux_lone: bool = False,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.enable_retries", 1),
            # A streamed call is read by the thread that consumes it (no channel
            # spin thread and no hand-off between threads for every message).
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ("grpc.service_config", json.dumps({
                "methodConfig": [{
                    "name": [{"service": "olol.node.v1.NodeAgent", "method": m}
                             for m in ("Tags", "Ps", "Version", "Show", "BlobExists",
                                       "GetCompleteNodeStatus")],
                    "retryPolicy": {
                        "maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }]
            })),
        ]
        if tls is not None and tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        opts.extend(options)
        if tls is not None:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=opts)
        else:
            self._channel = grpc.insecure_channel(address, options=opts)
        self._stub = node_pb2_grpc.NodeAgentStub(self._channel)
        self._count_lock = threading.Lock()
        self._plain_open = 0  # plain Generate/Chat calls not over yet
        self._mux_lone = mux_lone
        self._mux = MuxChannel(self._stub, self._metadata, address,
                               lambda code: _HTTP_FOR_CODE.get(code, 500), node_error,
                               NodeError) if mux else None

    # -- plumbing -------------------------------------------------------------

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise node_error(exc) from None

    def _relay(self, name: str, body: dict | bytes | None, timeout: float | None) -> dict:
        raw, model = _encode(body)
        reply = self._unary(
            getattr(self._stub, name), node_pb2.OllamaRequest(model=model, body=raw), timeout
        )
        return _decode(reply.body)

    def _stream(self, name: str, body: dict | bytes | None, timeout: float | None,
                raw: bool, aggregate: float | None = None) -> NodeStream | MuxStream:
        if aggregate is not None and isinstance(body, dict):
            body = {**body, "stream": True}
        data, model = _encode(body)
        mux = self._mux
        if (mux is not None and mux.supported and name in _MUX_PATHS
                and (self._mux_lone or self._plain_open or mux.open_count())):
            # calls that overlap share the multiplexed call (fewest messages); a
            # lone call goes on its own (fewest thread hand-offs)
            return mux.open(_MUX_PATHS[name], model, data, raw=raw, timeout=timeout,
                            aggregate=aggregate,
                            reopen=lambda: self._plain(name, data, model, timeout, raw, aggregate))
        return self._plain(name, data, model, timeout, raw, aggregate)

    def _plain(self, name: str, data: bytes, model: str, timeout: float | None, raw: bool,
               aggregate: float | None) -> NodeStream:
        metadata = self._metadata
        if aggregate is not None:
            metadata = (*(metadata or ()), (AGGREGATE_METADATA, f"{max(0.01, aggregate):g}"))
        call = getattr(self._stub, name)(
            node_pb2.OllamaRequest(model=model, body=data), timeout=timeout,
            metadata=metadata,
        )
        if name in _MUX_PATHS:
            with self._count_lock:
                self._plain_open += 1
            call.add_done_callback(self._plain_over)
        return NodeStream(call, raw=raw)

    def mux_stats(self) -> tuple[int, int, int]:
        """``(messages, parts with records, calls open)`` of the multiplexed call so
        far; ``(0, 0, 0)`` without one. Records per message show how much the node's
        records are batched."""
        mux = self._mux
        if mux is None:
            return 0, 0, 0
        return mux.messages, mux.records, mux.open_count()

    def _plain_over(self, _call: Any) -> None:
        with self._count_lock:
            self._plain_open -= 1

    # -- relayed Ollama endpoints -------------------------------------------

    def generate(self, body: dict | bytes, timeout: float | None = None,
                 raw: bool = False, aggregate: float | None = None) -> NodeStream | MuxStream:
        """``/api/generate``: the records Ollama writes (one when ``stream`` is false).

        ``aggregate`` (seconds; ``body`` a dict): for a caller that wants one
        object, ask Ollama for a stream and have the agent build the object, sending
        an empty progress message at most every ``aggregate`` seconds while Ollama
        produces records. The call then yields exactly one record, like
        ``stream: false``, and :attr:`NodeStream.received` shows progress.
        """
        return self._stream("Generate", body, timeout, raw, aggregate)

    def chat(self, body: dict | bytes, timeout: float | None = None,
             raw: bool = False, aggregate: float | None = None) -> NodeStream | MuxStream:
        """``/api/chat``: the records Ollama writes (one when ``stream`` is false);
        ``aggregate`` as for :meth:`generate`."""
        return self._stream("Chat", body, timeout, raw, aggregate)

    # Model commands: one path, the agent's ``RemoteModelCommand`` (see model_command).

    def pull(self, body: dict | bytes, timeout: float | None = None,
             raw: bool = False) -> NodeStream:
        """``/api/pull`` with streamed progress, through ``RemoteModelCommand``."""
        return self.model_command("pull", body, timeout, raw)

    def push(self, body: dict | bytes, timeout: float | None = None,
             raw: bool = False) -> NodeStream:
        """``/api/push`` with streamed progress, through ``RemoteModelCommand``."""
        return self.model_command("push", body, timeout, raw)

    def create(self, body: dict | bytes, timeout: float | None = None,
               raw: bool = False) -> NodeStream:
        """``/api/create`` with streamed progress, through ``RemoteModelCommand``."""
        return self.model_command("create", body, timeout, raw)

    def embed(self, body: dict | bytes, timeout: float | None = None) -> dict:
        return self._relay("Embed", body, timeout)

    def embeddings(self, body: dict | bytes, timeout: float | None = None) -> dict:
        return self._relay("Embeddings", body, timeout)

    def tags(self, timeout: float | None = None) -> dict:
        return self._relay("Tags", None, timeout)

    def show(self, body: dict | bytes, timeout: float | None = None) -> dict:
        return self._relay("Show", body, timeout)

    def ps(self, timeout: float | None = None) -> dict:
        return self._relay("Ps", None, timeout)

    def ps_future(self, timeout: float | None = None) -> Any:
        """Start ``/api/ps`` without waiting; ``.result()`` gives the dict or raises
        :class:`NodeError`. Lets a caller ask many nodes at once without threads."""
        future = self._stub.Ps.future(
            node_pb2.OllamaRequest(), timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )

        class _Result:
            @staticmethod
            def result() -> dict:
                try:
                    return _decode(future.result().body)
                except grpc.RpcError as exc:
                    raise node_error(exc) from None

        return _Result()

    def version(self, timeout: float | None = None) -> dict:
        return self._relay("Version", None, timeout)

    def copy(self, body: dict | bytes, timeout: float | None = None) -> dict:
        """``/api/copy`` through ``RemoteModelCommand``; Ollama answers 200 with an
        empty body, returned as ``{}``."""
        return self._command_result("copy", body, timeout)

    def delete(self, body: dict | bytes, timeout: float | None = None) -> dict:
        """``/api/delete`` through ``RemoteModelCommand``; Ollama answers 200 with an
        empty body, returned as ``{}``."""
        return self._command_result("delete", body, timeout)

    def _command_result(self, action: str, body: dict | bytes, timeout: float | None) -> dict:
        stream = self.model_command(action, body, self.timeout if timeout is None else timeout)
        try:
            for _ in stream:
                pass  # one {"status": "success"} record; a failure raises NodeError
        finally:
            stream.cancel()
        return {}

    def blob_exists(self, digest: str, timeout: float | None = None) -> bool:
        reply = self._unary(self._stub.BlobExists, node_pb2.BlobRef(digest=digest), timeout)
        return reply.exists

    def upload_blob(self, digest: str, data: Iterable[bytes] | bytes, size: int = 0,
                    timeout: float | None = None) -> int:
        """Upload a blob; returns Ollama's HTTP status (201 created, 200 already there).

        ``size`` (total bytes), when known, lets the agent send a Content-Length.
        """
        if isinstance(data, bytes):
            size = size or len(data)
            data = [data[i:i + BLOB_CHUNK_BYTES] for i in range(0, len(data), BLOB_CHUNK_BYTES)]

        def messages() -> Iterator[node_pb2.BlobChunk]:
            yield node_pb2.BlobChunk(digest=digest, size=size)
            for piece in data:
                for i in range(0, len(piece), BLOB_CHUNK_BYTES):
                    yield node_pb2.BlobChunk(data=piece[i:i + BLOB_CHUNK_BYTES])

        try:
            reply = self._stub.UploadBlob(messages(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise node_error(exc) from None
        return reply.http_status

    # -- node-level calls -----------------------------------------------------

    def status(self, timeout: float | None = None) -> dict:
        """``GetCompleteNodeStatus`` as a plain dict (proto field names, ints as ints)."""
        reply = self._unary(
            self._stub.GetCompleteNodeStatus, node_pb2.NodeStatusRequest(), timeout
        )
        return status_to_dict(reply)

    def status_future(self, timeout: float | None = None) -> StatusFuture:
        """Start ``GetCompleteNodeStatus`` without waiting (no thread): a health sweep
        asks every node at once; ``.result()`` gives :meth:`status`'s dict or raises
        :class:`NodeError` (the deadline is ``timeout``)."""
        future = self._stub.GetCompleteNodeStatus.future(
            node_pb2.NodeStatusRequest(), timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        return StatusFuture(future)

    def model_command(self, action: str, body: dict | bytes, timeout: float | None = None,
                      raw: bool = False) -> NodeStream:
        """``RemoteModelCommand``: pull, push, delete, copy or create with streamed
        progress. The coordinator's one path for model commands: :meth:`pull`,
        :meth:`push`, :meth:`create`, :meth:`copy` and :meth:`delete` use it (the agent
        still serves the older per-action calls, for older coordinators).

        Pull, push and create stream Ollama's records; delete and copy answer one
        ``{"status": "success"}`` record. A failure raises :class:`NodeError` from the
        stream, with Ollama's message and HTTP status."""
        data, _ = _encode(body)
        call = self._stub.RemoteModelCommand(
            node_pb2.ModelCommandRequest(action=action, body=data), timeout=timeout,
            metadata=self._metadata,
        )
        return NodeStream(call, raw=raw)

    def forward(self, method: str, path: str, body: bytes = b"", *, content_type: str = "",
                model: str = "", timeout: float | None = None) -> ForwardStream:
        """``Forward``: relay a call olol has no typed RPC for (GET or POST under
        ``/api/`` or ``/v1/``) and stream Ollama's answer back as bytes."""
        call = self._stub.Forward(
            node_pb2.ForwardRequest(method=method, path=path, content_type=content_type,
                                    body=body, model=model),
            timeout=timeout, metadata=self._metadata,
        )
        return ForwardStream(call)

    def close(self) -> None:
        if self._mux is not None:
            self._mux.close()
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_INT64_TYPES = frozenset({3, 4, 6, 16, 18})  # int64, uint64, fixed64, sfixed64, sint64


def status_to_dict(message: Any) -> dict:
    """MessageToDict with proto field names, every field present, and 64-bit ints as ints.

    (The proto3 JSON mapping renders 64-bit integers as strings; the coordinator
    wants numbers.) Optional fields that are unset stay absent.
    """
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _fix_ints(message.DESCRIPTOR, data)
    return data


def _fix_ints(descriptor: Any, data: dict) -> None:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                _fix_ints(field.message_type, item)
        elif field.type in _INT64_TYPES:
            if isinstance(value, list):
                data[field.name] = [int(v) for v in value]
            else:
                data[field.name] = int(value)

"""Submitting a validated request to the queue and waiting for its answer.

Flow for a synchronous request: check that some node has the model, open the hub
channel *before* enqueueing (so no event can be missed), enqueue (durable), then read
events from the channel: nothing polls the store. When the caller goes away (the
response iterable is closed early, or waitress reports the client disconnected while
we wait) the channel is closed and the request cancelled in the queue.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import g, has_request_context, request

from olol.api import errors
from olol.api.errors import ApiError
from olol.api.validation import ValidatedRequest
from olol.context import Services
from olol.hub import CHUNK, DONE, ERROR, RELAY, Event, HubFullError
from olol.ids import new_id
from olol.queue import QueueFullError
from olol.rpc.client import NodeError
from olol.server.common import (
    AFTER_RESPONSE,
    POSITION_HEADER,
    REQUEST_ID_HEADER,
    current_key,
    prompt_preview,
    request_priority,
    request_session,
)
from olol.server.door import DIRECT_WRITE

log = logging.getLogger(__name__)

#: How often a waiting handler checks whether its client is still connected.
DISCONNECT_CHECK_S = 1.0


def check_admitting(ctx: Services) -> None:
    """503 (Ollama's busy message) while the proxy shuts down."""
    if ctx.draining.is_set():
        raise errors.server_busy(5)


def check_model_known(ctx: Services, validated: ValidatedRequest) -> None:
    """404 in the endpoint's wording when no node lists the model; 503 with
    ``Retry-After`` (the health interval) when only nodes that are down list it."""
    if ctx.cluster.has_model(validated.normalized_model):
        return
    if ctx.cluster.model_unreachable(validated.normalized_model):
        retry = max(1, math.ceil(float(ctx.config.health_interval_s)))
        raise errors.model_unreachable(validated.model, retry)
    raise errors.model_not_found(validated.endpoint, validated.model)


def build_record(
    request_id: str,
    validated: ValidatedRequest,
    body: dict[str, Any],
    *,
    kind: str,
    api: str,
    stream: bool,
    priority: int,
    session: str | None,
    key_id: str | None,
) -> dict[str, Any]:
    """The ``inference_queue`` record the front door hands to ``QueueManager.enqueue``."""
    return {
        "id": request_id,
        "kind": kind,
        "endpoint": validated.endpoint,
        "api": api,
        "model": validated.model,
        "model_key": validated.normalized_model,
        "body": body,
        "stream": bool(stream),
        "prompt": prompt_preview(validated.endpoint, body),
        "priority": int(priority),
        "session": session,
        "key_id": key_id,
        "coalesce_key": validated.coalesce_key,
        "batch_key": validated.batch_key,
        "body_bytes": int(g.get("olol_body_bytes", 0)) if has_request_context() else 0,
    }


def enqueue(ctx: Services, record: dict[str, Any], *, wake: bool = True) -> int:
    """``queue.enqueue`` with ``QueueFullError`` turned into Ollama's 503."""
    try:
        _, position = ctx.queue.enqueue(record, wake=wake)
    except QueueFullError as exc:
        if ctx.stats is not None:
            ctx.stats.rejected(record)  # counted as a "rejected" error (olol.stats)
        if ctx.traffic is not None:
            ctx.traffic.rejected()
        retry = getattr(exc, "retry_after_s", None)
        raise errors.server_busy(retry if retry is not None else 1) from None
    if ctx.traffic is not None:
        ctx.traffic.admitted()
    return int(position)


@dataclass
class Submission:
    """A queued synchronous request and the channel its answer arrives on."""

    ctx: Services
    request_id: str
    position: int
    channel: Any
    validated: ValidatedRequest
    disconnected: Callable[[], bool]
    _finished: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {REQUEST_ID_HEADER: self.request_id, POSITION_HEADER: str(self.position)}

    def _next(self, timeout: float) -> Event:
        """The next event within ``timeout`` seconds, checking the client meanwhile.

        :raises TimeoutError: nothing arrived.
        :raises ConnectionAbortedError: the client went away.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer for request {self.request_id}")
            try:
                return next(self.channel.events(idle_timeout=min(DISCONNECT_CHECK_S, remaining)))
            except TimeoutError:
                if self.disconnected():
                    raise ConnectionAbortedError(self.request_id) from None

    def first_event(self) -> Event:
        """The first event: may wait for the whole queueing time."""
        return self._next(float(self.ctx.config.request_timeout_s))

    def poll(self) -> Event | None:
        """An event that has already arrived, or None."""
        return self.channel.poll()

    def next_event(self) -> Event:
        """A later event of a stream: bounded by the stream idle timeout."""
        return self._next(float(self.ctx.config.stream_idle_timeout_s))

    def finish(self, *, cancel: bool) -> None:
        """Drop the channel; cancel the queued request when the answer was not delivered."""
        if self._finished:
            return
        self._finished = True
        self.ctx.hub.close(self.request_id)
        if cancel:
            try:
                self.ctx.queue.cancel(self.request_id)
            except Exception:  # noqa: BLE001 - cleanup must not mask the real outcome
                log.exception("cancelling request %s failed", self.request_id)

    def wait_final(self) -> dict[str, Any]:
        """Wait for the whole answer of a non-streamed request.

        Chunks (if the dispatcher sent any) are folded into the final record.

        :raises ApiError: the error event's status and message; 504 on timeout; 499
            when the client went away.
        """
        folder = ChunkFolder(self.validated.endpoint)
        delivered = False
        try:
            event = self.first_event()
            while True:
                if event.kind == RELAY:
                    delivered = True
                    return fold_relay(event.data, folder)
                if event.kind == ERROR:
                    delivered = True
                    raise error_from_event(event.data)
                if event.kind == DONE:
                    delivered = True
                    return folder.final(event.data)
                folder.add(event.data)
                event = self.next_event()
        except TimeoutError:
            raise ApiError(504, "timed out waiting for the answer") from None
        except ConnectionAbortedError:
            raise errors.request_canceled() from None
        finally:
            self.finish(cancel=not delivered)


def submit(
    ctx: Services,
    validated: ValidatedRequest,
    body: dict[str, Any],
    *,
    api: str,
    stream: bool,
) -> Submission:
    """Check the model, open the channel, enqueue a synchronous request."""
    check_admitting(ctx)
    check_model_known(ctx, validated)
    priority = request_priority()
    session = request_session()
    key = current_key()
    request_id = new_id()
    # the record first: whatever fails while it is built leaves no channel behind
    record = build_record(
        request_id, validated, body, kind="sync", api=api, stream=stream,
        priority=priority, session=session, key_id=key.id if key else None,
    )
    try:
        channel = ctx.hub.open(request_id)
    except HubFullError:
        raise errors.server_busy(1) from None
    dispatcher = ctx.dispatcher
    try:
        position = enqueue(ctx, record, wake=dispatcher is None)
    except BaseException:
        ctx.hub.close(request_id)
        raise
    probe = request.environ.get("waitress.client_disconnected")
    if dispatcher is not None:
        # First in the queue and placeable now: this thread runs it (no hand-off to
        # a dispatcher thread and back); otherwise a dispatcher thread is woken.
        ran = False
        try:
            deferred = request.environ.get(AFTER_RESPONSE)
            ran = dispatcher.run_inline(
                request_id, probe if callable(probe) else _never,
                after=deferred.append if isinstance(deferred, list) else None,
            )
        except BaseException:  # nothing may keep the channel or the request open
            ctx.hub.close(request_id)
            try:
                ctx.queue.cancel(request_id)
            except Exception:  # noqa: BLE001 - the original error matters more
                log.exception("cancelling request %s failed", request_id)
            raise
        finally:
            if not ran:
                ctx.queue.notify(everyone=False)
    return Submission(
        ctx=ctx,
        request_id=request_id,
        position=position,
        channel=channel,
        validated=validated,
        disconnected=probe if callable(probe) else (lambda: False),
    )


def _never() -> bool:
    return False


def error_from_event(data: Any) -> ApiError:
    """An ``error`` event's ``{"status", "error"}`` as an ApiError."""
    if not isinstance(data, dict):
        return ApiError(500, str(data))
    status = data.get("status")
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    return ApiError(status, str(data.get("error") or "internal error"))


def with_model(record: Any, model: str) -> Any:
    """A copy of ``record`` whose ``model`` is the caller's own string (coalesced answers
    serve callers who spelled the model differently)."""
    if isinstance(record, dict) and "model" in record:
        return {**record, "model": model}
    return record


def fold_relay(relay: Any, folder: ChunkFolder) -> Any:
    """Read a relayed stream to its end and fold it into one answer."""
    final: Any = None
    try:
        for body, done in relay.messages():
            for event in records_of(body, done):
                if event.kind == DONE:
                    final = event.data
                else:
                    folder.add(event.data)
    except NodeError as exc:
        raise ApiError(exc.http_status, exc.message) from None
    except BaseException:
        relay.abandon("the request failed while reading its answer")
        raise
    return folder.final(final if final is not None else {})


def records_of(body: bytes, done: bool) -> Iterator[Event]:
    """The records of one relayed message as events (the last is ``done`` when the
    message ended the stream)."""
    lines = [line for line in body.split(b"\n") if line]
    last = len(lines) - 1
    for i, line in enumerate(lines):
        yield Event(DONE if done and i == last else CHUNK, orjson.loads(line))


class ChunkFolder:
    """Folds streamed native records into one non-streamed answer."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._any = False

    def add(self, record: Any) -> None:
        if not isinstance(record, dict):
            return
        self._any = True
        if self.endpoint == "chat":
            message = record.get("message") or {}
            self._text.append(message.get("content") or "")
            self._thinking.append(message.get("thinking") or "")
            self._tool_calls.extend(message.get("tool_calls") or [])
        else:
            self._text.append(record.get("response") or "")
            self._thinking.append(record.get("thinking") or "")

    def final(self, record: Any) -> Any:
        if not self._any or not isinstance(record, dict):
            return record
        out = dict(record)
        if self.endpoint == "chat":
            message = dict(out.get("message") or {"role": "assistant"})
            message["content"] = "".join(self._text) + (message.get("content") or "")
            thinking = "".join(self._thinking) + (message.get("thinking") or "")
            if thinking:
                message["thinking"] = thinking
            calls = self._tool_calls + list(message.get("tool_calls") or [])
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        elif self.endpoint == "generate":
            out["response"] = "".join(self._text) + (out.get("response") or "")
            thinking = "".join(self._thinking) + (out.get("thinking") or "")
            if thinking:
                out["thinking"] = thinking
        return out


class EventStream:
    """A response body fed by a submission's events.

    ``render(event)`` turns a chunk/done record into bytes; ``render_error(message,
    status)`` renders an error after the stream started; ``tail`` is written after a
    successful done (e.g. nothing for NDJSON; the SSE renderer adds ``[DONE]`` itself).
    ``close()`` (called by the WSGI server, also when the client disconnected) releases
    the channel and cancels the request if it did not complete.

    When the first event is a relay, this thread reads the node stream itself;
    ``render_raw(records, done)``, when given, turns one node message (NDJSON records
    joined by ``\n``) into bytes without decoding what needs no change; otherwise
    each record is decoded and passed to ``render``.
    """

    def __init__(
        self,
        submission: Submission,
        first: Event,
        render: Callable[[Event], bytes],
        render_error: Callable[[str, int], bytes],
        render_raw: Callable[[bytes, bool], bytes] | None = None,
    ) -> None:
        self.submission = submission
        self.first = first
        self.render = render
        self.render_error = render_error
        self.render_raw = render_raw
        self._completed = False
        self._relay: Any = first.data if first.kind == RELAY else None
        self._direct_write: Callable[[bytes], bool] | None = (
            request.environ.get(DIRECT_WRITE) if has_request_context() else None)

    def __iter__(self) -> Iterator[bytes]:
        if self._relay is not None:
            return self._run_relay()
        return self._run()

    def _run_relay(self) -> Iterator[bytes]:
        relay = self._relay
        render_raw = self.render_raw
        write = self._direct_write if render_raw is not None else None
        try:
            for body, done in relay.messages():
                if render_raw is not None:
                    data = render_raw(body, done)
                else:
                    data = b"".join(self.render(event) for event in records_of(body, done))
                if done:
                    self._completed = True
                if data:
                    yield data
                if write is not None and not done:
                    # the headers and a first piece are out: the node's next records
                    # go to the client from the thread that receives them
                    assert render_raw is not None
                    relay.push(write, render_raw)
                    write = None
        except NodeError as exc:
            self._completed = True
            yield self.render_error(exc.message, exc.http_status)

    def _run(self) -> Iterator[bytes]:
        # Each write goes out at once; records that have already arrived while the
        # previous write was going out are joined into one write (no waiting).
        event = self.first
        while True:
            parts: list[bytes] = []
            while True:
                if event.kind == ERROR:
                    self._completed = True
                    err = error_from_event(event.data)
                    parts.append(self.render_error(err.message, err.status))
                    yield b"".join(parts)
                    return
                data = self.render(event)
                if data:
                    parts.append(data)
                if event.kind == DONE:
                    self._completed = True
                    yield b"".join(parts)
                    return
                ready = self.submission.poll()
                if ready is None:
                    break
                event = ready
            if parts:
                yield b"".join(parts)
            try:
                event = self.submission.next_event()
            except (TimeoutError, ConnectionAbortedError):
                yield self.render_error("timed out waiting for the next record", 504)
                return

    def close(self) -> None:
        if self._relay is not None and not self._completed:
            self._relay.abandon("the client went away")
        self.submission.finish(cancel=not self._completed)


def first_event_or_error(submission: Submission) -> Event:
    """The first event of a stream; an error (or timeout) before anything was streamed
    becomes the HTTP status."""
    try:
        event = submission.first_event()
    except TimeoutError:
        submission.finish(cancel=True)
        raise ApiError(504, "timed out waiting for the answer") from None
    except ConnectionAbortedError:
        submission.finish(cancel=True)
        raise errors.request_canceled() from None
    except BaseException:
        submission.finish(cancel=True)
        raise
    if event.kind == ERROR:
        submission.finish(cancel=False)
        raise error_from_event(event.data)
    if event.kind not in (CHUNK, DONE, RELAY):
        submission.finish(cancel=True)
        raise ApiError(500, "internal error")
    return event

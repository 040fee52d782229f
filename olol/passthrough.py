"""Pass-through: requests on routes olol does not know, run by the dispatcher.

The front door (:mod:`olol.server.passthrough`) queues an unknown ``POST`` under
``/api/`` or ``/v1/`` whose JSON body names a ``model`` as a queue record of endpoint
``passthrough``; its body says what to relay (``method``, ``path``, ``content_type``,
``raw``: the request body as the client sent it). The scheduler places it like any
request for that model (a node that has it, loaded first; one slot; no batching, no
coalescing). :meth:`PassthroughRuns._run_passthrough` (the dispatcher's run of such
a batch) opens the node's ``Forward`` call, waits for the answer's head (status,
Content-Type, first bytes), so that a node that fails before answering is retried on
another as usual, then hands the rest to the caller's HTTP thread as a
:class:`ForwardRelay`, the way streamed chats are relayed (:mod:`olol.relay`): the
relay owns the slot and settles the request exactly once.

What such routes do not get: coalescing and batching, carry-over of a broken stream
to another node (:mod:`olol.resume`), model-name rewriting in the answer, token
counts in the statistics, retries after the answer started, and any check of the
body beyond "JSON object naming a model" (the node's Ollama answers bad input in its
own words). The node's status code and Content-Type are kept, whatever they are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from olol.metrics import request_usage
from olol.node_faults import missed
from olol.relay import Relay
from olol.rpc.client import NodeError
from olol.scheduler import Assignment

if TYPE_CHECKING:
    from olol.interfaces import DispatchQueue
    from olol.node_faults import CallWatch

log = logging.getLogger(__name__)

#: The queue record's ``endpoint`` (and ``api``) for a pass-through request.
PASSTHROUGH = "passthrough"
STALLED = "the node sent nothing for too long"


class ForwardRelay(Relay):
    """The rest of one node's answer to a pass-through request, read by the HTTP thread.

    A :class:`~olol.relay.Relay` like the streamed chats': the dispatcher's watchdog
    ends a stalled answer and a cancel stops it.

    :param settle: called once with ``("completed" | "failed" | "cancelled", info)``.
    """

    def __init__(self, request_id: str, stream: Any, status: int, content_type: str,
                 first: bytes, *, settle: Callable[[str, Any], None],
                 on_piece: Callable[[], None], monotonic: Callable[[], float],
                 idle_s: float | None = None) -> None:
        super().__init__(request_id, stream, settle=settle, monotonic=monotonic,
                         idle_s=idle_s)
        self.status = status
        self.content_type = content_type
        self._first: bytes | None = first
        self._on_piece = on_piece

    def chunks(self) -> Iterator[bytes]:
        """The answer's bytes as they arrive; settles the relay at the end.

        :raises NodeError: the node failed (or stalled) after the answer started.
        """
        if self._first is None:
            raise RuntimeError("a relay can be read only once")
        first, self._first = self._first, b""
        if first:
            yield first
        try:
            for piece in self._stream.pieces():
                self.last_record = self._monotonic()
                self._on_piece()
                yield piece
        except NodeError as exc:
            if self._stalled:
                exc = NodeError(exc.code, STALLED, 504, mid_stream=True)
            exc.mid_stream = True
            if self._claim():
                self._settle_cb("failed", exc)
            raise exc from None
        if self._claim():
            self._settle_cb("completed", None)


class PassthroughRuns:
    """The dispatcher's runs of pass-through batches: mixed into
    :class:`olol.dispatcher.Dispatcher`, kept here beside the relay they hand out. The
    annotations below are the dispatcher's parts these runs use."""

    queue: DispatchQueue
    request_timeout_s: float
    stream_idle_timeout_s: float
    monotonic: Callable[[], float]
    _calls: CallWatch
    _running: dict[str, Any]
    _batch_of: dict[str, tuple[str, list[str]]]
    _running_lock: threading.Lock

    if TYPE_CHECKING:
        def _first_record_s(self, a: Assignment) -> float: ...
        def _lease_keeper(self, request_id: str) -> Callable[[], None]: ...
        def _hand_over(self, request_id: str, relay: Relay) -> bool: ...
        def _forget(self, a: Assignment) -> None: ...
        def _succeeded(self, a: Assignment, final: Any = None) -> None: ...
        def _end_unsuccessful(self, request_id: str, status: str, **fields: Any) -> None: ...
        def _release(self, assignment: Assignment) -> None: ...

    def _run_passthrough(self, client: Any, a: Assignment) -> bool:
        """Run a pass-through batch (one request); True: the answer was handed to the
        caller's thread (which releases the slot).

        :raises NodeError: the node failed before the answer's head (the dispatcher
            retries or fails the request as for any call).
        """
        req = a.requests[0]
        rid = req["id"]
        body = req["body"]
        raw = body.get("raw") or ""
        stream = client.forward(
            str(body.get("method") or "POST"), str(body.get("path") or ""),
            raw.encode() if isinstance(raw, str) else b"",
            content_type=str(body.get("content_type") or ""), model=req.get("model") or "",
            timeout=self.request_timeout_s)
        with self._running_lock:
            self._running[a.batch_id] = stream
            self._batch_of[rid] = (a.batch_id, [rid])
        self._calls.watch(a.batch_id, stream, self._first_record_s(a), 0.0)
        try:
            try:
                status, content_type, first = stream.head()
            except NodeError as exc:
                exc = missed(self._calls, a.batch_id, exc)
                exc.mid_stream = False
                raise exc from None
        except BaseException:
            self._calls.unwatch(a.batch_id)
            self._forget(a)
            raise
        self._calls.unwatch(a.batch_id)

        def settle(outcome: str, info: Any) -> None:
            self._settle_passthrough(a, outcome, info, status)

        relay = ForwardRelay(rid, stream, status, content_type, first, settle=settle,
                             on_piece=self._lease_keeper(rid), monotonic=self.monotonic,
                             idle_s=self.stream_idle_timeout_s)
        return self._hand_over(rid, relay)

    def _settle_passthrough(self, a: Assignment, outcome: str, info: Any,
                            status: int) -> None:
        """The end of a relayed pass-through answer: record it, release the slot (once)."""
        req = a.requests[0]
        try:
            self._forget(a)
            if outcome == "completed":
                if status >= 400:  # the node's own refusal, relayed as it is
                    self._end_unsuccessful(req["id"], "failed",
                                           error=f"the node answered {status}",
                                           error_status=status)
                else:
                    self.queue.update_request_status(req["id"], "completed",
                                                     usage=request_usage(None, cold=a.cold))
                    self._succeeded(a)
            elif outcome == "failed":
                exc: NodeError = info
                self._end_unsuccessful(req["id"], "failed", error=exc.message,
                                       error_status=exc.http_status)
            else:
                self._end_unsuccessful(req["id"], "cancelled", error=str(info))
        except Exception:
            log.exception("settling pass-through request %s failed", req["id"])
        finally:
            self._release(a)

"""What the dispatcher knows about failing node calls.

* :func:`failure_kind` sorts a :class:`~olol.rpc.client.NodeError` into the
  request's fault (answered as is), a busy node (retried later) or a fault on
  the node's side (retried elsewhere before any output, counted for outlier
  detection);
* :class:`CallWatch` holds the deadlines of the node calls in flight (the first
  record, then the silence between records) for the dispatcher's watchdog thread,
  which cancels a call that misses one; the reading thread then raises
  :class:`NodeTimeout` instead of the cancellation;
* :class:`Attempts` remembers, per request, the node-side failures it met before
  it succeeded or failed for good: two alike failures on two nodes mean the
  request is the cause;
* :class:`LoadTimes` learns how long a model takes to load (Ollama's
  ``load_duration``), which lengthens the first-record deadline of a call placed
  where the model is cold.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from olol.rpc.client import NodeError

REQUEST = "request"
BUSY = "busy"
NODE = "node"

_REQUEST_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


class NodeTimeout(NodeError):
    """The node missed a deadline: no first record (``phase`` ``first``) or no next
    record (``stall``) in time. The watchdog cancelled the call."""

    def __init__(self, phase: str, seconds: float, mid_stream: bool = False) -> None:
        if phase == "first":
            message = f"the node sent no first record within {seconds:g} s"
        else:
            message = f"the node sent nothing for {seconds:g} s"
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, message, 504, mid_stream=mid_stream)
        self.phase = phase


def failure_kind(exc: NodeError) -> str:
    """``request`` (the request was refused: answer it as is), ``busy`` (the node's
    queue is full: try again later) or ``node`` (the node failed: a 5xx, a cut
    stream, a missed deadline, a transport error)."""
    code = exc.code
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return BUSY
    if code in _REQUEST_CODES:
        return REQUEST
    if code == grpc.StatusCode.INTERNAL and 400 <= exc.http_status < 500:
        return REQUEST  # Ollama refused it with a 4xx the agent has no code for
    return NODE


def transport_fault(exc: NodeError) -> bool:
    """The call itself broke (no answer, a cut stream, a missed deadline): the whole
    node is suspect, not only the model."""
    return exc.code is None or exc.code in _TRANSPORT_CODES


def conclusive(exc: NodeError) -> bool:
    """Whether two alike failures of one request on two nodes prove the request is
    the cause: a 5xx answer, or a missed deadline (a prompt too long for every
    node). A broken call is retried all the same (bounded): nodes do die."""
    return isinstance(exc, NodeTimeout) or not transport_fault(exc)


def signature(exc: NodeError) -> str:
    """What makes two failures "alike" (the same request failing the same way)."""
    if isinstance(exc, NodeTimeout):
        return f"timeout:{exc.phase}"
    code = exc.code.name if exc.code is not None else "CLOSED"
    return f"{code}:{exc.http_status}:{exc.message}"


# ---------------------------------------------------------------------- deadlines
@dataclass
class _Watched:
    stream: Any
    first_s: float  # allowed silence before the first message
    stall_s: float  # allowed silence between messages
    since: float  # when ``seen`` last changed (or the call started)
    seen: int = 0
    delivered: bool = False  # output reached a client: a miss ends the stream
    fired: NodeTimeout | None = None


class CallWatch:
    """Deadlines of the node calls in flight, keyed by batch id.

    The reading thread registers a call (:meth:`watch`) and removes it when done
    (:meth:`unwatch`); the watchdog thread calls :meth:`sweep`, which cancels a
    call that missed its deadline. Progress is read from the stream's ``received``
    counter, so the reading thread pays nothing per record.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._calls: dict[str, _Watched] = {}

    def watch(self, key: str, stream: Any, first_s: float, stall_s: float) -> None:
        with self._lock:
            self._calls[key] = _Watched(stream, first_s, stall_s, self._monotonic())

    def delivered(self, key: str, idle_s: float) -> None:
        """Output reached a client: from now on allow ``idle_s`` between records."""
        with self._lock:
            w = self._calls.get(key)
            if w is not None:
                w.delivered, w.stall_s = True, idle_s

    def unwatch(self, key: str) -> NodeTimeout | None:
        """Stop watching; returns the deadline the call missed, if the watchdog
        cancelled it."""
        with self._lock:
            w = self._calls.pop(key, None)
        return w.fired if w is not None else None

    def sweep(self) -> int:
        """Cancel every call past its deadline; returns how many."""
        now = self._monotonic()
        late = []
        with self._lock:
            for w in self._calls.values():
                if w.fired is not None:
                    continue
                received = getattr(w.stream, "received", 0)
                if received != w.seen:
                    w.seen, w.since = received, now
                    continue
                first = received == 0
                limit = w.first_s if first else w.stall_s
                if limit > 0 and now - w.since > limit:
                    w.fired = NodeTimeout("first" if first else "stall", limit, w.delivered)
                    late.append(w.stream)
        for stream in late:
            try:
                stream.cancel()
            except Exception:  # noqa: BLE001 - the call may be over already
                pass
        return len(late)

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)


def missed(watch: CallWatch, key: str, exc: NodeError) -> NodeError:
    """Stop watching ``key``; the deadline error when the watchdog cancelled the
    call (the cancellation ``exc`` is then its symptom), else ``exc``."""
    fired = watch.unwatch(key)
    return fired if fired is not None else exc


# ---------------------------------------------------------------------- attempts
@dataclass
class Attempt:
    node: str
    signature: str
    ticket: Any  # olol.outliers.Ticket


@dataclass
class _History:
    attempts: list[Attempt] = field(default_factory=list)


class Attempts:
    """Node-side failures per request id, until the request's fate is known.

    Bounded: the oldest entries go first when ``limit`` is passed (a request
    cancelled while waiting for its retry never reports back).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._by_request: OrderedDict[str, _History] = OrderedDict()
        self._limit = limit

    def record(self, request_id: str, attempt: Attempt) -> list[Attempt]:
        """Note a failure; returns the earlier failures of the request on *other*
        nodes that look the same (non-empty: the request is the cause)."""
        with self._lock:
            history = self._by_request.get(request_id)
            if history is None:
                history = self._by_request[request_id] = _History()
                while len(self._by_request) > self._limit:
                    self._by_request.popitem(last=False)
            alike = [a for a in history.attempts
                     if a.node != attempt.node and a.signature == attempt.signature]
            history.attempts.append(attempt)
            return alike

    def nodes(self, request_id: str) -> set[str]:
        with self._lock:
            history = self._by_request.get(request_id)
            return {a.node for a in history.attempts} if history else set()

    def pop(self, request_id: str) -> list[Attempt]:
        """The request is over: its failures (possibly none)."""
        with self._lock:
            history = self._by_request.pop(request_id, None)
        return history.attempts if history else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_request)


# ---------------------------------------------------------------------- load times
class LoadTimes:
    """How long loading a model takes, learned from Ollama's ``load_duration``.

    :param cold_start_s: the allowance for a cold model before anything was
        learned, and the least one ever gets.
    """

    def __init__(self, cold_start_s: float) -> None:
        self.cold_start_s = float(cold_start_s)
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    def note(self, model_key: str, record: Any) -> None:
        """A final record of a call placed cold: learn from its ``load_duration``."""
        if not isinstance(record, dict):
            return
        ns = record.get("load_duration")
        if isinstance(ns, bool) or not isinstance(ns, int | float) or ns <= 0:
            return
        seconds = float(ns) / 1e9
        with self._lock:
            old = self._seconds.get(model_key, 0.0)
            # the longest recent load, forgetting slowly (a slow disk stays known)
            self._seconds[model_key] = max(seconds, old * 0.9)

    def allowance(self, model_key: str) -> float:
        """Extra seconds for the first record when the model is cold on the node."""
        with self._lock:
            learned = self._seconds.get(model_key, 0.0)
        return max(self.cold_start_s, 2.0 * learned)

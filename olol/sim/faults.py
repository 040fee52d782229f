"""Fault injection: failures, cut or stalled streams and hangs, armed by tests.

Two kinds of knobs:

* counted ones (``fail_next``, ``drop_next_stream``, ``stall_next_stream``,
  ``hang_next``): each matching request consumes one unit;
* sticky ones (``fail_all``, ``hang_all``): every matching request is affected
  until :meth:`Faults.clear` (a node that has gone bad and stays bad);
  ``fail_when`` fails every request whose body contains a text (a request that
  makes Ollama fail by itself, on any node).

"Matching" requests are the ones a node does work for: ``POST`` and ``DELETE``
on Ollama's routes (inference, embeddings, model commands). ``GET`` routes
(``/api/tags``, ``/api/ps``, ``/api/version``: what a status poll reads) are
never affected, so a sick node still looks healthy to its health checks.
:meth:`Faults.counts` says how many requests each fault actually hit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CUT_HOWS = ("close", "end", "error")


@dataclass(frozen=True)
class Failure:
    status: int
    error: str


@dataclass
class StreamFault:
    """What happens to one streamed response once ``after`` records were written.

    ``how``: ``close`` cuts the connection (no terminating chunk), ``end`` ends the
    body cleanly with no further record (no final record ever comes), ``error``
    writes ``{"error": error}`` as the next record then ends the body (what Ollama
    does when its runner fails mid-generation), ``stall`` blocks until released.
    """

    after: int
    how: str
    error: str = "simulated failure"
    wait: Callable[[Callable[[], bool] | None], None] | None = field(default=None, repr=False)


class Faults:
    """Pending faults of one simulator.

    :param stop: the simulator's stop event (ends hangs and stalls).
    :param hang_limit: the longest a counted hang (``hang_next``) or a stall blocks,
        in seconds. Sticky hangs (``hang_all``) block until released, cleared, the
        simulator stops or the client goes away.
    """

    def __init__(self, stop: threading.Event, hang_limit: float = 60.0):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = stop
        self.hang_limit = hang_limit
        self._generation = 0  # bumped by release(): every waiter then continues
        self._fail_n = 0
        self._fail = Failure(500, "simulated failure")
        self._fail_always: Failure | None = None
        self._fail_when: list[tuple[bytes, Failure]] = []
        self._drop_n = 0
        self._drop_after = 1
        self._drop_how = "close"
        self._drop_error = "simulated failure"
        self._stall_n = 0
        self._stall_after = 1
        self._hang_n = 0
        self._hang_always = False
        self._hanging = 0
        self._counts = {"fail": 0, "drop": 0, "stall": 0, "hang": 0}

    # -- arming -------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, error: str = "simulated failure") -> None:
        """The next ``n`` matching requests answer ``status`` with ``{"error": error}``."""
        failure = _failure(status, error)
        with self._lock:
            self._fail_n = max(0, int(n))
            self._fail = failure

    def fail_all(self, status: int = 500, error: str = "simulated failure") -> None:
        """Every matching request answers ``status`` with ``{"error": error}`` until
        :meth:`clear` (a node whose Ollama fails all inference while its status works)."""
        failure = _failure(status, error)
        with self._lock:
            self._fail_always = failure

    def fail_when(self, text: str, status: int = 500, error: str = "simulated failure") -> None:
        """Every matching request whose body contains ``text`` answers ``status`` with
        ``{"error": error}`` until :meth:`clear`."""
        failure = _failure(status, error)
        with self._lock:
            self._fail_when.append((str(text).encode(), failure))

    def drop_next_stream(self, n: int = 1, after_chunks: int = 1, how: str = "close",
                         error: str = "simulated failure") -> None:
        """The next ``n`` streamed responses are cut after that many records
        (``after_chunks=0``: right after the 200 headers, before the first record).

        ``how`` is ``close`` (the connection is cut), ``end`` (the body ends cleanly
        without a final record) or ``error`` (an ``{"error": error}`` record, then the
        end of the body), see :class:`StreamFault`.
        """
        if how not in CUT_HOWS:
            raise ValueError(f"how must be one of {', '.join(CUT_HOWS)}")
        with self._lock:
            self._drop_n = max(0, int(n))
            self._drop_after = max(0, int(after_chunks))
            self._drop_how = how
            self._drop_error = str(error)

    def stall_next_stream(self, n: int = 1, after_chunks: int = 1) -> None:
        """The next ``n`` streamed responses stop after that many records and write
        nothing more until :meth:`release` (or ``hang_limit``, or stop)."""
        with self._lock:
            self._stall_n = max(0, int(n))
            self._stall_after = max(0, int(after_chunks))

    def hang_next(self, n: int = 1) -> None:
        """The next ``n`` matching requests block before any answer until
        :meth:`release`, stop, or ``hang_limit``."""
        with self._lock:
            self._hang_n = max(0, int(n))

    def hang_all(self) -> None:
        """Every matching request blocks before any answer (the node accepted it and
        never answers) until :meth:`release` or :meth:`clear`, the simulator stops, or
        its client goes away."""
        with self._lock:
            self._hang_always = True

    def release(self) -> None:
        """Let every hung or stalled request continue (sticky faults stay armed)."""
        with self._lock:
            self._hang_n = 0
            self._generation += 1
            self._changed.notify_all()

    def clear(self) -> None:
        """Disarm every fault and release hung and stalled requests."""
        with self._lock:
            self._fail_n = self._drop_n = self._stall_n = 0
            self._fail_always = None
            self._fail_when = []
            self._hang_always = False
        self.release()

    def hanging(self) -> int:
        """Requests blocked right now by a hang or a stall."""
        with self._lock:
            return self._hanging

    def counts(self) -> dict[str, int]:
        """How many requests each kind of fault hit since the simulator started."""
        with self._lock:
            return dict(self._counts)

    # -- consumed by the request handlers ---------------------------------------------

    def take_failure(self, body: bytes = b"") -> Failure | None:
        """The failure this request answers with, if one is armed (``body``: the
        request's body, for :meth:`fail_when`)."""
        with self._lock:
            for text, failure in self._fail_when:
                if text in body:
                    self._counts["fail"] += 1
                    return failure
            if self._fail_always is not None:
                self._counts["fail"] += 1
                return self._fail_always
            if self._fail_n <= 0:
                return None
            self._fail_n -= 1
            self._counts["fail"] += 1
            return self._fail

    def take_drop(self) -> int | None:
        """Records after which to cut this stream (connection closed), or None.
        Kept for callers that only know about cuts; see :meth:`take_stream_fault`."""
        fault = self.take_stream_fault()
        return None if fault is None else fault.after

    def take_stream_fault(self) -> StreamFault | None:
        """The fault this streamed response carries, if one is armed (cuts first)."""
        with self._lock:
            if self._drop_n > 0:
                self._drop_n -= 1
                self._counts["drop"] += 1
                return StreamFault(self._drop_after, self._drop_how, self._drop_error)
            if self._stall_n > 0:
                self._stall_n -= 1
                self._counts["stall"] += 1
                return StreamFault(self._stall_after, "stall", wait=self._block_stalled)
            return None

    def maybe_hang(self, gone: Callable[[], bool] | None = None) -> None:
        """Block here when a hang is armed; ``gone`` says the client went away."""
        with self._lock:
            if self._hang_always:
                limit = None
            elif self._hang_n > 0:
                self._hang_n -= 1
                limit = self.hang_limit
            else:
                return
            self._counts["hang"] += 1
        self._block(limit, gone)

    def _block_stalled(self, gone: Callable[[], bool] | None) -> None:
        self._block(self.hang_limit, gone)

    def _block(self, limit: float | None, gone: Callable[[], bool] | None) -> None:
        """Wait until release(), stop, the client leaves, or ``limit`` seconds."""
        with self._lock:
            generation = self._generation
            self._hanging += 1
        waited = 0.0
        try:
            while limit is None or waited < limit:
                with self._lock:
                    if self._generation != generation:
                        return
                    self._changed.wait(0.05)
                    if self._generation != generation:
                        return
                waited += 0.05
                if self._stop.is_set() or (gone is not None and gone()):
                    return
        finally:
            with self._lock:
                self._hanging -= 1

    def apply(self, body: dict) -> None:
        """Apply a ``POST /_sim/faults`` body; raises ValueError on bad values."""
        def num(key: str, default: int) -> int:
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer")
            return value

        def text(key: str, default: str) -> str:
            value = body.get(key, default)
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            return value

        if body.get("clear"):
            self.clear()
        if body.get("release"):
            self.release()
        if "fail_next" in body:
            self.fail_next(num("fail_next", 0), num("status", 500),
                           text("error", "simulated failure"))
        if body.get("fail_all"):
            self.fail_all(num("status", 500), text("error", "simulated failure"))
        if "fail_when" in body:
            self.fail_when(text("fail_when", ""), num("status", 500),
                           text("error", "simulated failure"))
        if "drop_next_stream" in body:
            self.drop_next_stream(num("drop_next_stream", 0), num("after_chunks", 1),
                                  text("how", "close"), text("error", "simulated failure"))
        if "stall_next_stream" in body:
            self.stall_next_stream(num("stall_next_stream", 0), num("after_chunks", 1))
        if "hang_next" in body:
            self.hang_next(num("hang_next", 0))
        if body.get("hang_all"):
            self.hang_all()


def _failure(status: int, error: str) -> Failure:
    if not 400 <= int(status) <= 599:
        raise ValueError("status must be an HTTP error status (400-599)")
    return Failure(int(status), str(error))

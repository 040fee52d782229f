"""``StreamRelay``: a node stream handed from the dispatcher to the HTTP thread.

A streamed answer for one synchronous caller would otherwise cross three threads
for every record (dispatcher → response channel → HTTP thread). Instead, once
the dispatcher has placed the request and the node's first record has arrived
(so every retry decision is behind it), the dispatcher publishes a relay and
goes back to the queue; the thread that serves the HTTP response reads the
rest of the node stream itself and writes the records out as bytes.

The relay owns what the dispatcher took for the request (the node slot, the
running-call entry, the lease) and settles it exactly once, whatever happens:
the stream ends (``completed``), the node fails mid-stream (``failed``), the
client goes away or nobody ever takes the relay (``cancelled``), the stream
stalls (``failed``, 504) or the proxy shuts down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from olol.resume import STALLED_MESSAGE, Transcript
from olol.rpc.client import NodeError

log = logging.getLogger(__name__)

__all__ = ["STALLED_MESSAGE", "STOPPING_MESSAGE", "Relay", "StreamRelay"]

#: What a caller reads when the proxy's shutdown cut its answer (the grace was over).
STOPPING_MESSAGE = "the proxy is stopping; try again"


class Relay:
    """What every relay shares: it is settled exactly once (``_claim``), the
    dispatcher's watchdog reads ``last_record``/``idle_s`` and may :meth:`stall` it,
    and :meth:`abandon` cancels the node call and settles it as cancelled."""

    def __init__(self, request_id: str, stream: Any, *, settle: Callable[[str, Any], Any],
                 monotonic: Callable[[], float], idle_s: float | None = None) -> None:
        self.request_id = request_id
        self.idle_s = idle_s
        self._stream = stream
        self._settle_cb = settle
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._settled = False
        self._stalled = False
        self._stopping = False
        self.last_record = monotonic()

    @property
    def settled(self) -> bool:
        return self._settled

    def _claim(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    def abandon(self, reason: str) -> None:
        """Nobody will read the rest (the client went away, or never took the relay):
        cancel the node call and release what the request held. Idempotent."""
        if not self._claim():
            return
        self._cancel_call()
        self._settle_cb("cancelled", reason)

    def stall(self) -> None:
        """The watchdog saw no record for too long: end the stream with a 504."""
        self._stalled = True
        self._cancel_call()

    def interrupt(self) -> None:
        """The proxy is stopping and its grace is over: end the stream with a 503
        that says so (:data:`STOPPING_MESSAGE`)."""
        self._stopping = True
        self._cancel_call()

    def _cancel_call(self) -> None:
        try:
            self._stream.cancel()
        except Exception:  # noqa: BLE001 - the call may already be over
            log.debug("cancelling the node call of %s failed", self.request_id, exc_info=True)


class StreamRelay(Relay):
    """The rest of one node stream, read by whoever consumes it.

    :param stream: the :class:`~olol.rpc.client.NodeStream` (raw messages).
    :param first: the first message's records, already read by the dispatcher.
    :param first_done: whether the first message ended the stream.
    :param settle: called once with ``(outcome, info)`` where outcome is
        ``"completed"`` (info: the final record as a dict), ``"failed"`` (info:
        the :class:`NodeError`) or ``"cancelled"`` (info: the reason). For
        ``"failed"`` it may return an iterator of ``(records, done)`` messages:
        the rest of the answer from another node, read in place of the error.
    :param on_record: called with no argument after each message (lease upkeep).
    :param monotonic: clock for the stall watchdog.
    :param transcript: where the messages handed on are kept (what the client
        has, should the stream be carried over); None keeps nothing.
    :param idle_s: the longest silence between messages before the watchdog ends
        the stream (:meth:`stall`), read by the dispatcher's watchdog (None: its
        ``stream_idle_timeout_s``).
    """

    def __init__(
        self,
        request_id: str,
        stream: Any,
        first: bytes,
        first_done: bool,
        *,
        settle: Callable[[str, Any], Any],
        on_record: Callable[[], None],
        monotonic: Callable[[], float],
        transcript: Transcript | None = None,
        idle_s: float | None = None,
    ) -> None:
        super().__init__(request_id, stream, settle=settle, monotonic=monotonic,
                         idle_s=idle_s)
        self._first: tuple[bytes, bool] | None = (first, first_done)
        self._on_record = on_record
        self.transcript = transcript
        if transcript is not None:
            transcript.add(first, self.last_record)

    # ------------------------------------------------------------------ reading
    def messages(self) -> Iterator[tuple[bytes, bool]]:
        """Yield ``(records, done)`` per node message: one or more NDJSON records
        joined by ``\\n``, ``done`` on the last. Settles the relay when the stream
        ends; raises :class:`NodeError` (already settled as failed) when the node
        fails or the stream stalls."""
        if self._first is None:
            raise RuntimeError("a relay can be read only once")
        body, done = self._first
        self._first = None
        while True:
            if done:
                try:
                    yield body, True
                finally:
                    # settled once the client has the final record (or has left):
                    # the bookkeeping is not on the answer's path
                    self._complete(body)
                self._stream.drain()
                return
            yield body, False
            try:
                body, done = self._stream.next_message()
            except StopIteration:
                failure = NodeError(None, "the node closed the stream before it finished",  # type: ignore[arg-type]
                                    502, mid_stream=True)
            except NodeError as exc:
                if self._stalled:
                    exc = NodeError(exc.code, STALLED_MESSAGE, 504, mid_stream=True)
                elif self._stopping:
                    exc = NodeError(exc.code, STOPPING_MESSAGE, 503, mid_stream=True)
                exc.mid_stream = True
                failure = exc
            else:
                self._took(body)
                continue
            rest = self._fail(failure)
            if rest is None:
                raise failure
            yield from rest  # the answer, carried over to another node
            return

    def push(self, write: Callable[[bytes], bool], render: Callable[[bytes, bool], bytes]) -> bool:
        """From now on, let the thread that receives the node's messages write them
        to the client itself (``write(render(records, False))``), doing the upkeep
        :meth:`messages` does, while the reader of :meth:`messages` waits. The final
        message, a failure, or a write that cannot be made at once (``write`` says
        False) go to :meth:`messages` as before. False when the stream cannot push
        (a plain node call): nothing changed."""
        set_sink = getattr(self._stream, "set_sink", None)
        if set_sink is None:
            return False

        def sink(body: bytes) -> bool:
            if self._settled or self._stalled or self._stopping:
                return False
            data = render(body, False)
            if data and not write(data):
                return False
            self._took(body)
            return True

        return bool(set_sink(sink))

    def _took(self, body: bytes) -> None:
        """A message is handed on: its time, the transcript, the caller's upkeep."""
        self.last_record = self._monotonic()
        if self.transcript is not None:
            self.transcript.add(body, self.last_record)
        self._on_record()

    # ------------------------------------------------------------------ settling
    def _complete(self, body: bytes) -> None:
        if not self._claim():
            return
        last = body.rsplit(b"\n", 1)[-1]
        try:
            final = orjson.loads(last)
        except orjson.JSONDecodeError:
            final = {}
        self._settle_cb("completed", final if isinstance(final, dict) else {})

    def _fail(self, exc: NodeError) -> Iterator[tuple[bytes, bool]] | None:
        """Settle as failed; the rest of the answer when the settle callback carried
        the stream over to another node."""
        if not self._claim():
            return None
        return self._settle_cb("failed", exc)

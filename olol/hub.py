"""``ResponseHub``: the in-memory channels between dispatcher and front door.

The front door opens a channel for a request id *before* it enqueues the
request, then reads events as the dispatcher publishes them; nothing polls
the store for chunks. Each channel has a bounded buffer: a dispatcher that
outruns a slow client waits (bounded), and a client that went away closes the
channel, which tells the dispatcher to cancel the node call.

A streamed answer from one node to one caller is not carried record by record:
once its first record has arrived, the dispatcher publishes one ``relay`` event
whose data is the node stream itself (an object with ``abandon()``), and the
thread that serves the HTTP response reads the rest of the stream directly. A
relay that nobody took (the channel closed first) is abandoned when the channel
closes, so its node call and slot are released.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CHUNK, DONE, ERROR, RELAY = "chunk", "done", "error", "relay"


@dataclass(frozen=True)
class Event:
    kind: str  # "chunk" (a record, not the last), "done" (final record), "error", "relay"
    data: Any  # dict record, {"status": int, "error": str, "started": bool}, or a relay


class HubFullError(RuntimeError):
    """Too many open channels."""


class ResponseChannel:
    def __init__(self, request_id: str, buffer: int):
        self.request_id = request_id
        self._q: queue.Queue[Event] = queue.Queue(maxsize=buffer)
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def put(self, event: Event, timeout: float) -> bool:
        """Deliver an event; False when the consumer is gone or stays stalled past timeout."""
        if self._closed.is_set():
            return False
        try:
            self._q.put(event, timeout=timeout)
        except queue.Full:
            return False
        return not self._closed.is_set()

    def events(self, idle_timeout: float) -> Iterator[Event]:
        """Events until done/error. Raises TimeoutError after idle_timeout with nothing."""
        while True:
            try:
                event = self._q.get(timeout=idle_timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"no answer for request {self.request_id} within {idle_timeout:g} s"
                ) from None
            yield event
            if event.kind in (DONE, ERROR, RELAY):
                return

    def poll(self) -> Event | None:
        """The next event if one is already waiting, else None (never blocks)."""
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Mark the channel closed and abandon any relay still waiting in it."""
        self._closed.set()
        while True:
            try:
                event = self._q.get_nowait()
            except queue.Empty:
                return
            if event.kind == RELAY:
                event.data.abandon("the client went away")


class ResponseHub:
    def __init__(self, max_channels: int = 10_000, buffer: int = 256):
        self.max_channels = max_channels
        self.buffer = buffer
        self._channels: dict[str, ResponseChannel] = {}
        self._lock = threading.Lock()

    def open(self, request_id: str) -> ResponseChannel:
        with self._lock:
            if len(self._channels) >= self.max_channels:
                raise HubFullError(f"{self.max_channels} requests are already waiting")
            ch = self._channels.get(request_id)
            if ch is None:
                ch = self._channels[request_id] = ResponseChannel(request_id, self.buffer)
            return ch

    def get(self, request_id: str) -> ResponseChannel | None:
        with self._lock:
            return self._channels.get(request_id)

    def close(self, request_id: str) -> None:
        """The consumer is done (finished or gone); the channel is dropped."""
        with self._lock:
            ch = self._channels.pop(request_id, None)
        if ch is not None:
            ch.close()

    def publish(self, request_id: str, kind: str, data: Any, timeout: float = 30.0) -> bool:
        ch = self.get(request_id)
        if ch is None:
            return False
        return ch.put(Event(kind, data), timeout)

    def listening(self, request_id: str) -> bool:
        ch = self.get(request_id)
        return ch is not None and not ch.closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._channels)

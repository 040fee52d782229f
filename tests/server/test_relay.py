"""StreamRelay, the hub's handling of relays, the dispatcher's stall watchdog, and the
byte-level model respelling: units with fake node streams (no network)."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import orjson
import pytest

from olol.api.streaming import respeller
from olol.dispatcher import Dispatcher
from olol.hub import RELAY, ResponseHub
from olol.relay import STALLED_MESSAGE, StreamRelay
from olol.rpc.client import NodeError
from tests.support import FakeClock, wait_until


class FakeStream:
    """A node stream: plays ``messages`` then ends (or raises ``error``); once the
    script is exhausted with ``block=True`` it waits until cancelled."""

    def __init__(self, messages: list[tuple[bytes, bool]], error: NodeError | None = None,
                 block: bool = False) -> None:
        self._messages = list(messages)
        self._error = error
        self._block = block
        self._cancelled = threading.Event()
        self.cancels = 0
        self.drained = False

    def next_message(self) -> tuple[bytes, bool]:
        if self._messages:
            return self._messages.pop(0)
        if self._block:
            self._cancelled.wait(10)
            raise NodeError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!", 499)
        if self._error is not None:
            raise self._error
        raise StopIteration

    def cancel(self) -> None:
        self.cancels += 1
        self._cancelled.set()

    def drain(self) -> None:
        self.drained = True


def rec(i: int, done: bool = False) -> bytes:
    return orjson.dumps({"model": "m", "response": str(i), "done": done})


def make_relay(stream: FakeStream, first: bytes = b"", first_done: bool = False,
               clock: Any = None) -> tuple[StreamRelay, list]:
    settled: list = []
    relay = StreamRelay("r1", stream, first or rec(0), first_done,
                        settle=lambda outcome, info: settled.append((outcome, info)),
                        on_record=lambda: None, monotonic=clock or (lambda: 0.0))
    return relay, settled


def test_a_stream_read_to_its_end_settles_completed_once_with_the_final_record():
    stream = FakeStream([(rec(1), False), (rec(2) + b"\n" + rec(3, done=True), True)])
    relay, settled = make_relay(stream)
    got = list(relay.messages())
    assert got == [(rec(0), False), (rec(1), False), (rec(2) + b"\n" + rec(3, True), True)]
    assert settled == [("completed", {"model": "m", "response": "3", "done": True})]
    assert stream.drained  # the call's end was read: the agent keeps its connection
    relay.abandon("late")  # after the end: nothing more happens
    assert settled == [("completed", {"model": "m", "response": "3", "done": True})]
    assert stream.cancels == 0


def test_the_final_record_reaches_the_client_before_the_bookkeeping():
    relay, settled = make_relay(FakeStream([(rec(1, done=True), True)]))
    messages = relay.messages()
    assert next(messages) == (rec(0), False)
    assert next(messages) == (rec(1, True), True)
    assert settled == []  # the final record is handed out first...
    assert list(messages) == []
    assert [s[0] for s in settled] == ["completed"]  # ...then the relay settles


def test_a_client_that_leaves_with_the_final_record_still_settles_the_relay_once():
    relay, settled = make_relay(FakeStream([]), first=rec(0, done=True), first_done=True)
    messages = relay.messages()
    assert next(messages) == (rec(0, True), True)
    messages.close()  # the response's writer stops there (client gone, server closing)
    assert [s[0] for s in settled] == ["completed"]
    relay.abandon("late")
    assert [s[0] for s in settled] == ["completed"]


def test_a_first_message_that_ends_the_stream_completes_at_once():
    relay, settled = make_relay(FakeStream([]), first=rec(0, done=True), first_done=True)
    assert list(relay.messages()) == [(rec(0, True), True)]
    assert [s[0] for s in settled] == ["completed"]


def test_a_node_failure_mid_stream_settles_failed_and_reaches_the_reader():
    error = NodeError(grpc.StatusCode.INTERNAL, "model crashed", 500)
    relay, settled = make_relay(FakeStream([(rec(1), False)], error=error))
    reader = relay.messages()
    assert next(reader) == (rec(0), False)
    assert next(reader) == (rec(1), False)
    with pytest.raises(NodeError) as info:
        next(reader)
    assert info.value.message == "model crashed" and info.value.mid_stream
    assert settled == [("failed", info.value)]


def test_a_stream_that_ends_without_its_final_record_fails_with_502():
    relay, settled = make_relay(FakeStream([(rec(1), False)]))
    with pytest.raises(NodeError) as info:
        list(relay.messages())
    assert info.value.http_status == 502 and settled[0][0] == "failed"


def test_abandon_cancels_the_node_call_and_settles_cancelled_once():
    stream = FakeStream([(rec(1), False)], block=True)
    relay, settled = make_relay(stream)
    relay.abandon("the client went away")
    relay.abandon("again")
    assert settled == [("cancelled", "the client went away")]
    assert stream.cancels == 1


def test_a_stalled_stream_ends_with_a_504_error():
    stream = FakeStream([], block=True)
    relay, settled = make_relay(stream)
    reader = relay.messages()
    next(reader)
    threading.Timer(0.05, relay.stall).start()
    with pytest.raises(NodeError) as info:
        next(reader)
    assert info.value.http_status == 504 and info.value.message == STALLED_MESSAGE
    assert settled == [("failed", info.value)]


def test_a_relay_nobody_took_is_abandoned_when_its_channel_closes():
    hub = ResponseHub()
    hub.open("r1")
    stream = FakeStream([], block=True)
    relay, settled = make_relay(stream)
    assert hub.publish("r1", RELAY, relay)
    hub.close("r1")
    assert settled == [("cancelled", "the client went away")]
    assert stream.cancels == 1
    # publishing to a closed channel fails: the dispatcher then abandons it itself
    assert not hub.publish("r1", RELAY, relay)


class _Queue:
    def add_cancel_listener(self, listener: Any) -> None:
        pass

    def notify(self) -> None:
        pass

    def wait_for_work(self, timeout: float) -> bool:
        return False

    def waiting_here(self) -> list[str]:
        return []


class _Scheduler:
    def schedule_next_batch(self) -> None:
        return None


def test_the_watchdog_stalls_only_relays_idle_past_the_timeout():
    clock = FakeClock(start=100.0)
    disp = Dispatcher(_Queue(), _Scheduler(), None, ResponseHub(), threads=0,
                      stream_idle_timeout_s=0.04, monotonic=clock)
    idle, _ = make_relay(FakeStream([], block=True), clock=clock)
    busy, _ = make_relay(FakeStream([], block=True), clock=clock)
    disp._relays.update({"idle": idle, "busy": busy})
    disp.start()
    try:
        clock.advance(0.05)
        busy.last_record = clock()
        assert wait_until(lambda: idle._stalled, timeout=5)
        assert not busy._stalled
    finally:
        disp.stop(grace_s=1)


@pytest.mark.parametrize("node_says, caller, expected", [
    (b'{"model":"llama3.2:1b","response":"a","done":false}', "llama3.2:1b",
     b'{"model":"llama3.2:1b","response":"a","done":false}\n'),
    (b'{"model":"llama3.2:1b","response":"a","done":false}', "Llama3.2:1B",
     b'{"model":"Llama3.2:1B","response":"a","done":false}\n'),
    (b'{"response":"a","model":"x"}\n{"model":"llama3.2:1b","done":true}', "llama3.2:1b",
     b'{"response":"a","model":"llama3.2:1b"}\n{"model":"llama3.2:1b","done":true}\n'),
    (b'{"response":"no model field"}', "m", b'{"response":"no model field"}\n'),
    (b"", "m", b""),
])
def test_respelling_rewrites_only_records_whose_model_differs(node_says, caller, expected):
    assert respeller(caller)(node_says, False) == expected

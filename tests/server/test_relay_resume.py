"""StreamRelay hands on the rest of an answer carried over to another node: units
with fake node streams (no network)."""

from __future__ import annotations

import grpc
import pytest

from olol.relay import StreamRelay
from olol.resume import Transcript
from olol.rpc.client import NodeError
from tests.server.test_relay import FakeStream, rec
from tests.support import FakeClock


def test_a_failure_mid_stream_is_replaced_by_the_rest_of_the_answer():
    broke = NodeError(grpc.StatusCode.UNAVAILABLE, "node gone", 503)
    settled: list = []
    rest = [(rec(3), False), (rec(4, done=True), True)]

    def settle(outcome, info):
        settled.append((outcome, info.message, transcript.segment(9.0).text))
        return iter(rest)

    transcript = Transcript("generate", started=0.0)
    relay = StreamRelay("r1", FakeStream([(rec(1), False), (rec(2), False)], error=broke),
                        rec(0), False, settle=settle, on_record=lambda: None,
                        monotonic=FakeClock(), transcript=transcript)
    got = list(relay.messages())
    assert got == [(rec(0), False), (rec(1), False), (rec(2), False), *rest]
    # settled once, as failed, knowing what the client had
    assert settled == [("failed", "node gone", "012")]
    assert relay.settled


def test_without_a_carry_over_the_failure_reaches_the_reader():
    broke = NodeError(grpc.StatusCode.UNAVAILABLE, "node gone", 503)
    relay = StreamRelay("r1", FakeStream([], error=broke), rec(0), False,
                        settle=lambda outcome, info: None, on_record=lambda: None,
                        monotonic=FakeClock())
    reader = relay.messages()
    assert next(reader) == (rec(0), False)
    with pytest.raises(NodeError) as info:
        next(reader)
    assert info.value.mid_stream and info.value.message == "node gone"

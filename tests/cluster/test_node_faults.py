"""The dispatcher's view of failing node calls, on its own: which failures are the
node's, the deadline watch (fake clock), alike failures, learned load times."""

from __future__ import annotations

import grpc

from olol.node_faults import (
    BUSY,
    NODE,
    REQUEST,
    Attempt,
    Attempts,
    CallWatch,
    LoadTimes,
    NodeTimeout,
    conclusive,
    failure_kind,
    missed,
    signature,
)
from olol.rpc.client import NodeError


def err(code, status=500, message="m") -> NodeError:
    return NodeError(code, message, status)


def test_what_is_the_nodes_fault():
    assert failure_kind(err(grpc.StatusCode.INTERNAL, 500)) == NODE  # an Ollama 500
    assert failure_kind(err(grpc.StatusCode.UNAVAILABLE, 502)) == NODE
    assert failure_kind(err(None, 502)) == NODE  # a stream closed before its end
    assert failure_kind(NodeTimeout("first", 1.0)) == NODE
    assert failure_kind(err(grpc.StatusCode.INVALID_ARGUMENT, 400)) == REQUEST
    assert failure_kind(err(grpc.StatusCode.NOT_FOUND, 404)) == REQUEST
    assert failure_kind(err(grpc.StatusCode.INTERNAL, 413)) == REQUEST  # a 4xx from Ollama
    assert failure_kind(err(grpc.StatusCode.RESOURCE_EXHAUSTED, 503)) == BUSY


def test_which_alike_failures_prove_the_request_is_the_cause():
    assert conclusive(err(grpc.StatusCode.INTERNAL))
    assert conclusive(NodeTimeout("first", 2.0))
    assert not conclusive(err(grpc.StatusCode.UNAVAILABLE, 502))  # nodes do die
    # deadlines of different lengths (a cold node waits longer) are still alike
    assert signature(NodeTimeout("first", 2.0)) == signature(NodeTimeout("first", 32.0))
    assert signature(err(grpc.StatusCode.INTERNAL, message="a")) != signature(
        err(grpc.StatusCode.INTERNAL, message="b"))


class _Stream:
    def __init__(self):
        self.received = 0
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_watch_cancels_a_call_without_a_first_record():
    clock, stream = _Clock(), _Stream()
    watch = CallWatch(clock)
    watch.watch("b1", stream, first_s=2.0, stall_s=1.0)
    clock.now += 1.9
    assert watch.sweep() == 0 and not stream.cancelled
    clock.now += 0.2
    assert watch.sweep() == 1 and stream.cancelled
    cancelled = err(grpc.StatusCode.CANCELLED, 499)
    timeout = missed(watch, "b1", cancelled)
    assert isinstance(timeout, NodeTimeout) and timeout.phase == "first"
    assert timeout.http_status == 504 and not timeout.mid_stream
    assert len(watch) == 0


def test_the_watch_allows_the_stall_limit_between_records_and_more_after_output():
    clock, stream = _Clock(), _Stream()
    watch = CallWatch(clock)
    watch.watch("b1", stream, first_s=2.0, stall_s=1.0)
    for _ in range(5):  # records keep coming: never late
        clock.now += 0.9
        stream.received += 1
        assert watch.sweep() == 0
    watch.delivered("b1", idle_s=10.0)  # output reached the client
    clock.now += 5.0
    assert watch.sweep() == 0
    clock.now += 5.5
    assert watch.sweep() == 1
    late = missed(watch, "b1", err(grpc.StatusCode.CANCELLED, 499))
    assert late.phase == "stall" and late.mid_stream


def test_an_unwatched_call_that_failed_by_itself_keeps_its_error():
    watch = CallWatch(_Clock())
    watch.watch("b1", _Stream(), first_s=2.0, stall_s=1.0)
    own = err(grpc.StatusCode.UNAVAILABLE, 502)
    assert missed(watch, "b1", own) is own


def test_attempts_find_alike_failures_on_other_nodes_only():
    attempts = Attempts(limit=2)
    assert attempts.record("r", Attempt("a", "INTERNAL:500:x", None)) == []
    assert attempts.record("r", Attempt("a", "INTERNAL:500:x", None)) == []  # same node
    alike = attempts.record("r", Attempt("b", "INTERNAL:500:x", None))
    assert [a.node for a in alike] == ["a", "a"]
    assert attempts.nodes("r") == {"a", "b"}
    attempts.record("s", Attempt("a", "x", None))
    attempts.record("t", Attempt("a", "x", None))  # over the limit: the oldest goes
    assert attempts.pop("r") == [] and len(attempts) == 2


def test_load_times_learn_from_load_duration():
    loads = LoadTimes(cold_start_s=30.0)
    assert loads.allowance("m") == 30.0
    loads.note("m", {"load_duration": 40 * 10**9})
    assert loads.allowance("m") == 80.0
    loads.note("m", {"load_duration": 1 * 10**9})  # a quick load: forgets slowly
    assert 70.0 <= loads.allowance("m") < 80.0
    loads.note("m", {"done": True})  # no figure: nothing learned
    loads.note("m", "not a record")
    assert 70.0 <= loads.allowance("m") < 80.0

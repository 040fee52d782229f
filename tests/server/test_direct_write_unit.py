"""The pieces of the direct write path, each alone: the waitress task written from
another thread (:class:`olol.server.door.DirectTask`) and a multiplexed stream
handing records to a sink (:class:`olol.rpc.mux.MuxStream`)."""

from __future__ import annotations

import grpc
import pytest

from olol.rpc import node_pb2
from olol.rpc.client import NodeError
from olol.rpc.mux import MuxStream
from olol.server.door import DIRECT_BACKLOG, DirectTask


class _Channel:
    """What DirectTask.write_direct reads of a waitress channel."""

    def __init__(self) -> None:
        self.connected = True
        self.will_close = False
        self.total_outbufs_len = 0


def _task(wrote_header: bool = True) -> tuple[DirectTask, list[bytes]]:
    task = DirectTask.__new__(DirectTask)  # no request: only write_direct is used
    written: list[bytes] = []
    task.channel = _Channel()
    task.wrote_header = wrote_header
    task.write = written.append  # type: ignore[method-assign]
    return task, written


def test_direct_write_goes_out_while_the_client_keeps_up():
    task, written = _task()
    assert task.write_direct(b"a") is True and written == [b"a"]


@pytest.mark.parametrize("state", ["no headers yet", "client gone", "closing", "backlog"])
def test_direct_write_refuses_without_writing(state):
    task, written = _task(wrote_header=state != "no headers yet")
    if state == "client gone":
        task.channel.connected = False
    if state == "closing":
        task.channel.will_close = True
    if state == "backlog":
        task.channel.total_outbufs_len = DIRECT_BACKLOG + 1
    assert task.write_direct(b"a") is False and written == []


class _MuxChannel:
    ack_bytes = 1 << 30

    def __init__(self) -> None:
        self.forgotten: list[int] = []
        self.error = NodeError

    def http_for_code(self, code: grpc.StatusCode) -> int:
        return 500

    def ack(self, cid: int, total: int) -> None:  # pragma: no cover - not reached
        pass

    def forget(self, cid: int) -> None:
        self.forgotten.append(cid)

    def cancel(self, cid: int) -> None:  # pragma: no cover - not reached
        pass


def _part(body: bytes, done: bool = False, end: bool = False) -> node_pb2.MuxPart:
    return node_pb2.MuxPart(id=1, body=body, done=done, end=end)


def test_a_sink_takes_records_until_it_refuses_then_the_reader_gets_the_rest_in_order():
    stream = MuxStream(_MuxChannel(), 1, True, None, reopen=lambda: None)  # type: ignore[arg-type]
    taken: list[bytes] = []
    answers = iter([True, True, False])

    def sink(body: bytes) -> bool:
        ok = next(answers)
        if ok:
            taken.append(body)
        return ok

    assert stream.set_sink(sink) is True
    for body in (b"r1", b"r2", b"r3", b"r4"):
        stream.deliver(_part(body))
    stream.deliver(_part(b"final", done=True))
    assert taken == [b"r1", b"r2"]  # r3 was refused: the sink is no longer used
    assert [stream.next_message() for _ in range(3)] == [(b"r3", False), (b"r4", False),
                                                         (b"final", True)]
    assert stream.received == 5 and stream.done


def test_the_final_record_and_errors_always_go_to_the_reader():
    stream = MuxStream(_MuxChannel(), 1, True, None, reopen=lambda: None)  # type: ignore[arg-type]
    taken: list[bytes] = []
    stream.set_sink(lambda body: taken.append(body) is None)
    stream.deliver(_part(b"r1"))
    stream.deliver(node_pb2.MuxPart(id=1, end=True, code=grpc.StatusCode.INTERNAL.value[0],
                                    error="boom", http_status=500, stream_error=True))
    assert taken == [b"r1"]
    with pytest.raises(NodeError) as info:
        stream.next_message()
    assert info.value.message == "boom" and info.value.mid_stream


def test_no_sink_while_records_wait_for_the_reader():
    stream = MuxStream(_MuxChannel(), 1, True, None, reopen=lambda: None)  # type: ignore[arg-type]
    stream.deliver(_part(b"r1"))
    assert stream.set_sink(lambda body: True) is False
    assert stream.next_message() == (b"r1", False)
    assert stream.set_sink(lambda body: True) is True


def test_after_a_deadline_nothing_more_is_written_directly():
    stream = MuxStream(_MuxChannel(), 1, True, 0.0, reopen=lambda: None)  # type: ignore[arg-type]
    taken: list[bytes] = []
    assert stream.set_sink(lambda body: taken.append(body) is None)
    with pytest.raises(NodeError) as info:
        stream.next_message()
    assert info.value.http_status == 504
    stream.deliver(_part(b"late"))
    assert taken == []

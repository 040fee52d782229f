"""The simulator's decode step: the records due at one step leave together."""

from __future__ import annotations

import threading
import time

import pytest

from olol.sim.engine import Stepper
from olol.sim.scheduler import Aborted, Waiter


class FakeExchange:
    """Records what the step thread does with it, in one shared log."""

    def __init__(self, name: str, log: list, writable: bool = True) -> None:
        self.name = name
        self.log = log
        self.writable = writable
        self._holding = False

    def can_write_now(self) -> bool:
        return self.writable

    def capture(self, fn):
        self._holding = True
        try:
            fn()
        finally:
            self._holding = False
        return f"<{self.name}>".encode()

    def send_captured(self, data: bytes) -> None:
        self.log.append(("send", data.decode(), threading.current_thread().name))

    def piece(self) -> None:  # what an emitter does: build the record, write it
        self.log.append(("build" if self._holding else "write", self.name,
                         threading.current_thread().name))


@pytest.fixture
def stepper():
    stop = threading.Event()
    s = Stepper(stop)
    yield s, stop
    stop.set()
    s.join(2)


def _at_once(stepper, exchanges, delay=0.3):
    """Each exchange's piece due at one step ``delay`` s from now, from its own
    thread (each says how far the step is from when it asks, and which step it is,
    as the engine does)."""
    errors = []
    waiter = Waiter(threading.Event())
    due = time.monotonic() + delay

    def one(ex):
        try:
            stepper.run_at(due - time.monotonic(), ex.piece, waiter, ex, due)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(ex,), name=f"t-gen-{ex.name}") for ex in exchanges]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_the_records_of_one_step_are_built_then_sent_together(stepper):
    s, _ = stepper
    log: list = []
    exchanges = [FakeExchange(str(i), log) for i in range(4)]
    assert _at_once(s, exchanges) == []
    kinds = [entry[0] for entry in log]
    assert kinds == ["build"] * 4 + ["send"] * 4  # no send before every record is built
    assert {entry[2] for entry in log} == {"olol-sim-step"}
    assert sorted(entry[1] for entry in log if entry[0] == "send") == [f"<{i}>" for i in range(4)]


def test_a_write_that_could_block_goes_back_to_its_own_thread(stepper):
    s, _ = stepper
    log: list = []
    stuck = FakeExchange("stuck", log, writable=False)
    others = [FakeExchange(str(i), log) for i in range(2)]
    assert _at_once(s, [stuck, *others]) == []
    assert ("write", "stuck", "t-gen-stuck") in log  # written by the generation itself
    sent = [entry for entry in log if entry[0] == "send"]
    assert sorted(e[1] for e in sent) == ["<0>", "<1>"] and {e[2] for e in sent} == {"olol-sim-step"}


def test_an_error_of_the_write_reaches_the_generation(stepper):
    s, _ = stepper

    class Gone(FakeExchange):
        def send_captured(self, data):
            raise ConnectionResetError("client went away")

    errors = _at_once(s, [Gone("g", [])])
    assert len(errors) == 1 and isinstance(errors[0], ConnectionResetError)


def test_an_aborted_generation_does_not_write(stepper):
    s, _ = stepper
    log: list = []
    aborted = threading.Event()
    aborted.set()
    with pytest.raises(Aborted):
        s.run_at(5.0, FakeExchange("x", log).piece, Waiter(aborted), FakeExchange("x", log))
    assert log == []


def test_stopping_ends_every_wait(stepper):
    s, stop = stepper
    log: list = []
    errors = []
    ex = FakeExchange("late", log)
    t = threading.Thread(target=lambda: _catch(errors, s.run_at, 30.0, ex.piece,
                                               Waiter(threading.Event()), ex),
                         name="t-gen-late")
    t.start()
    stop.set()
    s.join(2)
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Aborted)
    assert log == []


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)

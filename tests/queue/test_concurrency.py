"""Many threads: no request is handed out twice, none is lost; waking dispatchers."""

from __future__ import annotations

import sys
import threading

import pytest

from tests.queue.conftest import make_request

THREADS = 16


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), f"{t.name} did not finish"


@pytest.fixture()
def interleaved():
    """Threads handed the GIL every few microseconds: a claim takes tens of them, so one
    thread cannot take the whole queue within its default 5 ms turn."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_no_double_claim_under_16_threads(make_queue, interleaved):
    q = make_queue()
    n = 400
    ids = {q.enqueue(make_request(model=("llama3.2:1b", "qwen2:0.5b")[i % 2], prompt=str(i),
                                  priority=i % 3))[0] for i in range(n)}
    claimed: list[list[str]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS, timeout=10)

    def worker(k: int) -> None:
        start.wait()
        for _ in range(n):  # bounded
            model = None if k % 3 == 0 else ("llama3.2:1b", "qwen2:0.5b")[k % 2]
            got = q.dequeue(1 + k % 4, model=model, server=f"w{k}")
            claimed[k].extend(d["id"] for d in got)
            if not got and q.get_queue_stats()["ready"] == 0:
                return

    _run([threading.Thread(target=worker, args=(k,), name=f"claim-{k}") for k in range(THREADS)])
    flat = [rid for part in claimed for rid in part]
    assert len(flat) == len(set(flat))  # nobody got a request twice
    assert set(flat) == ids  # and every request was handed out
    assert sum(1 for part in claimed if part) > 1
    processing = {d["id"] for d in q.list_jobs(status="processing", limit=1_000, kind=None)}
    assert processing == ids
    for rid in ids:
        assert q.get(rid)["attempts"] == 1  # claimed exactly once
    assert q.get_queue_stats()["processing"] == n


def test_concurrent_enqueue_and_claim(make_queue):
    q = make_queue()
    per_thread = 40
    producers, consumers = 8, 8
    produced: list[list[str]] = [[] for _ in range(producers)]
    consumed: list[list[str]] = [[] for _ in range(consumers)]
    done = threading.Event()

    def produce(k: int) -> None:
        for i in range(per_thread):
            produced[k].append(q.enqueue(make_request(prompt=f"{k}-{i}", priority=i % 2))[0])

    def consume(k: int) -> None:
        for _ in range(10_000):  # bounded
            got = q.dequeue(2)
            consumed[k].extend(d["id"] for d in got)
            if not got:
                if done.is_set() and q.get_queue_stats()["ready"] == 0:
                    return
                q.wait_for_work(0.05)

    cons = [threading.Thread(target=consume, args=(k,), name=f"consume-{k}")
            for k in range(consumers)]
    prods = [threading.Thread(target=produce, args=(k,), name=f"produce-{k}")
             for k in range(producers)]
    for t in cons:
        t.start()
    _run(prods)
    done.set()
    q.notify()
    for t in cons:
        t.join(timeout=30)
        assert not t.is_alive()
    all_produced = [r for part in produced for r in part]
    all_consumed = [r for part in consumed for r in part]
    assert len(all_consumed) == len(set(all_consumed))
    assert sorted(all_consumed) == sorted(all_produced)
    seqs = [q.get(r)["seq"] for r in all_produced]
    assert len(set(seqs)) == len(seqs)


def test_cancel_races_claim(make_queue):
    """Whoever wins, the record ends consistent in the store and in RAM."""
    q = make_queue()
    ids = [q.enqueue(make_request(prompt=str(i)))[0] for i in range(100)]
    start = threading.Barrier(2, timeout=10)
    claimed: list[str] = []

    def claimer() -> None:
        start.wait()
        for _ in range(200):
            claimed.extend(d["id"] for d in q.dequeue(3))

    def canceller() -> None:
        start.wait()
        for rid in ids:
            q.cancel(rid)

    _run([threading.Thread(target=claimer, name="claimer"),
          threading.Thread(target=canceller, name="canceller")])
    assert q.peek() == []
    stats = q.get_queue_stats()
    by_status = stats["by_status"]
    assert by_status["cancelled"] == 100  # cancel also hits processing ones
    assert by_status["pending"] == by_status["processing"] == 0
    assert stats["depth"] == 0
    for rid in ids:
        assert q.get(rid)["status"] == "cancelled"
        assert q.is_cancelled(rid)


def test_wait_for_work_wakes_on_enqueue(make_queue):
    q = make_queue()
    assert q.wait_for_work(0) is False
    result: list[bool] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        result.append(q.wait_for_work(10.0))

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    waiting.wait(5)
    q.enqueue(make_request())
    t.join(timeout=10)
    assert not t.is_alive()
    assert result == [True]
    assert q.wait_for_work(0) is True


def test_notify_wakes_without_work(make_queue):
    q = make_queue()
    result: list[bool] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        result.append(q.wait_for_work(10.0))

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    waiting.wait(5)
    for _ in range(200):  # the waiter may not be inside wait() yet; bounded retries
        q.notify()
        t.join(timeout=0.05)
        if not t.is_alive():
            break
    assert not t.is_alive()
    assert result == [False]


def test_wait_for_work_rejects_unbounded_waits(q):
    import pytest

    for bad in (None, -1, float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            q.wait_for_work(bad)


def _waiter(q, timeout: float = 10.0):
    """Start a thread that calls wait_for_work twice: the first call returns at once
    (work is claimable); the second must sleep until something new happens."""
    first_done = threading.Event()
    result: list[bool] = []

    def run() -> None:
        result.append(q.wait_for_work(timeout))
        first_done.set()
        result.append(q.wait_for_work(timeout))

    t = threading.Thread(target=run, name="dispatcher-like")
    t.start()
    assert first_done.wait(5)
    return t, result


def test_unplaceable_work_does_not_make_waiters_spin(make_queue):
    q = make_queue()
    q.enqueue(make_request())
    t, result = _waiter(q)
    # Nothing changed since the first return: the second call sleeps although work
    # exists (a dispatcher that could not place it must not busy-loop).
    t.join(timeout=0.3)
    assert t.is_alive()
    assert result == [True]
    q.enqueue(make_request())  # news: wakes it
    t.join(timeout=10)
    assert not t.is_alive()
    assert result == [True, True]


def test_a_finished_request_wakes_waiters(make_queue):
    q = make_queue()
    first, _ = q.enqueue(make_request())
    q.enqueue(make_request())
    q.dequeue(ids=[first])
    t, result = _waiter(q)
    t.join(timeout=0.3)
    assert t.is_alive()
    q.update_request_status(first, "completed")  # a node slot freed
    t.join(timeout=10)
    assert not t.is_alive()
    assert result == [True, True]


def test_no_wakeup_is_lost_between_looking_and_sleeping(make_queue):
    q = make_queue()
    looked, enqueued = threading.Event(), threading.Event()
    result: list[bool] = []

    def dispatcher() -> None:
        result.append(q.wait_for_work(0))  # this thread has now "looked": nothing
        looked.set()
        enqueued.wait(5)
        result.append(q.wait_for_work(60.0))  # the enqueue came before: no sleep

    t = threading.Thread(target=dispatcher, name="dispatcher-like")
    t.start()
    assert looked.wait(5)
    q.enqueue(make_request())
    enqueued.set()
    t.join(timeout=10)
    assert not t.is_alive(), "the wake-up was lost: the waiter sleeps on"
    assert result == [False, True]

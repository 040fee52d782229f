"""Wake-ups of dispatcher threads: one event wakes one thread, a claim passes the
wake-up on while more is claimable, and ``notify()`` still wakes everyone."""

from __future__ import annotations

import threading

from tests.queue.conftest import make_request
from tests.support import wait_until


class Waiters:
    """``n`` dispatcher-like threads: each has looked at the queue once and then
    sleeps in ``wait_for_work`` until woken; ``woken`` counts returns."""

    def __init__(self, q, n: int) -> None:
        self.q = q
        self.woken = 0
        self.lock = threading.Lock()
        self.ready = threading.Barrier(n + 1)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, name=f"waiter-{i}", daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()
        self.ready.wait(5)
        self.asleep()

    def asleep(self) -> None:
        """Wait until every thread sleeps in the condition (CPython's waiter list)."""
        n = len(self.threads)
        assert wait_until(lambda: len(self.q._cond._waiters) == n, timeout=5)

    def _run(self) -> None:
        self.q.wait_for_work(0)  # has looked
        self.ready.wait(5)
        while not self.stop.is_set():
            self.q.wait_for_work(30)
            if self.stop.is_set():
                return
            with self.lock:
                self.woken += 1

    def close(self) -> None:
        self.stop.set()
        self.q.notify()
        for t in self.threads:
            t.join(5)


def test_one_enqueue_wakes_one_thread_not_all(make_queue):
    q = make_queue()
    waiters = Waiters(q, 6)
    try:
        q.enqueue(make_request())
        assert wait_until(lambda: waiters.woken >= 1, timeout=5)
        # the others sleep on: give them every chance to show up
        for t in waiters.threads:
            t.join(timeout=0.05)
        assert waiters.woken == 1
    finally:
        waiters.close()


def test_a_freed_slot_wakes_one_thread_when_work_waits_and_none_otherwise(make_queue):
    q = make_queue()
    rid, _ = q.enqueue(make_request())
    q.dequeue(ids=[rid])
    waiters = Waiters(q, 4)
    try:
        q.notify(everyone=False)  # nothing is claimable: nobody to wake
        q.update_request_status(rid, "completed")  # a slot freed, nothing waits
        for t in waiters.threads:
            t.join(timeout=0.05)
        assert waiters.woken == 0
        q.enqueue(make_request(), wake=False)  # a front-door thread may take it itself
        for t in waiters.threads:
            t.join(timeout=0.05)
        assert waiters.woken == 0
        q.notify(everyone=False)  # it did not: one thread is woken
        assert wait_until(lambda: waiters.woken >= 1, timeout=5)
        for t in waiters.threads:
            t.join(timeout=0.05)
        assert waiters.woken == 1
        waiters.asleep()
        q.notify()  # everyone
        assert wait_until(lambda: waiters.woken >= 5, timeout=5)
    finally:
        waiters.close()


def test_a_claim_passes_the_wake_up_on_while_more_is_claimable(make_queue):
    q = make_queue()
    for _ in range(3):
        q.enqueue(make_request())
    q.wait_for_work(0)  # this thread has looked: all news so far is seen
    waiters = Waiters(q, 3)
    try:
        assert waiters.woken == 0
        assert len(q.dequeue(batch_size=1)) == 1  # two left: another thread is woken
        assert wait_until(lambda: waiters.woken >= 1, timeout=5)
        q.dequeue(batch_size=2)  # nothing left after it: no further wake-up
        woken = waiters.woken
        for t in waiters.threads:
            t.join(timeout=0.05)
        assert waiters.woken == woken
    finally:
        waiters.close()


def test_news_is_seen_by_one_returning_thread_not_by_each(make_queue):
    """Threads busy on a node when an event happens do not all rescan the queue when
    they come back: the first one that looks takes the news for all."""
    q = make_queue()
    looked = threading.Barrier(4)
    go = threading.Event()
    immediate: list[bool] = []
    lock = threading.Lock()

    def dispatcher() -> None:
        q.wait_for_work(0)
        looked.wait(5)
        go.wait(5)
        returned = threading.Event()
        timer = threading.Timer(0.5, returned.set)  # "slept" = still waiting after 0.5 s
        timer.start()
        q.wait_for_work(1.0)
        timer.cancel()
        with lock:
            immediate.append(not returned.is_set())

    threads = [threading.Thread(target=dispatcher, name=f"busy-{i}") for i in range(3)]
    for t in threads:
        t.start()
    looked.wait(5)
    q.enqueue(make_request())  # while all three are "running a batch"
    go.set()
    for t in threads:
        t.join(5)
    assert sorted(immediate) == [False, False, True]

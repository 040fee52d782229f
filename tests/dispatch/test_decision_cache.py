"""The scheduler keeps its lookahead window between decisions: every queue change that
matters makes it read the window again, so its decisions are those of a scheduler
built afresh on the same queue and cluster."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from olol.cluster import ClusterManager
from olol.queue import QueueManager
from olol.scheduler import RequestScheduler
from olol.store import DatabaseManager
from tests.dispatch.conftest import MODEL, status
from tests.support import FakeClock

OTHER = "qwen2.5:0.5b"
NODES = ("n1:1", "n2:1")


def _no_calls(address: str) -> Any:
    raise AssertionError("placement calls no node")


class Bench:
    """A real queue and cluster on a memory store, one long-lived scheduler, and the
    same question put to a fresh scheduler."""

    def __init__(self, queue_cls: type[QueueManager] = QueueManager) -> None:
        self.clock = FakeClock()
        self.db = DatabaseManager.memory(clock=self.clock)
        self.queue = queue_cls(self.db, clock=self.clock, ageing_s=60.0)
        self.cluster = ClusterManager(self.db, clock=self.clock, client_factory=_no_calls)
        for a in NODES:
            self.cluster.add_node(a)
            self.cluster.record_poll(a, status(models=(MODEL, OTHER), loaded=(MODEL, OTHER),
                                               parallel=4), 1.0)
        self.kept = self.scheduler()
        self.seen: list[Any] = []

    def scheduler(self) -> RequestScheduler:
        return RequestScheduler(self.queue, self.cluster, clock=self.clock)

    def submit(self, rid: str, *, model: str = MODEL, endpoint: str = "generate",
               kind: str = "sync", **extra: Any) -> None:
        body: dict[str, Any] = {"model": model, "stream": False}
        if endpoint == "embed":
            body["input"] = "x"
        else:
            body["prompt"] = "hi"
        self.queue.enqueue({"id": rid, "kind": kind, "endpoint": endpoint, "api": "ollama",
                            "model": model, "body": body, **extra})

    def check(self) -> Any:
        """The kept scheduler decides as a fresh one does; returns what it decided."""
        now = self.clock()
        kept = self.kept.plan_next(now)
        fresh = self.scheduler().plan_next(now)
        assert kept == fresh
        self.seen.append(kept)
        return kept

    def head(self) -> tuple[str, ...] | None:
        out = self.check()
        if out is None or not out.decisions:
            return None
        return out.decisions[0].ids

    def claim(self, rid: str) -> None:
        assert [r["id"] for r in self.queue.dequeue(1, ids=[rid], server="n1:1")] == [rid]


@pytest.fixture
def bench():
    made: list[Bench] = []

    def make(**kw: Any) -> Bench:
        b = Bench(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.db.close()


def test_every_queue_change_is_seen(bench):
    b = bench()
    assert b.check() is None  # empty queue
    b.submit("r1")
    assert b.head() == ("r1",)  # enqueue
    assert b.head() == ("r1",)  # nothing changed: the same answer
    b.submit("r2", model=OTHER, priority=5)
    assert b.head() == ("r2",)  # an enqueue ahead of the head
    b.claim("r2")
    assert b.head() == ("r1",)  # claim
    assert b.queue.requeue("r2")
    assert b.head() == ("r2",)  # requeue: back in its place
    assert b.queue.cancel("r2")
    assert b.head() == ("r1",)  # cancel of a pending request
    b.claim("r1")
    assert b.queue.requeue("r1", delay_s=10.0)
    assert b.check() is None  # nothing claimable until its delay is over
    b.clock.advance(11.0)
    assert b.head() == ("r1",)  # became due: no call made it claimable but the clock
    b.submit("r3", model=OTHER, priority=1)
    assert b.head() == ("r3",)
    # ageing: r1 is 71 s older than r3; 61 s more make it one level above r3's
    b.clock.advance(61.0)
    assert b.head() == ("r3",)  # the order is static: enqueued_ts / ageing_s - priority
    b.submit("r4", model=OTHER, priority=3)
    assert b.head() == ("r4",)
    b.queue.update_request_status("r4", "failed", error="x")  # pending -> failed directly
    assert b.head() == ("r3",)


def test_a_change_inside_a_group_splits_it_again(bench):
    b = bench()
    b.submit("c1")
    b.submit("c2", model=OTHER)
    first = b.head()
    assert first == ("c1",)
    # an identical request joins c1's coalesced call: the same group, other members
    b.queue.enqueue({"id": "c3", "kind": "sync", "endpoint": "generate", "api": "ollama",
                     "model": MODEL, "body": {"model": MODEL, "prompt": "hi", "stream": False},
                     "coalesce_key": "same", "batch_key": "b1"})
    b.queue.enqueue({"id": "c4", "kind": "sync", "endpoint": "generate", "api": "ollama",
                     "model": MODEL, "body": {"model": MODEL, "prompt": "hi", "stream": False},
                     "coalesce_key": "same", "batch_key": "b1", "priority": 2})
    assert b.head() == ("c4", "c3")  # coalesced with c3, c4 leading
    b.queue.enqueue({"id": "c5", "kind": "sync", "endpoint": "generate", "api": "ollama",
                     "model": MODEL, "body": {"model": MODEL, "prompt": "hi", "stream": False},
                     "coalesce_key": "same", "batch_key": "b1"})
    assert b.head() == ("c4", "c3", "c5")
    b.claim("c3")
    assert b.head() == ("c4", "c5")
    # embeds merge into one call; one more joins it
    for i in range(2):
        b.submit(f"e{i}", model=OTHER, endpoint="embed", priority=9)
    assert b.head() == ("e0", "e1")
    b.submit("e2", model=OTHER, endpoint="embed", priority=9)
    assert b.head() == ("e0", "e1", "e2")
    b.queue.cancel("e1")
    assert b.head() == ("e0", "e2")


def test_the_window_bound_moves_with_the_queue(bench):
    b = bench()
    b.kept.lookahead = 3
    for i in range(5):
        b.submit(f"w{i}", model=MODEL if i % 2 else OTHER)
    assert b.check() is not None
    fresh = b.scheduler()
    fresh.lookahead = 3

    def same() -> None:
        now = b.clock()
        assert b.kept.plan_next(now) == fresh.plan_next(now)
        kept_groups = b.kept._queue_summary(b.kept._window().work, b.kept._window().counts)
        window = b.queue.peek_summaries(fresh.lookahead)
        full = fresh._summary(window, b.queue.batch_similar_requests(limit=fresh.lookahead))
        assert kept_groups == full  # the whole window, not only its head

    same()
    b.claim("w1")  # w3 slides into the window
    same()
    b.submit("w5", priority=4)  # pushes w3 out again
    same()
    b.kept.lookahead = 10  # a wider window is read in full
    fresh.lookahead = 10
    same()
    # generate and chat of one model are one group but two calls: the chat call's
    # head comes after the other model's
    b.submit("w6", endpoint="chat")
    same()
    assert [g.head.ids[0] for g in fresh._summary(
        b.queue.peek_summaries(10), b.queue.batch_similar_requests(limit=10)).groups] == [
        "w5", "w0", "w6"]


def test_avoid_and_forget_reach_the_kept_window(bench):
    b = bench()
    b.submit("a1")
    first = b.kept.plan_next(b.clock()).decisions[0].node
    b.kept.avoid("a1", first)
    again = b.kept.plan_next(b.clock()).decisions[0].node
    assert again != first
    b.kept.forget("a1")
    assert b.kept.plan_next(b.clock()).decisions[0].node == first


def test_a_restart_rebuild_is_seen(bench):
    b = bench()
    b.submit("j1", kind="job")
    b.submit("s1", priority=5)
    assert b.head() == ("s1",)
    b.queue.recover()  # the sync request is interrupted, the job stays pending
    assert b.head() == ("j1",)


class RacingQueue(QueueManager):
    """A queue where another dispatcher claims the head between the scheduler's read
    of the window and its read of the groups (once)."""

    race: str | None = None

    def batch_similar_requests(self, limit: int | None = None, model: str | None = None
                               ) -> list[dict]:
        if self.race is not None:
            rid, self.race = self.race, None
            assert self.dequeue(1, ids=[rid], server="n2:1")
        return super().batch_similar_requests(limit, model)


def test_a_claim_between_the_two_reads_is_not_kept(bench):
    b = bench(queue_cls=RacingQueue)
    b.submit("x1", priority=1)
    b.submit("x2")
    assert b.head() == ("x1",)
    b.submit("x3", model=OTHER)
    b.queue.race = "x1"
    # the kept scheduler read x1 in the window, then lost it: it places what is left
    out = b.kept.plan_next(b.clock())
    assert out.decisions[0].ids == ("x2",)
    # x1 comes back where it was: the window's ids are as they were read, so only
    # reading everything again finds x1's group
    assert b.queue.requeue("x1")
    assert b.head() == ("x1",)


class FailingQueue(QueueManager):
    """A queue whose grouping fails once (a store or programming error)."""

    fail = False

    def batch_similar_requests(self, limit: int | None = None, model: str | None = None
                               ) -> list[dict]:
        if self.fail:
            self.fail = False
            raise RuntimeError("grouping failed")
        return super().batch_similar_requests(limit, model)


def test_a_failed_read_leaves_no_half_kept_window(bench):
    b = bench(queue_cls=FailingQueue)
    b.submit("f1")
    assert b.head() == ("f1",)
    b.submit("f2", model=OTHER, priority=2)
    b.queue.fail = True
    with pytest.raises(RuntimeError):
        b.kept.plan_next(b.clock())
    assert b.head() == ("f2",)  # f2 was seen by the failed read: it is read again
    # and counted once in the demand placement weighs evictions by
    kept = b.kept._window()
    assert dict(kept.counts) == dict(Counter(r["model_key"] for r in b.queue.peek_summaries(64)))

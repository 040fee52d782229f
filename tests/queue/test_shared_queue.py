"""The queue on a store shared by several proxies (PostgreSQL): two ``QueueManager``s
on one database, as two proxies hold them."""

import threading
import time

import pytest

from olol.queue import QueueManager
from olol.store.postgres import PostgresStore
from tests.queue.conftest import make_request


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_until(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.02)
    return bool(fn())


@pytest.fixture
def proxies(pg_dsn):
    made = []

    def make(clock=None, **kw):
        store = PostgresStore(pg_dsn, max_size=20)
        q = QueueManager(store, clock=clock or time.time, **kw)
        made.append((q, store))
        return q, store

    yield make
    for q, store in made:
        q.close()
        store.close()


def test_jobs_are_seen_by_both_and_claimed_once(proxies):
    (a, _), (b, _) = proxies(), proxies()
    ids = [a.enqueue(make_request(kind="job", prompt=str(i)))[0] for i in range(200)]
    assert wait_until(lambda: b.depth() == 200)
    got: list[list[str]] = [[] for _ in range(8)]

    def work(k):
        q = (a, b)[k % 2]
        while True:
            docs = q.dequeue(1)
            if docs:
                got[k].append(docs[0]["id"])
            elif q.get_queue_stats()["pending"] == 0:
                return
            else:
                time.sleep(0.002)

    threads = [threading.Thread(target=work, args=(k,), name=f"w{k}") for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    claimed = [i for g in got for i in g]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    # a job claimed on one proxy is finished by it; the other sees it completed
    rid = claimed[0]
    owner = a if rid in got[0] + got[2] + got[4] + got[6] else b
    other = b if owner is a else a
    assert not other.update_request_status(rid, "completed")  # not its claim
    assert owner.update_request_status(rid, "completed", {"ok": True})
    assert wait_until(lambda: (other.get(rid) or {}).get("status") == "completed")


def test_a_job_claimed_by_one_proxy_cannot_be_claimed_by_the_other(proxies):
    (a, _), (b, _) = proxies(), proxies()
    rid, _ = a.enqueue(make_request(kind="job", prompt="one"))
    assert wait_until(lambda: b.depth() == 1)
    [doc] = a.dequeue(ids=[rid], server="n1")
    assert doc["claimed_by"] == a.owner
    # whether or not b has heard of the claim yet, the row says who holds it
    assert b.dequeue(ids=[rid], server="n2") == []
    assert b.dequeue(1) == []
    assert wait_until(lambda: b.get_queue_stats()["processing"] == 1)


def test_a_sync_request_lives_in_its_proxys_ram_until_it_finishes(proxies):
    (a, store), (b, _) = proxies(), proxies()
    rid, _ = a.enqueue(make_request(prompt="hello"))
    assert store.count("inference_queue") == 0  # nothing written while it is active
    assert a.get(rid)["status"] == "pending" and a.get(rid)["body"]
    assert b.dequeue(1) == [] and b.get(rid) is None  # the other proxy cannot take it
    [doc] = a.dequeue(1, server="n1")
    assert doc["id"] == rid and doc["body"] and doc["attempts"] == 1
    assert a.requeue(rid, reason="node busy")
    [doc] = a.dequeue(1, server="n2")
    assert doc["attempts"] == 2 and a.get(rid)["status"] == "processing"
    finished = []
    a.add_finish_listener(finished.append)
    assert a.update_request_status(rid, "completed")
    assert not a.update_request_status(rid, "failed")  # finished states are final
    assert finished and finished[0]["started_ts"] is not None
    # its final record is written once, as history, and reaches the other proxy
    assert wait_until(lambda: store.count("inference_queue", {"id": rid}) == 1)
    row = store.search_one("inference_queue", {"id": rid})
    assert row["status"] == "completed" and row["server_assigned"] == "n2"
    assert row["attempts"] == 2 and "body" not in row
    assert wait_until(lambda: (b.get(rid) or {}).get("status") == "completed")
    assert a.get(rid)["status"] == "completed"


def test_a_cancelled_sync_request_is_recorded_cancelled(proxies):
    (a, store), _ = proxies(), proxies()
    rid, _ = a.enqueue(make_request(prompt="bye"))
    heard = []
    a.add_cancel_listener(heard.append)
    assert a.cancel(rid) and heard == [rid]
    assert a.dequeue(1) == []
    assert wait_until(lambda: (store.search_one("inference_queue", {"id": rid}) or {})
                      .get("status") == "cancelled")


def test_a_stopped_proxys_claimed_jobs_go_back_after_the_grace(proxies):
    clock = Clock()
    a, a_store = proxies()
    b, _ = proxies(clock=clock, gone_after_s=15.0)
    rid, _ = a.enqueue(make_request(kind="job", prompt="long"))
    [doc] = a.dequeue(1, server="n1")
    # b's own view (its RAM, which its sweep reads) has heard of the claim
    assert wait_until(lambda: b.get_queue_stats()["processing"] == 1)
    assert b.return_expired_leases() == 0  # its proxy is alive
    a_store.close()  # the proxy is gone: its presence lock with it
    assert wait_until(lambda: a_store.origin not in b.db.owners_alive({a_store.origin}))
    assert b.return_expired_leases() == 0  # missing, but not yet for long
    clock.t += 16
    assert b.return_expired_leases() == 1
    assert b.get(rid)["status"] == "pending"
    [again] = b.dequeue(1, server="n2")
    assert again["id"] == rid and again["attempts"] == 2 and again["claimed_by"] == b.owner


def test_an_expired_lease_is_taken_back_by_another_proxy(proxies):
    clock = Clock()
    a, _ = proxies(clock=clock, lease_s=30.0)
    b, _ = proxies(clock=clock, lease_s=30.0)
    rid, _ = a.enqueue(make_request(kind="job", prompt="stuck"))
    a.dequeue(1, server="n1")
    assert wait_until(lambda: b.get_queue_stats()["processing"] == 1)  # b's own view
    clock.t += 31
    assert b.return_expired_leases() == 1
    assert wait_until(lambda: (a.get(rid) or {}).get("status") == "pending")
    [doc] = b.dequeue(1, server="n2")
    assert doc["claimed_by"] == b.owner
    assert not a.update_request_status(rid, "completed")  # no longer its claim
    assert b.update_request_status(rid, "completed")


def test_a_job_admitted_by_another_proxy_is_found_before_the_change_feed_brings_it(
        proxies, pg_dsn):
    """Behind a load balancer a client submits through one proxy and asks the other at
    once: the other reads the row itself rather than answer "not found" until its change
    feed catches up. Here B's feed brings nothing at all."""
    a, _ = proxies()
    b_store = PostgresStore(pg_dsn, max_size=5)
    b_store.watch = lambda table, callback: None  # type: ignore[method-assign]
    b = QueueManager(b_store, clock=time.time)
    try:
        job = a.enqueue(make_request(kind="job", prompt="hi"))[0]
        got = b.get(job)
        assert got is not None and got["id"] == job and got["status"] == "pending"
        assert b.get("0" * 32) is None  # an id nobody admitted
        other = a.enqueue(make_request(kind="job", prompt="two"))[0]
        assert b.cancel(other)  # through B, which had not heard of it
        assert wait_until(lambda: a.get(other)["status"] == "cancelled")
    finally:
        b.close()
        b_store.close()

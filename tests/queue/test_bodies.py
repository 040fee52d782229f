"""What the queue keeps of request bodies, and for how long (issue 9 item 5).

A sync request's body never reaches the store (journal or snapshot) and is dropped
from RAM when the request finishes; a job's body is stored until the job finishes;
finished sync records are kept up to ``max_finished_sync``; the bodies that pending and
processing requests hold are bounded by ``max_queued_bytes``.
"""

from __future__ import annotations

import pytest

from olol.queue import QueueFullError, QueueManager
from olol.queue.records import TABLE
from olol.store import DatabaseManager
from tests.queue.conftest import make_request

BIG = "x" * 50_000


def test_a_sync_body_stays_out_of_the_store_but_reaches_the_dispatcher(q, db):
    rid, _ = q.enqueue(make_request(prompt=BIG, body_bytes=50_100))
    stored = db.search_one(TABLE, {"id": rid})
    assert "body" not in stored and stored["prompt"] == BIG[:200]
    assert q.get(rid)["body"]["prompt"] == BIG  # readers still see it while it is active
    assert q.peek(1)[0]["body"]["prompt"] == BIG
    (claimed,) = q.dequeue(1)
    assert claimed["body"]["prompt"] == BIG
    q.requeue(rid)  # a retry needs the body again
    (claimed,) = q.dequeue(1)
    assert claimed["body"]["prompt"] == BIG
    assert q.update_request_status(rid, "completed")
    assert "body" not in q.get(rid)  # finished: nothing can need it
    assert q._s.entries[rid].body is None


def test_a_sync_body_never_reaches_the_journal_or_the_snapshot(tmp_path, clock):
    data = tmp_path / "data"
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        rid, _ = q.enqueue(make_request(prompt=BIG))
        q.dequeue(1)
        q.update_request_status(rid, "completed")
        q.enqueue(make_request(kind="job"))  # waits for a sync that covers the lines before
        assert not any(BIG.encode() in p.read_bytes() for p in data.iterdir() if p.is_file())
        db.checkpoint()
        assert not any(BIG.encode() in p.read_bytes() for p in data.iterdir() if p.is_file())


def test_a_job_body_is_durable_until_the_job_finishes(tmp_path, clock):
    data = tmp_path / "data"
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        rid, _ = q.enqueue(make_request(kind="job", prompt=BIG))
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        q.recover()
        (claimed,) = q.dequeue(1)
        assert claimed["body"]["prompt"] == BIG  # survived the restart
        q.update_request_status(rid, "completed", {"response": "ok"})
        assert q.get(rid)["body"] is None and q.get(rid)["result"] == {"response": "ok"}
        db.checkpoint()
        assert not any(BIG.encode() in p.read_bytes() for p in data.iterdir() if p.is_file())


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled", "interrupted"])
def test_finished_sync_records_are_kept_up_to_the_bound(make_queue, db, outcome):
    q = make_queue(max_finished_sync=20)
    job, _ = q.enqueue(make_request(kind="job"))
    ids = []
    for _ in range(200):
        rid, _ = q.enqueue(make_request(prompt="p"))
        q.dequeue(ids=[rid])
        assert q.update_request_status(rid, outcome)
        ids.append(rid)
    kept = [d["id"] for d in db.all(TABLE) if d["kind"] == "sync"]
    assert 20 <= len(kept) <= 20 + 50  # trimmed in batches, never below the bound
    assert set(kept) == set(ids[-len(kept):])  # the newest are the ones kept
    assert q.get(ids[0]) is None and q.get(ids[-1])["status"] == outcome
    assert q.get(job)["status"] == "pending"  # jobs are not history: never trimmed
    assert len(q._s.entries) == len(kept) + 1  # RAM follows the store


def test_finished_sync_records_kept_across_a_restart_stay_bounded(tmp_path, clock):
    data = tmp_path / "data"
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock, max_finished_sync=1_000)
        for _ in range(100):
            rid, _ = q.enqueue(make_request())
            q.dequeue(ids=[rid])
            q.update_request_status(rid, "completed")
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock, max_finished_sync=10)
        for _ in range(60):
            rid, _ = q.enqueue(make_request())
            q.dequeue(ids=[rid])
            q.update_request_status(rid, "completed")
        assert db.count(TABLE) <= 10 + 50
        assert q.get(rid)["status"] == "completed"


def test_the_bodies_held_by_active_requests_are_bounded(make_queue):
    q = make_queue(max_queued_bytes=1_000_000)
    a, _ = q.enqueue(make_request(body_bytes=600_000))
    with pytest.raises(QueueFullError, match="bytes of bodies"):
        q.enqueue(make_request(body_bytes=500_000))
    small, _ = q.enqueue(make_request(body_bytes=300_000))  # what fits still gets in
    q.dequeue(ids=[a])
    q.update_request_status(a, "completed")  # finishing releases its share
    q.enqueue(make_request(body_bytes=600_000))
    # one request larger than the bound alone is admitted when nothing else is held
    with DatabaseManager.memory() as db2:
        QueueManager(db2, max_queued_bytes=1_000).enqueue(make_request(body_bytes=5_000))
    assert small


def test_body_bytes_must_be_a_size(q):
    with pytest.raises(ValueError, match="body_bytes"):
        q.enqueue(make_request(body_bytes=-1))


def test_finish_listeners_hear_each_finish_once_without_the_body(make_queue):
    q = make_queue()
    heard: list[dict] = []
    q.add_finish_listener(heard.append)
    q.add_finish_listener(lambda record: 1 / 0)  # a failing listener harms nobody
    rid, _ = q.enqueue(make_request(prompt=BIG))
    q.dequeue(1)
    assert q.update_request_status(rid, "completed", usage={"eval_count": 7})
    assert not q.update_request_status(rid, "failed")  # final: no second finish
    other, _ = q.enqueue(make_request())
    q.cancel(other)
    assert [(r["id"], r["status"]) for r in heard] == [(rid, "completed"),
                                                       (other, "cancelled")]
    assert "body" not in heard[0] and heard[0]["usage"] == {"eval_count": 7}

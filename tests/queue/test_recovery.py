"""Restart: close the store, reopen it, recover() — sync work interrupted, jobs run again."""

from __future__ import annotations

import pytest

from olol.queue import RESTART_ERROR, QueueManager
from olol.store import DatabaseManager
from tests.queue.conftest import make_request


def _ids(docs):
    return [d["id"] for d in docs]


@pytest.mark.parametrize("clean_close", [True, False])
def test_restart_interrupts_sync_and_requeues_jobs(tmp_path, clock, clean_close):
    data = tmp_path / "data"
    db = DatabaseManager(data, clock=clock, background_checkpoints=False)
    q = QueueManager(db, clock=clock)
    sync_pending, _ = q.enqueue(make_request(kind="sync", prompt="sp"))
    sync_running, _ = q.enqueue(make_request(kind="sync", prompt="sr"))
    job_pending, _ = q.enqueue(make_request(kind="job", prompt="jp", priority=1))
    job_running, _ = q.enqueue(make_request(kind="job", prompt="jr", priority=1))
    job_done, _ = q.enqueue(make_request(kind="job", prompt="jd", priority=1))
    q.dequeue(ids=[sync_running, job_running, job_done], server="n1")
    q.update_request_status(job_done, "completed", {"response": "ok"})
    last_seq = q.get(job_done)["seq"]
    # A clean close checkpoints; an unclean one leaves only the journal to replay.
    db.close(checkpoint=clean_close)

    clock.advance(60)
    db2 = DatabaseManager(data, clock=clock, background_checkpoints=False)
    try:
        q2 = QueueManager(db2, clock=clock)
        counts = q2.recover()
        assert counts == {"interrupted": 2, "requeued": 1, "failed": 0, "pending": 2, "total": 5}
        for rid in (sync_pending, sync_running):
            rec = q2.get(rid)
            assert rec["status"] == "interrupted"
            assert rec["error"] == RESTART_ERROR
            assert rec["completed_ts"] == clock()
        running = q2.get(job_running)
        assert running["status"] == "pending"
        assert running["attempts"] == 1
        assert running["server_assigned"] is None and running["lease_until"] is None
        assert q2.get(job_done)["result"] == {"response": "ok"}
        # Both jobs are claimable again, in their original order; nothing else is.
        got = q2.dequeue(10)
        assert _ids(got) == [job_pending, job_running]
        assert [d["attempts"] for d in got] == [1, 2]
        # seq keeps growing after a restart.
        new_id, _ = q2.enqueue(make_request())
        assert q2.get(new_id)["seq"] > last_seq
        stats = q2.get_queue_stats()
        assert stats["by_status"]["interrupted"] == 2
        assert stats["depth"] == 3
        # Another restart now: the two claimed jobs run again, the new sync request dies.
        assert q2.recover() == {"interrupted": 1, "requeued": 2, "failed": 0, "pending": 2, "total": 6}
    finally:
        db2.close()


def test_recover_is_durable(tmp_path, clock):
    data = tmp_path / "data"
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        rid, _ = q.enqueue(make_request(kind="sync"))
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        assert QueueManager(db, clock=clock).recover()["interrupted"] == 1
        db.close(checkpoint=False)
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        assert q.get(rid)["status"] == "interrupted"
        assert q.recover()["interrupted"] == 0


def test_seq_stays_monotonic_after_cleanup_and_restart(tmp_path, clock):
    data = tmp_path / "data"
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        rid, _ = q.enqueue(make_request())
        q.update_request_status(rid, "failed", error="x")
        old_seq = q.get(rid)["seq"]
        clock.advance(48 * 3600)
        assert q.clean_old_requests() == 1
    with DatabaseManager(data, clock=clock, background_checkpoints=False) as db:
        q = QueueManager(db, clock=clock)
        new_id, _ = q.enqueue(make_request())
        assert q.get(new_id)["seq"] > old_seq


def test_recover_on_any_store(db, clock):
    """recover() also works on a live store (memory or durable) without reopening."""
    q = QueueManager(db, clock=clock)
    s, _ = q.enqueue(make_request(kind="sync"))
    j, _ = q.enqueue(make_request(kind="job"))
    q.dequeue(ids=[j])
    fresh = QueueManager(db, clock=clock)
    assert fresh.recover() == {"interrupted": 1, "requeued": 1, "failed": 0, "pending": 1, "total": 2}
    assert fresh.get(s)["status"] == "interrupted"
    assert _ids(fresh.peek()) == [j]


def test_constructor_rejects_bad_settings(db):
    for kw in ({"max_depth": 0}, {"lease_s": -1}, {"ageing_s": "x"}, {"max_depth_per_model": True}):
        with pytest.raises(ValueError, match="must be a positive number"):
            QueueManager(db, **kw)

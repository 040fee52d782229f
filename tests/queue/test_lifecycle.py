"""Admission checks and bounds, requeue with backoff, cancel, finishing, cleanup, leases."""

from __future__ import annotations

import pytest

from olol.queue import LEASE_ERROR, QueueFullError
from tests.queue.conftest import make_request


def _ids(docs):
    return [d["id"] for d in docs]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "pull"}, "'endpoint' must be one of"),
        ({"endpoint": None}, "'endpoint' must be one of"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"model": 3}, "'model' must be a non-empty string"),
        ({"body": "text"}, "'body' must be a dict"),
        ({"body": None}, "'body' must be a dict"),
        ({"kind": "batch"}, "'kind' must be 'sync' or 'job'"),
        ({"api": "grpc"}, "'api' must be one of ollama, openai, anthropic, responses"),
        ({"priority": "high"}, "'priority' must be an integer"),
        ({"priority": True}, "'priority' must be an integer"),
        ({"priority": 10**9}, "'priority' must be within"),
        ({"stream": "yes"}, "'stream' must be a boolean"),
        ({"id": ""}, "'id' must be a non-empty string"),
        ({"session": 5}, "'session' must be a string or null"),
    ],
)
def test_bad_records_are_refused_clearly(q, db, change, message):
    req = make_request()
    req.update(change)
    with pytest.raises(ValueError, match=message):
        q.enqueue(req)
    assert db.count("inference_queue") == 0
    assert q.get_queue_stats()["depth"] == 0


def test_non_mapping_request(q):
    with pytest.raises(ValueError, match="must be a mapping"):
        q.enqueue(["generate"])


def test_non_json_body_is_refused_and_releases_capacity(make_queue):
    # A job's body goes to the store, which refuses what JSON cannot hold (a sync
    # request's body stays in RAM: the front door only ever hands over parsed JSON).
    q = make_queue(max_depth=1)
    with pytest.raises(ValueError, match="not a JSON value"):
        q.enqueue(make_request(kind="job", body={"model": "x", "prompt": object()}))
    q.enqueue(make_request())  # the failed admission did not keep the only slot


def test_managed_fields_cannot_be_forged(q):
    rid, _ = q.enqueue(make_request(status="completed", attempts=9, result={"x": 1}))
    rec = q.get(rid)
    assert (rec["status"], rec["attempts"], rec["result"]) == ("pending", 0, None)


def test_long_prompt_preview_is_truncated(q):
    rid, _ = q.enqueue(make_request(prompt="x" * 1000))
    rec = q.get(rid)
    assert len(rec["prompt"]) == 200
    assert len(rec["body"]["prompt"]) == 1000


def test_total_bound(make_queue):
    q = make_queue(max_depth=3)
    for _ in range(3):
        q.enqueue(make_request())
    with pytest.raises(QueueFullError) as info:
        q.enqueue(make_request(model="qwen2:0.5b"))
    assert 1 <= info.value.retry_after_s <= 60
    assert "the queue is full" in info.value.reason
    # Processing work still counts; finished work frees the slot.
    [doc] = q.dequeue(1)
    with pytest.raises(QueueFullError):
        q.enqueue(make_request())
    assert q.update_request_status(doc["id"], "completed")
    q.enqueue(make_request())


def test_per_model_bound(make_queue):
    q = make_queue(max_depth_per_model=2)
    q.enqueue(make_request(model="llama3.2:1b"))
    q.enqueue(make_request(model="llama3.2:1b"))
    with pytest.raises(QueueFullError) as info:
        q.enqueue(make_request(model="llama3.2:1b"))
    assert "llama3.2:1b" in info.value.reason
    q.enqueue(make_request(model="qwen2:0.5b"))  # other models are not affected


def test_retry_after_follows_recent_throughput(make_queue, clock):
    q = make_queue(max_depth=2)
    # Nothing has ever finished: nothing is draining, so the maximum.
    q.enqueue(make_request())
    q.enqueue(make_request())
    with pytest.raises(QueueFullError) as info:
        q.enqueue(make_request())
    assert info.value.retry_after_s == 60
    # Two finishes within 20 s: about one slot per 10 s.
    for _ in range(2):
        [doc] = q.dequeue(1)
        clock.advance(10.0)
        q.update_request_status(doc["id"], "completed")
        q.enqueue(make_request())
    with pytest.raises(QueueFullError) as info:
        q.enqueue(make_request())
    assert info.value.retry_after_s == 10
    # Many fast finishes: bounded below by 1 s.
    q2_ids = []
    for _ in range(50):
        [doc] = q.dequeue(1)
        clock.advance(0.1)
        q.update_request_status(doc["id"], "completed")
        q2_ids.append(q.enqueue(make_request())[0])
    with pytest.raises(QueueFullError) as info:
        q.enqueue(make_request())
    assert info.value.retry_after_s == 1


def test_requeue_with_backoff(q, clock):
    rid, _ = q.enqueue(make_request())
    [doc] = q.dequeue(1, server="a")
    assert q.requeue(rid, delay_s=5.0, reason="node a failed")
    rec = q.get(rid)
    assert rec["status"] == "pending"
    assert rec["attempts"] == 1
    assert rec["seq"] == doc["seq"]
    assert rec["not_before"] == clock() + 5.0
    assert rec["server_assigned"] is None and rec["lease_until"] is None
    assert rec["error"] == "node a failed"
    assert q.dequeue(1) == []
    assert q.peek() == []
    assert q.dequeue(ids=[rid]) == []
    assert q.get_queue_stats()["delayed"] == 1
    clock.advance(4.9)
    assert q.dequeue(1) == []
    clock.advance(0.1)
    [again] = q.dequeue(1, server="b")
    assert again["id"] == rid
    assert again["attempts"] == 2
    assert again["not_before"] is None


def test_requeue_keeps_its_place(q):
    first, _ = q.enqueue(make_request(prompt="first"))
    second, _ = q.enqueue(make_request(prompt="second"))
    q.dequeue(ids=[first])
    assert q.requeue(first)
    assert _ids(q.peek()) == [first, second]


def test_requeue_only_from_processing(q):
    rid, _ = q.enqueue(make_request())
    assert not q.requeue(rid)
    assert not q.requeue("nope")
    with pytest.raises(ValueError, match="delay_s"):
        q.requeue(rid, delay_s=-1)


def test_cancel_pending_and_processing(q, clock):
    a, _ = q.enqueue(make_request(prompt="a"))
    b, _ = q.enqueue(make_request(prompt="b"))
    assert q.cancel(a)
    assert q.get(a)["status"] == "cancelled"
    assert q.get(a)["completed_ts"] == clock()
    assert q.is_cancelled(a)
    assert _ids(q.peek()) == [b]
    [doc] = q.dequeue(1)
    assert doc["id"] == b
    assert not q.is_cancelled(b)
    assert q.cancel(b)
    assert q.is_cancelled(b)
    # Finished records stay as they are.
    assert not q.cancel(a)
    assert not q.update_request_status(b, "completed")
    assert q.get(b)["status"] == "cancelled"
    assert not q.cancel("unknown")


def test_finish_sync_and_job(q, clock):
    sync_id, _ = q.enqueue(make_request(kind="sync"))
    job_id, _ = q.enqueue(make_request(kind="job"))
    q.dequeue(2)
    clock.advance(3.0)
    answer = {"model": "llama3.2:1b", "response": "hello", "done": True}
    assert q.update_request_status(sync_id, "completed", answer, server="n1")
    assert q.update_request_status(job_id, "completed", answer)
    sync_rec, job_rec = q.get(sync_id), q.get(job_id)
    assert sync_rec["status"] == job_rec["status"] == "completed"
    assert sync_rec["result"] is None  # sync callers got their answer on the wire
    assert sync_rec["server_assigned"] == "n1"
    assert job_rec["result"] == answer
    assert job_rec["completed_ts"] == clock()
    assert job_rec["completed_at"].startswith("2023-11-14T22:13:23")
    assert job_rec["lease_until"] is None


def test_failed_keeps_error(q):
    rid, _ = q.enqueue(make_request())
    q.dequeue(1)
    assert q.update_request_status(rid, "failed", error="model 'x' not found", error_status=404)
    rec = q.get(rid)
    assert (rec["status"], rec["error"], rec["error_status"]) == (
        "failed", "model 'x' not found", 404)


def test_pending_request_can_fail_directly(q):
    rid, _ = q.enqueue(make_request())
    assert q.update_request_status(rid, "failed", error="no node has the model")
    assert q.peek() == []


def test_update_status_rejects_non_final_states(q):
    rid, _ = q.enqueue(make_request())
    for status in ("pending", "processing", "done"):
        with pytest.raises(ValueError, match="status must be one of"):
            q.update_request_status(rid, status)
    with pytest.raises(ValueError, match="result must be a dict"):
        q.update_request_status(rid, "completed", ["x"])
    assert not q.update_request_status("unknown", "completed")


def test_list_jobs(q):
    j1, _ = q.enqueue(make_request(kind="job"))
    q.enqueue(make_request(kind="sync"))
    j2, _ = q.enqueue(make_request(kind="job"))
    q.dequeue(ids=[j1])
    assert _ids(q.list_jobs()) == [j2, j1]
    assert _ids(q.list_jobs(status="processing")) == [j1]
    assert _ids(q.list_jobs(limit=1)) == [j2]
    assert len(q.list_jobs(kind=None)) == 3
    with pytest.raises(ValueError):
        q.list_jobs(status="done")


def test_clean_old_requests_keeps_active_work(q, db, clock):
    done, _ = q.enqueue(make_request(prompt="done"))
    failed, _ = q.enqueue(make_request(prompt="failed"))
    pending, _ = q.enqueue(make_request(prompt="pending"))
    running, _ = q.enqueue(make_request(prompt="running"))
    q.dequeue(ids=[done, failed, running])
    q.update_request_status(done, "completed")
    q.update_request_status(failed, "failed", error="x")
    clock.advance(2 * 3600)
    recent, _ = q.enqueue(make_request(prompt="recent"))
    q.dequeue(ids=[recent])
    q.update_request_status(recent, "completed")
    clock.advance(30 * 3600)  # everything is now old
    assert q.clean_old_requests(max_age_hours=31) == 2
    assert q.get(done) is None and q.get(failed) is None
    assert q.get(recent)["status"] == "completed"
    assert q.clean_old_requests() == 1  # default retention: 24 h
    assert {d["id"] for d in db.all("inference_queue")} == {pending, running}
    assert q.get(pending)["status"] == "pending"
    assert q.get_queue_stats()["by_status"]["completed"] == 0
    assert q.clean_old_requests(max_age_hours=0) == 0


def test_expired_leases(make_queue, clock):
    q = make_queue(lease_s=30.0)
    sync_id, _ = q.enqueue(make_request(kind="sync"))
    job_id, _ = q.enqueue(make_request(kind="job"))
    fresh_id, _ = q.enqueue(make_request(kind="job"))
    q.dequeue(ids=[sync_id, job_id])
    clock.advance(20.0)
    q.dequeue(ids=[fresh_id])
    assert q.return_expired_leases() == 0
    clock.advance(10.0)
    assert q.return_expired_leases() == 2
    assert q.get(sync_id)["status"] == "interrupted"
    assert q.get(sync_id)["error"] == LEASE_ERROR
    job = q.get(job_id)
    assert (job["status"], job["attempts"]) == ("pending", 1)
    assert q.get(fresh_id)["status"] == "processing"
    assert _ids(q.dequeue(5)) == [job_id]


def test_extend_lease(make_queue, clock):
    q = make_queue(lease_s=30.0)
    rid, _ = q.enqueue(make_request(kind="job"))
    q.dequeue(1)
    clock.advance(25.0)
    assert q.extend_lease(rid)
    assert q.get(rid)["lease_until"] == clock() + 30.0
    clock.advance(25.0)
    assert q.return_expired_leases() == 0
    assert not q.extend_lease("unknown")


def test_store_failure_leaves_the_queue_consistent(q, db):
    from olol.store import StoreClosedError

    rid, _ = q.enqueue(make_request())
    db.close()
    with pytest.raises(StoreClosedError):
        q.dequeue(1)
    # The claim was rolled back: the request is claimable again, nothing half-done.
    assert _ids(q.peek()) == [rid]
    assert q.get_queue_stats()["processing"] == 0
    with pytest.raises(StoreClosedError):
        q.enqueue(make_request())
    assert q.depth() == 1  # the failed admission holds no slot


def test_cancel_listeners_hear_every_successful_cancel(q):
    heard = []
    q.add_cancel_listener(heard.append)
    q.add_cancel_listener(lambda rid: 1 / 0)  # a failing listener does not undo it
    rid, _ = q.enqueue(make_request())
    assert q.cancel(rid) is True
    assert q.cancel(rid) is False  # already finished: nobody is told twice
    assert heard == [rid] and q.is_cancelled(rid)

"""Dispatch order: priority, FIFO, ageing, model filter, positions, peek, claim by id."""

from __future__ import annotations

import pytest

from tests.queue.conftest import make_request


def _ids(docs):
    return [d["id"] for d in docs]


def test_enqueue_is_stored_with_managed_fields(q, db, clock):
    rid, pos = q.enqueue(make_request(prompt="hello"))
    assert pos == 1
    rec = q.get(rid)
    assert rec["status"] == "pending"
    assert rec["attempts"] == 0
    assert rec["enqueued_ts"] == clock()
    assert rec["model_key"] == "llama3.2:1b"
    assert rec["body"]["prompt"] == "hello"
    assert rec["seq"] >= 1
    # The record is in the store itself, not only in RAM.
    assert db.search_one("inference_queue", {"id": rid})["status"] == "pending"


def test_caller_id_is_kept_and_duplicates_refused(q):
    rid, _ = q.enqueue(make_request(id="req-1"))
    assert rid == "req-1"
    with pytest.raises(ValueError, match="already in the queue"):
        q.enqueue(make_request(id="req-1"))


def test_priority_then_fifo(q):
    low1, _ = q.enqueue(make_request(prompt="a", priority=0))
    high1, _ = q.enqueue(make_request(prompt="b", priority=5))
    low2, _ = q.enqueue(make_request(prompt="c", priority=0))
    high2, _ = q.enqueue(make_request(prompt="d", priority=5))
    mid, _ = q.enqueue(make_request(prompt="e", priority=2))
    assert _ids(q.peek()) == [high1, high2, mid, low1, low2]
    assert _ids(q.dequeue(2)) == [high1, high2]
    assert _ids(q.dequeue(10)) == [mid, low1, low2]
    assert q.dequeue(1) == []


def test_positions_at_admission(q):
    assert q.enqueue(make_request(priority=0))[1] == 1
    assert q.enqueue(make_request(priority=0))[1] == 2
    # A higher priority goes ahead of both.
    assert q.enqueue(make_request(priority=3))[1] == 1
    # Another model still counts: positions are over all models.
    assert q.enqueue(make_request(model="qwen2:0.5b", priority=0))[1] == 4
    q.dequeue(2)
    assert q.enqueue(make_request(priority=0))[1] == 3


def test_ageing_lets_low_priority_overtake(make_queue, clock):
    q = make_queue(ageing_s=10.0)
    old_low, _ = q.enqueue(make_request(prompt="old", priority=0))
    clock.advance(15.0)  # old_low gained 1.5 levels: effective 1.5
    new_high, _ = q.enqueue(make_request(prompt="new", priority=1))
    assert _ids(q.peek()) == [old_low, new_high]
    clock.advance(1.0)
    newer_high, _ = q.enqueue(make_request(prompt="newer", priority=2))  # 2 > 1.6
    assert _ids(q.dequeue(3)) == [newer_high, old_low, new_high]


def test_without_enough_age_priority_wins(make_queue, clock):
    q = make_queue(ageing_s=10.0)
    low, _ = q.enqueue(make_request(priority=0))
    clock.advance(5.0)
    high, _ = q.enqueue(make_request(priority=1))
    assert _ids(q.peek()) == [high, low]


def test_model_filter(q):
    a1, _ = q.enqueue(make_request(model="llama3.2:1b"))
    b1, _ = q.enqueue(make_request(model="qwen2:0.5b"))
    a2, _ = q.enqueue(make_request(model="llama3.2:1b"))
    assert _ids(q.peek(model="qwen2:0.5b")) == [b1]
    # Names are normalized: "Qwen2:0.5b" is the same model.
    got = q.dequeue(5, model="Qwen2:0.5b")
    assert _ids(got) == [b1]
    assert _ids(q.dequeue(5, model="llama3.2:1b")) == [a1, a2]
    assert q.dequeue(5, model="nomodel") == []


def test_model_key_defaults_to_normalized_name(q):
    req = make_request(model="Llama3")
    del req["model_key"]
    rid, _ = q.enqueue(req)
    assert q.get(rid)["model_key"] == "llama3:latest"
    assert _ids(q.dequeue(1, model="llama3:latest")) == [rid]


def test_dequeue_marks_processing(q, clock):
    rid, _ = q.enqueue(make_request())
    clock.advance(2.0)
    [doc] = q.dequeue(1, server="node-a:50051", batch_id="b1")
    assert doc["id"] == rid
    stored = q.get(rid)
    for rec in (doc, stored):
        assert rec["status"] == "processing"
        assert rec["attempts"] == 1
        assert rec["server_assigned"] == "node-a:50051"
        assert rec["batch_id"] == "b1"
        assert rec["started_ts"] == clock()
        assert rec["lease_until"] == clock() + q.lease_s
        assert rec["started_at"].startswith("2023-11-14T22:13:")


def test_one_dequeue_shares_a_generated_batch_id(q):
    for _ in range(3):
        q.enqueue(make_request())
    docs = q.dequeue(3)
    assert len({d["batch_id"] for d in docs}) == 1
    assert docs[0]["batch_id"]


def test_dequeue_by_ids_claims_exactly_those(q):
    ids = [q.enqueue(make_request(prompt=str(i)))[0] for i in range(4)]
    got = q.dequeue(ids=[ids[2], ids[0], "unknown"])
    assert _ids(got) == [ids[2], ids[0]]
    # Already claimed: not claimable again.
    assert q.dequeue(ids=[ids[2]]) == []
    assert _ids(q.peek()) == [ids[1], ids[3]]


def test_dequeue_by_ids_respects_model_filter(q):
    a, _ = q.enqueue(make_request(model="llama3.2:1b"))
    b, _ = q.enqueue(make_request(model="qwen2:0.5b"))
    assert _ids(q.dequeue(ids=[a, b], model="qwen2:0.5b")) == [b]


def test_peek_does_not_claim(q):
    rid, _ = q.enqueue(make_request())
    assert _ids(q.peek()) == [rid]
    assert _ids(q.peek()) == [rid]
    assert q.get(rid)["status"] == "pending"
    assert _ids(q.peek(limit=1)) == [rid]


@pytest.mark.parametrize("bad", [0, -1, 1_001, "2", True])
def test_dequeue_rejects_bad_batch_size(q, bad):
    with pytest.raises(ValueError, match="batch_size"):
        q.dequeue(bad)

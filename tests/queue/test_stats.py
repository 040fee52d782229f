"""get_queue_stats: depths, wait and run percentiles, throughput (fake clock)."""

from __future__ import annotations

import orjson
import pytest

from olol.queue.stats import percentile
from tests.queue.conftest import make_request


def test_empty_stats(q):
    s = q.get_queue_stats()
    assert s["depth"] == 0
    assert s["by_model"] == {} and s["by_priority"] == {}
    assert s["wait_time_s"] == {"count": 0, "p50": None, "p95": None}
    assert s["throughput_per_min"] == 0
    assert s["oldest_pending_age_s"] is None


def test_depth_by_model_priority_and_status(q, clock):
    a = [q.enqueue(make_request(model="llama3.2:1b", priority=p))[0] for p in (0, 0, 2)]
    q.enqueue(make_request(model="qwen2:0.5b", priority=1))
    q.dequeue(ids=[a[2]])
    clock.advance(7.0)
    q.dequeue(ids=[a[0]])
    q.update_request_status(a[0], "failed", error="x")
    s = q.get_queue_stats()
    assert s["depth"] == 3
    assert (s["pending"], s["processing"]) == (2, 1)
    assert s["by_status"] == {"pending": 2, "processing": 1, "completed": 0, "failed": 1,
                              "interrupted": 0, "cancelled": 0}
    assert s["by_model"] == {"llama3.2:1b": {"pending": 1, "processing": 1},
                             "qwen2:0.5b": {"pending": 1, "processing": 0}}
    assert s["by_priority"] == {"2": {"pending": 0, "processing": 1},
                                "1": {"pending": 1, "processing": 0},
                                "0": {"pending": 1, "processing": 0}}
    assert list(s["by_priority"]) == ["2", "1", "0"]
    orjson.dumps(s)  # served as is by the admin API: must be plain JSON
    assert s["oldest_pending_age_s"] == 7.0


def test_wait_and_run_percentiles_and_throughput(q, clock):
    # 20 requests: request i waits i seconds in the queue and runs 2*i seconds.
    for i in range(1, 21):
        rid, _ = q.enqueue(make_request(prompt=str(i)))
        clock.advance(i)
        q.dequeue(ids=[rid])
        clock.advance(2 * i)
        q.update_request_status(rid, "completed")
    s = q.get_queue_stats()
    assert s["wait_time_s"] == {"count": 20, "p50": 10, "p95": 19}
    assert s["run_time_s"] == {"count": 20, "p50": 20, "p95": 38}
    # Completions in the last 5 minutes: request i finished at 3*(sum_{j>i} j) ago.
    now = clock()
    finished_at, t = [], now
    for i in range(20, 0, -1):
        finished_at.append(t)
        t -= 3 * i
    recent = sum(1 for ts in finished_at if ts >= now - 300)
    assert s["completed_last_5m"] == recent
    assert s["throughput_per_min"] == pytest.approx(recent / 5)
    clock.advance(301)
    assert q.get_queue_stats()["throughput_per_min"] == 0


def test_failures_do_not_count_as_completions(q, clock):
    rid, _ = q.enqueue(make_request())
    q.dequeue(1)
    clock.advance(1)
    q.update_request_status(rid, "failed", error="boom")
    s = q.get_queue_stats()
    assert s["run_time_s"]["count"] == 0
    assert s["completed_last_5m"] == 0


def test_stats_survive_rebuild(db, make_queue, clock):
    q = make_queue()
    rid, _ = q.enqueue(make_request())
    clock.advance(3)
    q.dequeue(1)
    clock.advance(5)
    q.update_request_status(rid, "completed")
    again = make_queue()
    s = again.get_queue_stats()
    assert s["wait_time_s"]["p50"] == 3 and s["run_time_s"]["p50"] == 5
    assert s["by_status"]["completed"] == 1


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    assert percentile([3, 1, 2, 4], 50) == 2
    assert percentile(list(range(1, 101)), 95) == 95

"""The dashboard's in-RAM traffic: per-minute ring, latest requests, sessions."""

from __future__ import annotations

import pytest

from olol.traffic import TrafficRecorder
from olol.ui.format import size, spark
from olol.ui.sessions import SessionStore, same_token
from tests.support import FakeClock


def finished(clock, *, status="completed", ttft=0.2, tokens=20, eval_s=0.5, node="n1:1"):
    now = clock()
    usage = {"node": node, "completion_tokens": tokens, "eval_s": eval_s}
    if ttft is not None:
        usage["first_token_ts"] = now - 1.0 + ttft
    return {"id": f"r{now}", "model": "m:1", "status": status, "enqueued_ts": now - 1.0,
            "started_ts": now - 0.9, "completed_ts": now, "usage": usage,
            "api": "ollama", "endpoint": "chat", "kind": "sync"}


def test_a_minute_sums_its_requests_and_averages_ttft_and_speed():
    clock = FakeClock(1_700_000_080.0)  # 40 s into a minute
    t = TrafficRecorder(clock=clock)
    t.request_finished(finished(clock, ttft=0.1, tokens=10, eval_s=1.0))
    t.request_finished(finished(clock, ttft=0.3, tokens=30, eval_s=1.0))
    t.request_finished(finished(clock, status="failed", ttft=None, tokens=0))
    t.admitted()
    t.rejected()
    series = t.series()
    assert len(series) == 60
    now = series[-1]
    assert now["requests"] == 3 and now["failed"] == 1
    assert now["ttft_ms"] == pytest.approx(200.0)
    assert now["tokens_per_s"] == pytest.approx(20.0)
    assert (now["admitted"], now["rejected"]) == (1, 1)
    assert now["rps"] == pytest.approx(3 / 40, abs=1e-3)  # the partial minute's rate
    assert all(p["requests"] == 0 and p["ttft_ms"] is None for p in series[:-1])


def test_the_ring_forgets_minutes_older_than_an_hour():
    clock = FakeClock(1_700_000_000.0)
    t = TrafficRecorder(clock=clock, minutes=60)
    t.request_finished(finished(clock))
    clock.advance(30 * 60)
    t.request_finished(finished(clock))
    assert sum(p["requests"] for p in t.series()) == 2
    clock.advance(31 * 60)  # the first minute is now 61 minutes old; its slot is reused
    t.request_finished(finished(clock))
    series = t.series()
    assert sum(p["requests"] for p in series) == 2
    assert series[0]["minute_ts"] == (int(clock() // 60) - 59) * 60


def test_latest_requests_are_bounded_and_newest_first():
    clock = FakeClock()
    t = TrafficRecorder(clock=clock, latest=5)
    for _ in range(12):
        clock.advance(1)
        t.request_finished(finished(clock))
    rows = t.latest()
    assert len(rows) == 5
    assert rows[0]["finished_ts"] == clock() and rows[-1]["finished_ts"] == clock() - 4
    row = rows[0]
    assert row["model"] == "m:1" and row["node"] == "n1:1" and row["status"] == "completed"
    assert row["ttft_ms"] == pytest.approx(200.0) and row["tokens_per_s"] == pytest.approx(40.0)
    assert row["queue_ms"] == pytest.approx(100.0) and row["duration_ms"] == pytest.approx(1000.0)


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        TrafficRecorder(minutes=0)


def test_sessions_expire_and_are_bounded():
    clock = FakeClock()
    store = SessionStore(clock=clock, ttl_s=60, max_sessions=3)
    token, session = store.create("key_1", "alice")
    assert store.get(token) == session and store.get(token + "x") is None
    assert store.get(None) is None and store.get("x" * 500) is None
    clock.advance(61)
    assert store.get(token) is None and len(store) == 0
    tokens = [store.create(f"key_{i}", "a")[0] for i in range(5)]
    assert len(store) == 3
    assert store.get(tokens[0]) is None and store.get(tokens[-1]) is not None
    assert store.end(tokens[-1]) and store.get(tokens[-1]) is None and not store.end(tokens[-1])


def test_csrf_comparison():
    assert same_token("abc", "abc")
    assert not same_token("abd", "abc") and not same_token(None, "abc") and not same_token("", "")


def test_formatting_helpers():
    assert size(None) == "–" and size(512) == "512 B" and size(1_500_000_000) == "1.5 GB"
    chart = spark([{"v": 0}, {"v": None}, {"v": 10}], "v")
    assert chart["max"] == 10 and chart["last"] == 10
    assert chart["line"].split()[0] == "0.0,58.0" and chart["line"].split()[-1] == "300.0,2.0"
    assert spark([], "v")["last"] is None

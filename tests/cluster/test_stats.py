"""RequestStats: RAM counters rolled up into hourly and daily request_stats rows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from olol.stats import RequestStats
from olol.store import DatabaseManager
from tests.cluster.conftest import FakeClock

# 2024-03-10 23:30:00 UTC: half an hour before both an hour and a day boundary.
START = datetime(2024, 3, 10, 23, 30, tzinfo=UTC).timestamp()


def rows(db, period):
    return {r["timestamp"][:19]: r for r in db.search("request_stats", {"period": period})}


@pytest.fixture
def clk():
    return FakeClock(START)


def test_roll_up_upserts_one_row_per_period(db, clk):
    stats = RequestStats(db, clock=clk)
    stats.record("generate", 100.0, True)
    stats.record("chat", 300.0, True)
    assert stats.roll_up() == 3  # hourly, daily, weekly
    stats.record("embed", 20.0, True)
    stats.record("embeddings", 40.0, False)
    assert stats.roll_up() == 3
    assert stats.roll_up() == 0  # nothing new: nothing written

    hourly = rows(db, "hourly")
    assert list(hourly) == ["2024-03-10T23:00:00"]
    h = hourly["2024-03-10T23:00:00"]
    assert (h["total_requests"], h["generate_requests"], h["chat_requests"],
            h["embedding_requests"], h["failed_requests"]) == (4, 1, 1, 2, 1)
    assert h["average_latency_ms"] == pytest.approx(115.0)
    daily = rows(db, "daily")
    assert list(daily) == ["2024-03-10T00:00:00"]
    assert daily["2024-03-10T00:00:00"]["total_requests"] == 4
    weekly = rows(db, "weekly")
    assert list(weekly) == ["2024-03-04T00:00:00"]  # the ISO week starts on Monday
    assert weekly["2024-03-04T00:00:00"]["total_requests"] == 4


def test_requests_are_credited_to_the_period_they_finished_in(db, clk):
    stats = RequestStats(db, clock=clk)
    stats.record("generate", 10.0, True)         # 23:30 on the 10th
    clk.advance(45 * 60)                         # 00:15 on the 11th
    stats.record("generate", 30.0, True)
    stats.record("chat", 50.0, False)
    # a roll-up after the boundary still splits correctly (Sunday -> Monday: a new week)
    assert stats.roll_up() == 6

    hourly = rows(db, "hourly")
    assert hourly["2024-03-10T23:00:00"]["total_requests"] == 1
    assert hourly["2024-03-11T00:00:00"]["total_requests"] == 2
    assert hourly["2024-03-11T00:00:00"]["average_latency_ms"] == pytest.approx(40.0)
    daily = rows(db, "daily")
    assert daily["2024-03-10T00:00:00"]["total_requests"] == 1
    assert daily["2024-03-11T00:00:00"]["total_requests"] == 2
    assert daily["2024-03-11T00:00:00"]["failed_requests"] == 1

    clk.advance(3600)                            # 01:15: a third hour, same day
    stats.record("embed", 60.0, True)
    stats.roll_up()
    assert len(rows(db, "hourly")) == 3
    day = rows(db, "daily")["2024-03-11T00:00:00"]
    assert day["total_requests"] == 3 and day["embedding_requests"] == 1
    assert day["average_latency_ms"] == pytest.approx((30 + 50 + 60) / 3, abs=1e-3)
    history = stats.history("hourly", limit=2)
    assert [r["timestamp"][:13] for r in history] == ["2024-03-11T00", "2024-03-11T01"]


def test_rows_accumulate_across_restarts(tmp_path, clk):
    folder = tmp_path / "data"
    with DatabaseManager(folder, clock=clk) as db:
        stats = RequestStats(db, clock=clk)
        stats.record("generate", 10.0, True)
        stats.roll_up()
    with DatabaseManager(folder, clock=clk) as db:
        stats = RequestStats(db, clock=clk)
        stats.record("generate", 20.0, True)
        stats.roll_up()
        h = rows(db, "hourly")["2024-03-10T23:00:00"]
        assert h["total_requests"] == 2 and h["average_latency_ms"] == pytest.approx(15.0)


def test_a_failed_roll_up_keeps_the_counts(db, clk):
    stats = RequestStats(db, clock=clk)
    stats.record("chat", 10.0, True)
    db.close()
    with pytest.raises(Exception):  # noqa: B017 - any store error
        stats.roll_up()
    assert stats.run_once() == 0  # the job logs instead of raising
    fresh = DatabaseManager.memory(clock=clk)
    stats.db = fresh
    assert stats.roll_up() == 3
    assert rows(fresh, "hourly")["2024-03-10T23:00:00"]["chat_requests"] == 1
    fresh.close()


def test_concurrent_records_are_all_counted(db, clk):
    stats = RequestStats(db, clock=clk)

    def worker():
        for _ in range(500):
            stats.record("generate", 1.0, True)

    threads = [threading.Thread(target=worker, name=f"test-rec-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    stats.roll_up()
    assert rows(db, "hourly")["2024-03-10T23:00:00"]["total_requests"] == 2000
    assert stats.totals()["generate"]["requests"] == 2000


def test_pending_hours_are_bounded(db, clk, monkeypatch):
    import olol.stats as mod

    monkeypatch.setattr(mod, "MAX_PENDING_HOURS", 3)
    stats = RequestStats(db, clock=clk)
    for _ in range(6):
        stats.record("generate", 1.0, True)
        clk.advance(3600)
    assert len(stats._pending) <= 3
    stats.roll_up()
    assert sum(r["total_requests"] for r in rows(db, "hourly").values()) == 6


def test_add_job_registers_a_coalescing_job(db, clk):
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler()
    stats = RequestStats(db, clock=clk)
    stats.add_job(scheduler, interval_s=30)
    job = scheduler.get_job("olol-stats-rollup")
    assert job is not None and job.max_instances == 1 and job.coalesce is True

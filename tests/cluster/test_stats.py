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


# ---------------------------------------------------------------------- issue 16 item 2
from olol.stats import (  # noqa: E402
    OTHER,
    Finished,
    QueryError,
    bucket_of,
    error_kind,
    finished_from_record,
    parse_query,
    percentile,
)

# Monday 2024-03-04 00:00 UTC: the first hour of an ISO week (2024-W10).
MONDAY = datetime(2024, 3, 4, tzinfo=UTC).timestamp()


def finished_record(model="llama3.2:1b", node="10.0.0.1:50051", key="k1", status="completed",
                    error_status=None, enq=1000.0, started=1000.2, first=1000.5, done=1001.0,
                    tin=12, tout=30, endpoint="chat"):
    """A queue record in a final state, as the queue's finish listeners receive it."""
    return {"id": "r", "endpoint": endpoint, "model": model, "model_key": model,
            "server_assigned": node, "key_id": key, "status": status,
            "error_status": error_status, "enqueued_ts": enq, "started_ts": started,
            "completed_ts": done, "usage": {"prompt_tokens": tin, "completion_tokens": tout,
                                            "first_token_ts": first}}


def test_a_finished_record_gives_model_node_key_tokens_and_timings():
    f = finished_from_record(finished_record())
    assert (f.model, f.node, f.key, f.error, f.tokens_in, f.tokens_out) == (
        "llama3.2:1b", "10.0.0.1:50051", "k1", None, 12, 30)
    assert f.queue_ms == pytest.approx(200.0) and f.ttft_ms == pytest.approx(500.0)
    assert f.duration_ms == pytest.approx(1000.0)
    never_ran = finished_from_record({"endpoint": "chat", "model": "m", "status": "cancelled",
                                      "enqueued_ts": 5.0, "completed_ts": 6.0})
    assert never_ran.node is None and never_ran.queue_ms is None and never_ran.ttft_ms is None
    assert never_ran.error == "cancelled" and never_ran.tokens_in == 0


@pytest.mark.parametrize(("status", "code", "kind"), [
    ("completed", None, None), ("cancelled", None, "cancelled"),
    ("interrupted", None, "interrupted"), ("failed", 499, "cancelled"),
    ("failed", 504, "timeout"), ("failed", 503, "overloaded"), ("failed", 429, "overloaded"),
    ("failed", 400, "bad_request"), ("failed", 404, "bad_request"),
    ("failed", 502, "node_error"), ("failed", 500, "node_error"), ("failed", None, "node_error"),
])
def test_error_kinds(status, code, kind):
    assert error_kind(status, code) == kind


def test_rows_per_model_node_and_key_with_errors_tokens_and_percentiles(db, clk):
    stats = RequestStats(db, clock=clk)
    for i in range(10):
        stats.request_finished(finished_record(key="alice", enq=0.0, started=i / 100,
                                               first=0.1 * (i + 1), done=2.0))
    stats.request_finished(finished_record(key="bob", status="failed", error_status=504))
    stats.request_finished(finished_record(model="qwen2.5:0.5b", node="10.0.0.2:50051",
                                           key=None, tin=5, tout=0))
    stats.rejected({"endpoint": "chat", "model": "llama3.2:1b", "key_id": "bob"})
    assert stats.roll_up() == 3 * 4  # 4 series, 3 periods
    hourly = db.search("request_stats", {"period": "hourly"})
    by = {(r["model"], r["node"], r["key"]): r for r in hourly}
    alice = by[("llama3.2:1b", "10.0.0.1:50051", "alice")]
    assert alice["total_requests"] == 10 and alice["chat_requests"] == 10
    assert (alice["tokens_in"], alice["tokens_out"]) == (120, 300)
    assert by[("llama3.2:1b", "10.0.0.1:50051", "bob")]["errors"] == {"timeout": 1}
    assert by[("llama3.2:1b", None, "bob")]["errors"] == {"rejected": 1}
    assert by[("qwen2.5:0.5b", "10.0.0.2:50051", None)]["tokens_in"] == 5

    [row] = stats.query("hourly", by=("key",), since=START - 3600)[:1]  # most requests first
    assert row["key"] == "alice" and row["requests"] == 10 and row["errors"] == 0
    # ttft 100..1000 ms: the true p50 is 500 ms, p90 900 ms; buckets are within ~9 %
    assert row["ttft_ms"]["p50"] == pytest.approx(500, rel=0.1)
    assert row["ttft_ms"]["p90"] == pytest.approx(900, rel=0.1)
    assert row["queue_ms"]["p99"] == pytest.approx(90, rel=0.1)
    total = stats.query("daily", by=(), since=START - 86400)
    assert len(total) == 1 and total[0]["requests"] == 13 and total[0]["errors"] == 2
    assert total[0]["errors_by_kind"] == {"rejected": 1, "timeout": 1}
    assert total[0]["tokens_in"] == 120 + 12 + 5


def test_percentiles_merge_across_roll_ups_and_hours(db):
    clk = FakeClock(MONDAY + 2 * 86400 + 10 * 3600)  # Wednesday 10:00: one day, one week
    stats = RequestStats(db, clock=clk)
    fast = [10.0 + i for i in range(50)]         # 10..59 ms in the first hour
    slow = [1000.0 + 20 * i for i in range(50)]  # 1000..1980 ms in the next
    for ms in fast:
        stats.add(Finished("chat", model="m", ttft_ms=ms))
    stats.roll_up()
    clk.advance(3600)
    for ms in slow[:25]:
        stats.add(Finished("chat", model="m", ttft_ms=ms))
    stats.roll_up()  # the same rows get a second roll-up
    for ms in slow[25:]:
        stats.add(Finished("chat", model="m", ttft_ms=ms))
    stats.roll_up()
    hours = {r["label"]: r["ttft_ms"] for r in stats.query("hourly", since=clk() - 86400)}
    assert hours["2024-03-06 10:00"]["p50"] == pytest.approx(fast[24], rel=0.1)
    assert hours["2024-03-06 11:00"]["p50"] == pytest.approx(slow[24], rel=0.1)
    both = sorted(fast + slow)
    for period in ("daily", "weekly"):
        [row] = stats.query(period, since=clk() - 86400)
        assert row["requests"] == 100
        # the percentiles of all 100 values, not an average of the hours' percentiles
        assert row["ttft_ms"]["p50"] == pytest.approx(both[49], rel=0.1)
        assert row["ttft_ms"]["p90"] == pytest.approx(both[89], rel=0.1)
        assert row["ttft_ms"]["p99"] == pytest.approx(both[98], rel=0.1)
        assert row["queue_ms"] == {"p50": None, "p90": None, "p99": None}  # none measured
    assert percentile({}, 0.5) is None and bucket_of(0.2) == 0 and bucket_of(float("nan")) == 0


def test_a_week_of_roll_ups_with_an_injected_clock(db):
    clk = FakeClock(MONDAY + 1800)  # Monday 00:30
    stats = RequestStats(db, clock=clk)
    models = ("llama3.2:1b", "qwen2.5:0.5b")
    for _ in range(7 * 24):  # one request per model each hour, a roll-up each hour
        for i, model in enumerate(models):
            stats.add(Finished("chat", model=model, node="n1", key="k",
                               tokens_in=10 * (i + 1), tokens_out=1, ttft_ms=100.0 * (i + 1)))
        stats.roll_up()
        clk.advance(3600)
    # Monday of the next week, 00:30: this week's rows
    assert db.count("request_stats", {"period": "hourly"}) == 7 * 24 * 2
    days = stats.query("daily", by=("model",), since=MONDAY)
    assert len(days) == 7 * 2 and {r["label"] for r in days} == {
        f"2024-03-{d:02d}" for d in range(4, 11)}
    assert all(r["requests"] == 24 for r in days)
    weeks = stats.query("weekly", by=("model",), since=MONDAY)
    assert [(r["label"], r["model"], r["requests"]) for r in weeks] == [
        ("2024-W10", "llama3.2:1b", 168), ("2024-W10", "qwen2.5:0.5b", 168)]
    by_model = {r["model"]: r for r in weeks}
    assert by_model["qwen2.5:0.5b"]["tokens_in"] == 20 * 168
    assert by_model["qwen2.5:0.5b"]["ttft_ms"]["p50"] == pytest.approx(200, rel=0.1)
    [total] = stats.query("weekly", by=(), since=MONDAY)
    assert total["requests"] == 336 and total["tokens_out"] == 336


def test_reads_include_counts_not_rolled_up_yet(db, clk):
    stats = RequestStats(db, clock=clk)
    stats.add(Finished("chat", model="m"))
    stats.roll_up()
    stats.add(Finished("chat", model="m"))
    stats.add(Finished("chat", model="other-model"))
    got = {r["model"]: r["requests"] for r in stats.query("hourly", since=START - 3600)}
    assert got == {"m": 2, "other-model": 1}
    stats.roll_up()
    got = {r["model"]: r["requests"] for r in stats.query("hourly", since=START - 3600)}
    assert got == {"m": 2, "other-model": 1}  # nothing counted twice


def test_series_are_bounded_in_ram_and_in_the_rows(db, clk):
    stats = RequestStats(db, clock=clk, max_series=5)
    for i in range(40):  # strangers' model names
        stats.add(Finished("chat", model=f"made-up-{i}", node="n", key=None))
    assert stats.pending_series() == 5 + 1  # five named, then (other)
    stats.roll_up()
    for i in range(40, 80):  # the same hour, another roll-up: the rows are bounded too
        stats.add(Finished("chat", model=f"made-up-{i}", node="n", key=None))
    stats.roll_up()
    for period in ("hourly", "daily", "weekly"):
        rows = db.search("request_stats", {"period": period})
        assert len(rows) == 5 + 1, period
        assert sum(r["total_requests"] for r in rows) == 80
        other = [r for r in rows if r["model"] == OTHER]
        assert len(other) == 1 and other[0]["node"] == OTHER
    assert stats.query("hourly", since=START - 3600, limit=3)[0]["model"] == OTHER
    long = RequestStats(DatabaseManager.memory(clock=clk), clock=clk)
    long.add(Finished("chat", model="x" * 10_000))
    long.roll_up()
    assert len(long.db.search("request_stats", {"period": "hourly"})[0]["model"]) == 200
    long.db.close()


def test_retention_is_a_live_setting_for_readers_and_the_next_prune(db):
    clk = FakeClock(MONDAY + 1800)
    stats = RequestStats(db, clock=clk)
    for _ in range(4 * 24):  # four days
        stats.add(Finished("chat", model="m"))
        clk.advance(3600)
    assert stats.maintain() == 4 * 24 + 4 + 1  # hours, days, week
    assert db.count("request_stats", {"period": "hourly"}) == 96
    assert stats.maintain() == 0  # just pruned: not due again for 10 min
    stats.retention_days["hourly"] = 2.0  # what PATCH stats_hourly_retention_days does
    # now Friday 00:30: rows that began before Wednesday 00:30 are past it, and readers
    # leave them out at once
    assert len(stats.query("hourly", by=(), since=MONDAY)) == 47
    stats.maintain()  # the changed retention prunes now, not 10 minutes later
    assert db.count("request_stats", {"period": "hourly"}) == 47
    assert db.count("request_stats", {"period": "daily"}) == 4
    stats.retention_days["daily"] = 1.5
    stats.maintain()
    assert [r["label"] for r in stats.query("daily", since=MONDAY)] == ["2024-03-07"]
    assert db.count("request_stats", {"period": "daily"}) == 1  # Thursday's
    assert db.count("request_stats", {"period": "weekly"}) == 1


def test_query_parameters_are_checked():
    now = MONDAY + 7 * 86400
    q = parse_query({"period": "weekly", "by": "model,key", "since": "2w", "limit": "5"}, now)
    assert q == {"period": "weekly", "by": ("model", "key"), "since": now - 14 * 86400,
                 "until": None, "limit": 5}
    assert parse_query({"by": "total", "since": "2024-03-04"}, now)["since"] == MONDAY
    assert parse_query({}, now)["by"] == ("model",)
    for bad, message in [
        ({"period": "monthly"}, "period must be one of"),
        ({"by": "model,colour"}, "by must be"),
        ({"since": "last tuesday"}, "since must be like"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"limit": "0"}, "limit must be in"),
        ({"limit": "100000"}, "limit must be in"),
        ({"perod": "daily"}, "unknown parameter 'perod'"),
    ]:
        with pytest.raises(QueryError, match=message):
            parse_query(bad, now)

"""MaintenanceJobs: outcomes, counts, isolation of failures, the proxy's job set."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from olol.context import ProxyConfig
from olol.maintenance import (
    DEFAULT_JOB_INTERVALS,
    MaintenanceJobs,
    UnknownJobError,
    install_proxy_jobs,
    job_intervals,
)
from tests.models_api.conftest import wait_until
from tests.support import FakeClock  # noqa: F401


def test_run_now_records_outcome_with_injected_clock():
    clock = FakeClock(1_000_000.0)
    jobs = MaintenanceJobs(None, clock)

    def work() -> int:
        clock.advance(2.5)  # the job "takes" 2.5 s of the injected clock
        return 7

    jobs.add("cleanup", work, 60)
    before = jobs.status_of("cleanup")
    assert before["outcome"] is None and before["runs"] == 0 and before["last_run"] is None

    entry = jobs.run_now("cleanup")
    assert entry["outcome"] == "ok"
    assert entry["runs"] == 1 and entry["failures"] == 0
    assert entry["last_start"] == 1_000_000.0
    assert entry["last_end"] == 1_000_002.5
    assert entry["duration_s"] == pytest.approx(2.5)
    assert entry["result"] == 7
    assert entry["last_run"].startswith("1970-01-12T13:46:40")


def test_failing_job_is_counted_and_others_still_run():
    clock = FakeClock(1_000_000.0)
    jobs = MaintenanceJobs(None, clock)
    calls = {"good": 0}

    def bad() -> None:
        raise RuntimeError("disk on fire")

    def good() -> str:
        calls["good"] += 1
        return "fine"

    jobs.add("bad", bad, 10)
    jobs.add("good", good, 10)
    for _ in range(3):
        for name in jobs.names():
            jobs.run_now(name)  # never raises for a failing job
            clock.advance(1)
    status = {e["id"]: e for e in jobs.status()}
    assert status["bad"]["runs"] == 3 and status["bad"]["failures"] == 3
    assert status["bad"]["outcome"] == "error"
    assert status["bad"]["error"] == "disk on fire"
    assert status["good"]["runs"] == 3 and status["good"]["failures"] == 0
    assert status["good"]["outcome"] == "ok" and status["good"]["error"] is None
    assert calls["good"] == 3

    # a later good run clears the current error but keeps the history
    state = {"fail": True}

    def flaky() -> None:
        if state["fail"]:
            raise ValueError("transient")

    jobs.add("flaky", flaky, 10)
    jobs.run_now("flaky")
    state["fail"] = False
    entry = jobs.run_now("flaky")
    assert entry["outcome"] == "ok" and entry["error"] is None
    assert entry["failures"] == 1 and entry["last_error"] == "transient"


def test_unknown_job_and_bad_interval():
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    with pytest.raises(UnknownJobError):
        jobs.run_now("nope")
    with pytest.raises(ValueError):
        jobs.add("x", lambda: None, 0)
    with pytest.raises(ValueError):
        jobs.add("", lambda: None, 5)


def test_a_run_in_progress_is_not_doubled():
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(5)

    jobs.add("slow", slow, 10)
    t = threading.Thread(target=jobs.run_now, args=("slow",), name="test-slow-job")
    t.start()
    try:
        assert entered.wait(5)
        entry = jobs.run_now("slow")  # refused while the first run holds the job
        assert entry["skipped"] == 1 and entry["running"] is True
    finally:
        release.set()
        t.join(5)
    entry = jobs.status_of("slow")
    assert entry["runs"] == 1 and entry["running"] is False


def test_real_scheduler_keeps_running_good_jobs_next_to_a_failing_one():
    scheduler = BackgroundScheduler(timezone="UTC")
    jobs = MaintenanceJobs(scheduler)
    good_runs = []

    def bad() -> None:
        raise RuntimeError("boom")

    jobs.add("bad", bad, 0.05, start_now=True)
    jobs.add("good", lambda: good_runs.append(1), 0.05, start_now=True)
    scheduler.start()
    try:
        assert wait_until(lambda: jobs.status_of("bad")["failures"] >= 3
                          and len(good_runs) >= 3, timeout=10)
        status = {e["id"]: e for e in jobs.status()}
        assert status["good"]["outcome"] == "ok"
        assert status["bad"]["outcome"] == "error" and status["bad"]["error"] == "boom"
        assert status["good"]["next_run_ts"] is not None
        assert status["good"]["next_run"].endswith("Z")
        assert scheduler.running
        assert jobs.remove("bad") and not jobs.remove("bad")
        assert scheduler.get_job("bad") is None
    finally:
        scheduler.shutdown(wait=True)


def test_next_run_known_before_the_scheduler_starts():
    scheduler = BackgroundScheduler(timezone="UTC")
    jobs = MaintenanceJobs(scheduler)
    jobs.add("later", lambda: None, 3600)
    entry = jobs.status_of("later")
    assert entry["next_run_ts"] is not None
    assert entry["next_run_ts"] > time.time() + 3000


def test_job_intervals_from_config():
    cfg = ProxyConfig(health_interval_s=2.0, job_intervals={"queue-cleanup": 42})
    intervals = job_intervals(cfg)
    assert intervals["queue-cleanup"] == 42
    assert intervals["health-poll"] == 2.0
    assert intervals["registry-sync"] == DEFAULT_JOB_INTERVALS["registry-sync"]
    with pytest.raises(ValueError, match="unknown maintenance job"):
        job_intervals(ProxyConfig(job_intervals={"nope": 1}))
    with pytest.raises(ValueError, match="at least"):
        job_intervals(ProxyConfig(job_intervals={"queue-cleanup": 0}))
    with pytest.raises(ValueError, match="number"):
        job_intervals(ProxyConfig(job_intervals={"queue-cleanup": "often"}))


class Recorder:
    """Stands in for the proxy parts; records calls and can be told to fail."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()
        self.durable = True
        self.job_errors = 0

    def _do(self, name: str, value=None):
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"{name} failed")
        return value

    def clean_old_requests(self, hours=None):
        return self._do(f"clean:{hours}", 3)

    def return_expired_leases(self):
        return self._do("leases", 1)

    def synchronize_models(self):
        return self._do("sync", {"models": 2})

    def roll_up(self):
        return self._do("rollup", 4)

    def checkpoint(self):
        return self._do("checkpoint", {})

    def run_once(self):
        self.calls.append("health")
        if "health" in self.fail:
            self.job_errors += 1  # HealthMonitor.run_once swallows and counts
            return {}
        return {"a:1": {}}

    def optimize_model_distribution(self):
        self.calls.append("plan")
        return {"actions": [{"action": "add", "model": "m", "node": "a:1", "reason": "x"}]}

    def apply(self, plan):
        return self._do("apply", {"applied": len(plan["actions"])})


def test_install_proxy_jobs_runs_each_part_and_isolates_failures():
    part = Recorder(fail={"sync", "health"})
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    names = install_proxy_jobs(jobs, config=ProxyConfig(retention_hours=12), queue=part,
                               registry=part, stats=part, db=part, health=part)
    assert names == ["health-poll", "queue-cleanup", "registry-sync", "stats-rollup",
                     "store-checkpoint"]  # no model-optimize: auto_optimize is off
    for name in names:
        jobs.run_now(name)
    status = {e["id"]: e for e in jobs.status()}
    assert status["health-poll"]["outcome"] == "error"
    assert status["registry-sync"]["outcome"] == "error"
    assert "sync failed" in status["registry-sync"]["error"]
    for name in ("queue-cleanup", "stats-rollup", "store-checkpoint"):
        assert status[name]["outcome"] == "ok", name
    # leases are returned even though the synchronization failed after them
    assert part.calls.index("leases") < part.calls.index("sync")
    # the queue applies its own retention_hours (built from the config, changed live)
    assert "clean:None" in part.calls
    assert "plan" not in part.calls and "apply" not in part.calls


def test_auto_optimize_only_when_turned_on():
    part = Recorder()
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    names = install_proxy_jobs(jobs, config=ProxyConfig(auto_optimize=True), registry=part)
    assert names == ["registry-sync", "model-optimize"]
    entry = jobs.run_now("model-optimize")
    assert entry["outcome"] == "ok"
    assert part.calls == ["plan", "apply"]


def test_memory_store_gets_no_checkpoint_job():
    part = Recorder()
    part.durable = False
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    assert "store-checkpoint" not in install_proxy_jobs(jobs, config=ProxyConfig(), db=part)


def test_health_job_reports_sweep_failures():
    part = Recorder()
    jobs = MaintenanceJobs(None, FakeClock(1_000_000.0))
    install_proxy_jobs(jobs, config=ProxyConfig(), health=part)
    assert jobs.run_now("health-poll")["outcome"] == "ok"
    part.fail.add("health")
    assert jobs.run_now("health-poll")["outcome"] == "error"
    assert SimpleNamespace(**jobs.status_of("health-poll")).failures == 1

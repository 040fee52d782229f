"""A real proxy process killed with SIGKILL keeps the request counts it had not rolled
up yet (issue 9 item 6): after each restart on the same data folder they are rolled up
exactly once, so request_stats counts every request that got its answer, with its
model, node, tokens and queue wait (issue 16 item 2), and the statistics API shows
them before and after the roll-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from olol.store import DatabaseManager
from tests.bench.procs import free_port
from tests.e2e.conftest import start_nodes
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = "llama3.2:1b"


class ProxyProcess:
    """``python -m olol proxy`` on ``data_dir`` with one node; killed or stopped by the test."""

    def __init__(self, data_dir: Path, node: str, config: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "olol", "proxy", "--listen", self.url[7:],
             "--data-dir", str(data_dir), "--node", node, "--config", str(config)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                tags = requests.get(self.url + "/api/tags", timeout=0.5).json()
            except (requests.RequestException, ValueError):
                return False
            return any(m.get("name") == MODEL for m in tags.get("models", []))

        assert wait_until(ready, timeout=30) and self.proc.poll() is None, self.output()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def generate(self, session: requests.Session, n: int) -> None:
        for i in range(n):
            r = session.post(self.url + "/api/generate", timeout=30, json={
                "model": MODEL, "prompt": f"count me {i}", "stream": False,
                "options": {"num_predict": 2}})
            assert r.status_code == 200, r.text
        # The dispatcher counts a request once its answer is written, in the same
        # server thread: a later request on the same connection comes after it.
        assert session.get(self.url + "/api/version", timeout=5).ok

    def counted(self) -> dict:
        """What ``GET /olol/v1/stats`` says of the last two days (rows, and counts not
        rolled up yet): requests, tokens out, models and nodes."""
        r = requests.get(self.url + "/olol/v1/stats", timeout=10,
                         params={"period": "daily", "by": "model,node", "since": "2d"})
        assert r.ok, r.text
        rows = r.json()["rows"]
        return {"requests": sum(x["requests"] for x in rows),
                "tokens_out": sum(x["tokens_out"] for x in rows),
                "models": {x["model"] for x in rows}, "nodes": {x["node"] for x in rows}}

    def wait_counted(self, n: int) -> None:
        """Bounded polling until the proxy has counted ``n`` requests (each is counted
        once its answer is written, just after the client got it)."""
        assert wait_until(lambda: self.counted()["requests"] >= n, timeout=15), self.counted()

    def roll_up(self) -> int:
        """Run the roll-up job now; the number of rows it wrote."""
        r = requests.post(self.url + "/olol/v1/maintenance/stats-rollup/run", timeout=30)
        assert r.ok, r.text
        job = r.json()
        assert job["outcome"] == "ok", job
        return job["result"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def test_request_counts_survive_sigkill_and_are_rolled_up_exactly_once(tmp_path):
    sims, agents = start_nodes(1, models=MODEL)
    data_dir = tmp_path / "data"
    config = tmp_path / "olol.toml"
    # no scheduled roll-up during the test: only the ones it asks for
    config.write_text('health_interval_s = 1.0\n[job_intervals]\n"stats-rollup" = 3600.0\n')
    n = 15
    expected = 0
    proxy = None
    try:
        # 1: requests, killed before any roll-up
        proxy = ProxyProcess(data_dir, agents[0].address, config)
        with requests.Session() as s:
            proxy.generate(s, n)
        expected += n
        proxy.wait_counted(expected)
        proxy.kill()
        # 2: more requests on the same folder, killed again before any roll-up
        proxy = ProxyProcess(data_dir, agents[0].address, config)
        with requests.Session() as s:
            proxy.generate(s, n)
        expected += n
        proxy.wait_counted(expected)
        proxy.kill()
        # 3: a roll-up takes what both killed processes counted, then more requests
        proxy = ProxyProcess(data_dir, agents[0].address, config)
        proxy.roll_up()
        with requests.Session() as s:
            proxy.generate(s, n)
        expected += n
        proxy.wait_counted(expected)
        proxy.kill()
        # 4: the counts of the killed process are read back (not rolled up yet), then the
        # last roll-up, then a clean stop
        proxy = ProxyProcess(data_dir, agents[0].address, config)
        seen = proxy.counted()
        assert seen["requests"] == expected
        assert seen["tokens_out"] == 2 * expected  # num_predict 2
        assert seen["models"] == {MODEL} and seen["nodes"] == {agents[0].address}
        proxy.roll_up()
        assert proxy.roll_up() == 0  # nothing left: adds nothing
        proxy.stop()
        proxy = None
    finally:
        if proxy is not None:
            proxy.stop()
        for a in agents:
            a.stop(0)
        for sim in sims:
            sim.stop()

    with DatabaseManager(data_dir, background_checkpoints=False) as db:
        hourly = db.search("request_stats", {"period": "hourly"})
        daily = db.search("request_stats", {"period": "daily"})
    assert sum(r["total_requests"] for r in hourly) == expected
    assert sum(r["total_requests"] for r in daily) == expected
    assert sum(r["generate_requests"] for r in hourly) == expected
    assert sum(r["failed_requests"] for r in hourly) == 0
    weekly = db_rows(data_dir, "weekly")
    assert sum(r["total_requests"] for r in weekly) == expected
    assert {(r["model"], r["node"], r["key"]) for r in hourly} == {
        (MODEL, agents[0].address, None)}
    assert sum(r["tokens_out"] for r in hourly) == 2 * expected
    assert sum(sum(r["queue_ms_hist"].values()) for r in hourly) == expected


def db_rows(data_dir: Path, period: str) -> list[dict]:
    with DatabaseManager(data_dir, background_checkpoints=False) as db:
        return db.search("request_stats", {"period": period})

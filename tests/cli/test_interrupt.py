"""Ctrl-C (SIGINT) while ``olol`` watches something that runs in the proxy: one line that
says it goes on there and how to follow or stop it, exit 130, no traceback, and the
terminal given back."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.cli.conftest import ROOT, Cluster, fails_in_one_line
from tests.e2e.conftest import start_nodes
from tests.support import wait_until

MODEL = "qwen3:0.6b"  # 523 MB in the simulator's catalog: minutes at 2 MB/s


@pytest.fixture(scope="module")
def slow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node that pulls at 2 MB/s and takes 10 minutes to the first token."""
    sims, agents = start_nodes(1, "llama3.2:1b", pull_bytes_per_second=2_000_000.0, ttft=600.0)
    data_dir = tmp_path_factory.mktemp("cli-slow") / "data"
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=data_dir,
                              nodes=[a.address for a in agents], health_interval_s=1.0)).start()
    try:
        yield Cluster(proxy, sims, agents, data_dir)
    finally:
        proxy.stop(grace_s=2)  # cancels the pulls left running
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def _interrupted(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _pulling(olol, url: str) -> list[str]:
    result = olol("models", "status", MODEL, "--url", url, "--json")
    if result.returncode != 0:
        return []
    return json.loads(result.stdout).get("pulling") or []


def test_ctrl_c_during_a_pull_says_it_goes_on_and_how_to_follow_it(olol, slow_cluster):
    url = slow_cluster.url
    proc = olol.popen("models", "pull", MODEL, "--url", url)
    try:
        first = proc.stdout.readline()  # plain progress lines on a pipe
        assert first.startswith("cluster: "), first
        assert wait_until(lambda: "%" in proc.stdout.readline(), timeout=30)
        result = _interrupted(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    line = fails_in_one_line(result, 130, f"the pull of {MODEL} goes on in the cluster",
                             f"olol models status {MODEL}", f"olol models rm {MODEL} --force")
    assert line.startswith("olol models pull: ")
    # what the line says holds: the cluster still pulls it, and status shows where
    assert _pulling(olol, url) == [slow_cluster.agents[0].address]


def test_ctrl_c_in_a_terminal_gives_the_terminal_back(olol, slow_cluster):
    """stdout on a pseudo-terminal: rich draws bars in place; Ctrl-C stops drawing, shows
    the cursor again and says the same one line on stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(olol.argv("models", "pull", MODEL, "--url", slow_cluster.url),
                            cwd=ROOT, env=olol.env(TERM="xterm"), stdout=slave,
                            stderr=subprocess.PIPE, text=True)
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"MB/s" not in shown and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                shown += os.read(master, 65536)
        assert b"MB/s" in shown, shown[-500:]  # bytes and speed on the bars
        assert b"\x1b[?25l" in shown  # cursor hidden while drawing
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=30) == 130
        while True:  # the rest of what it drew
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert shown.rstrip().endswith(b"\x1b[?25h")  # the cursor given back, last
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "goes on in the cluster" in err
    text = shown.decode(errors="replace")
    assert "cluster" in text and slow_cluster.agents[0].address in text  # the two rows
    assert "pulling on 1 node(s), 0 done" in text


def test_ctrl_c_during_jobs_wait_says_the_job_goes_on(olol, slow_cluster):
    url = slow_cluster.url
    body = json.dumps({"model": "llama3.2:1b", "prompt": "hi",
                       "options": {"num_predict": 3}})  # its first token comes in 10 minutes
    submitted = olol("jobs", "submit", "generate", body, "--url", url)
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and len(job_id) == 32, submitted
    proc = olol.popen("jobs", "wait", job_id, "--url", url)
    try:
        first = proc.stderr.readline()  # "job ID: pending" on a pipe
        assert first.startswith(f"job {job_id}: "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, first + err)
    assert result.returncode == 130 and not out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith(f"job {job_id}: ") for line in lines[:-1])
    assert lines[-1].startswith("olol jobs wait: stopped waiting")
    assert f"olol jobs cancel {job_id}" in lines[-1] and "Traceback" not in result.stderr
    cancelled = olol("jobs", "cancel", job_id, "--url", url)
    assert cancelled.returncode == 0 and "status:   cancel" in cancelled.stdout

"""systemd notifications: a real ``olol proxy`` process under a fake ``$NOTIFY_SOCKET``
says READY=1 once it serves, pings the watchdog, and says STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from olol.sdnotify import notify, watchdog_interval

ROOT = Path(__file__).resolve().parents[2]


def test_notify_is_a_no_op_outside_systemd():
    assert notify("READY=1", env={}) is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_a_proxy_process_notifies_systemd(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "olol", "--log-level", "WARNING", "proxy", "--listen",
         f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages: list[str] = []

    def collect(until: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not any(until in m for m in messages):
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                assert proc.poll() is None or until == "STOPPING=1", "the proxy exited"
        assert any(until in m for m in messages), (until, messages)

    try:
        collect("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert f"127.0.0.1:{port}" in ready  # STATUS= names where it serves
        # READY means serving: the port answers
        assert requests.get(f"http://127.0.0.1:{port}/api/version", timeout=5).ok
        collect("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        collect("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sock.close()


def test_a_worker_reads_its_token_from_a_credential_and_notifies_systemd(tmp_path):
    from olol.rpc.client import NodeClient, NodeError
    from olol.sim import SimConfig, Simulator, parse_models_spec

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("from-a-credential\n")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = Simulator(SimConfig(models=parse_models_spec("llama3.2:1b")), host="127.0.0.1",
                    port=0).start()
    env = {**os.environ, "NOTIFY_SOCKET": path, "CREDENTIALS_DIRECTORY": str(creds),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "olol", "--log-level", "WARNING", "worker", "--listen",
         f"127.0.0.1:{port}", "--ollama-url", sim.url],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = ""
        deadline = time.monotonic() + 30
        while "READY=1" not in got and time.monotonic() < deadline:
            try:
                got += sock.recv(4096).decode()
            except TimeoutError:
                assert proc.poll() is None, "the worker exited"
        assert "READY=1" in got
        good = NodeClient(f"127.0.0.1:{port}", token="from-a-credential")
        assert good.version(timeout=10)
        good.close()
        bad = NodeClient(f"127.0.0.1:{port}", token="wrong")
        with pytest.raises(NodeError):
            bad.version(timeout=10)
        bad.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sock.close()
        sim.stop()


def test_secrets_come_from_the_flag_the_file_or_the_credential(tmp_path, monkeypatch):
    from olol.agent.cli import secret

    (tmp_path / "t").write_text(" s1 \n")
    (tmp_path / "empty").write_text("")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert secret("flag", str(tmp_path / "t"), "token") == "flag"
    assert secret(None, str(tmp_path / "t"), "token") == "s1"
    assert secret(None, None, "token") is None
    with pytest.raises(ValueError, match="is empty"):
        secret(None, str(tmp_path / "empty"), "token")
    with pytest.raises(ValueError, match="cannot read"):
        secret(None, str(tmp_path / "missing"), "token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "token").write_text("s2")
    assert secret(None, None, "token") == "s2"

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

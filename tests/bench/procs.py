"""Start olol processes (sim, worker, proxy) as real subprocesses for benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, args: list[str], ready_url: str | None = None, ready_port: int | None = None,
                 timeout: float = 30.0):
        self.args = args
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "olol", "--log-level", os.environ.get("OLOL_BENCH_LOG", "WARNING"), *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{args[0]} exited early: {self.output()}")
            try:
                if ready_url:
                    requests.get(ready_url, timeout=0.5)
                    return
                with socket.create_connection(("127.0.0.1", ready_port), timeout=0.5):
                    return
            except (requests.RequestException, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{args[0]} not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)


def start_sim(*extra: str) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Proc(["sim", "--listen", f"127.0.0.1:{port}", *extra], ready_url=url + "/api/version"), url


def start_worker(ollama_url: str, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(["worker", "--listen", f"127.0.0.1:{port}", "--ollama-url", ollama_url, *extra],
                ready_port=port)
    return proc, f"127.0.0.1:{port}"


def start_proxy(nodes: list[str], data_dir: str, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["proxy", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, *extra]
    for n in nodes:
        args += ["--node", n]
    return Proc(args, ready_url=url + "/api/version"), url

"""Start olol processes (sim, worker, proxy) as real subprocesses for benchmarks."""

from __future__ import annotations

import os
import shutil
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
    """``python -m olol --log-level ... ARGS`` run from ``root`` (default: this working tree).

    ``root`` may be another source tree (see ``export_tree``): the process then runs
    with that folder as its cwd and PYTHONPATH, so it imports that tree's ``olol``.
    ``launcher`` replaces ``["-m", "olol"]`` (e.g. ``["-c", CODE]`` to patch before
    the CLI runs).
    """

    def __init__(self, args: list[str], ready_url: str | None = None, ready_port: int | None = None,
                 timeout: float = 30.0, root: str | Path | None = None,
                 launcher: list[str] | None = None):
        self.args = args
        self.root = Path(root) if root is not None else ROOT
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            [sys.executable, *(launcher or ["-m", "olol"]),
             "--log-level", os.environ.get("OLOL_BENCH_LOG", "WARNING"), *args],
            cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(self.root)},
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

    @property
    def pid(self) -> int:
        return self.p.pid

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


def start_sim(*extra: str, root: str | Path | None = None,
              launcher: list[str] | None = None) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Proc(["sim", "--listen", f"127.0.0.1:{port}", *extra], ready_url=url + "/api/version",
                root=root, launcher=launcher), url


def start_worker(ollama_url: str, *extra: str, root: str | Path | None = None) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(["worker", "--listen", f"127.0.0.1:{port}", "--ollama-url", ollama_url, *extra],
                ready_port=port, root=root)
    return proc, f"127.0.0.1:{port}"


def start_proxy(nodes: list[str], data_dir: str, *extra: str,
                root: str | Path | None = None) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["proxy", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, *extra]
    for n in nodes:
        args += ["--node", n]
    return Proc(args, ready_url=url + "/api/version", root=root), url


def git(*args: str) -> str:
    """``git -C ROOT ARGS``'s stdout, stripped."""
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def export_tree(rev: str) -> Path:
    """A fresh temporary folder holding ``rev``'s files (``git archive``); the caller removes it.

    Checks that this venv's interpreter, run there, imports that folder's ``olol``
    (not the editable install of the working tree).
    """
    dest = Path(tempfile.mkdtemp(prefix="olol-bench-rev-"))
    try:
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", rev], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {rev} failed")
        where = subprocess.run(
            [sys.executable, "-c", "import olol, os; print(os.path.realpath(olol.__file__))"],
            cwd=dest, env={**os.environ, "PYTHONPATH": str(dest)}, capture_output=True, text=True,
            check=True).stdout.strip()
        if not where.startswith(str(dest.resolve()) + os.sep):
            raise RuntimeError(f"the export of {rev} imports olol from {where}, not {dest}")
        return dest
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise

"""The package as a user installs it: a wheel built from this tree, installed in a fresh
venv (its dependencies from the package index), runs ``olol up`` and answers a chat."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_wheel_installs_in_a_fresh_venv_and_olol_up_serves(tmp_path):
    # from a copy without build outputs: a stale build/ folder would leak into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".mypy_cache", ".ruff_cache"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(dist), str(src)],
                   check=True, timeout=600)
    wheel, = dist.glob("olol-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "olol/cli/__init__.py" in names and "olol/server/openapi.json" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE not shipped"
    assert not any(n.startswith("tests/") for n in names)
    # the agent ships inside olol: no generic top-level package in site-packages
    assert "olol/agent/agent.py" in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"olol"}, tops

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=900)
    out = subprocess.run([str(bin_dir / "olol"), "--version"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("olol ")

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen([str(bin_dir / "olol"), "up", "--listen", f"127.0.0.1:{port}",
                             "--ollama-url", f"http://127.0.0.1:{_free_port()}"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/chat"
        body = json.dumps({"model": "llama3.2:1b", "stream": False,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        deadline = time.monotonic() + 120
        answer = None
        while answer is None:
            assert proc.poll() is None, f"olol up exited {proc.returncode}"
            try:
                req = urllib.request.Request(url, data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    answer = json.loads(resp.read())
            except OSError:
                if time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError("olol up never answered a chat:\n" + log.read()) from None
                time.sleep(0.5)
        assert answer["done"] is True and answer["message"]["content"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text, text
    # the data dir the user was told about, private to the user
    data = tmp_path / "xdg" / "olol"
    assert str(data) in text
    assert (data.stat().st_mode & 0o777) == 0o700

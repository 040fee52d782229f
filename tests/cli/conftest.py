"""The ``olol`` command as a user runs it: ``python -m olol ...`` in a subprocess (cwd and
PYTHONPATH = this checkout), against a proxy with simulated nodes started in-process
(a real waitress server on loopback, real agents, real simulators)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.e2e.conftest import start_nodes

ROOT = Path(__file__).resolve().parents[2]
#: a line the logging module wrote (``2026-01-01 10:00:00,123 INFO name: ...``)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no olol settings: no ``OLOL_*`` variable, no config
    file, data under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLOL_")}
    env.update(PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(home / "data"),
               OLOL_CONFIG=str(home / "no-such-olol.toml"), PYTHONUNBUFFERED="1",
               COLUMNS="120")
    env.pop("TERM", None)
    env.update(extra)
    return env


@dataclass
class Olol:
    """Runs ``olol`` commands in subprocesses for one test."""

    home: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "olol", *args]

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.home, **extra)

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 60,
                 **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=ROOT, env=self.env(**env), input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=ROOT, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture
def olol(tmp_path: Path) -> Olol:
    return Olol(tmp_path)


def message_lines(stderr: str) -> list[str]:
    """What stderr says to the user, without the log records."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def fails_in_one_line(result: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """Assert that a command ended with ``status``, one line on stderr naming ``words``
    and no traceback; return that line."""
    detail = f"stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode == status, detail
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, detail
    lines = message_lines(result.stderr)
    assert len(lines) == 1, detail
    for word in words:
        assert word in lines[0], detail
    return lines[0]


def usage_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """argparse's refusal: exit 2, its usage and then one ``error:`` line naming
    ``words``, no traceback."""
    detail = f"stderr={result.stderr!r}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stderr, detail
    last = result.stderr.strip().splitlines()[-1]
    assert ": error: " in last, detail
    for word in words:
        assert word in last, detail
    return last


@dataclass
class Cluster:
    proxy: Proxy
    sims: list
    agents: list
    data_dir: Path

    @property
    def url(self) -> str:
        return self.proxy.url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two simulated nodes (instant pulls, 200 tokens a second) behind one proxy, shared
    by a module's tests: each test leaves the cluster as it found it."""
    sims, agents = start_nodes(2, "llama3.2:1b,qwen2.5:0.5b,nomic-embed-text[embed]",
                               tokens_per_second=200.0)
    data_dir = tmp_path_factory.mktemp("cli-proxy") / "data"
    config = ProxyConfig(listen="127.0.0.1:0", data_dir=data_dir,
                         nodes=[a.address for a in agents], health_interval_s=1.0,
                         retry_backoff_s=0.05)
    proxy = Proxy(config).start()
    try:
        yield Cluster(proxy, sims, agents, data_dir)
    finally:
        proxy.stop(grace_s=2)
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()

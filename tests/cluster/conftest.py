"""Fixtures: real simulators and node agents on loopback, a fake clock, stores."""

from __future__ import annotations

import socket
import threading

import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.cluster import ClusterManager
from olol.rpc.client import NodeClient
from olol.sim import Simulator
from olol.store import DatabaseManager
from tests import support
from tests.support import FakeClock, wait_until  # noqa: F401


def make_sim(models: str = "llama3.2:1b,nomic-embed-text[embed]", port: int = 0,
             **overrides) -> Simulator:
    return support.make_sim(models, port=port, **{"max_queue": 64, **overrides})


def make_agent(sim: Simulator, parallel: int = 4) -> Agent:
    return Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url, parallel=parallel,
                             status_timeout=1.0)).start()


def short_client(address: str) -> NodeClient:
    return NodeClient(address, timeout=5.0)


class SilentServer:
    """A TCP listener that accepts connections and never answers: a hung node."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="test-silent-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            if len(self._conns) < 64:
                self._conns.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        for conn in self._conns:
            conn.close()
        self._sock.close()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def db(clock):
    store = DatabaseManager.memory(clock=clock)
    yield store
    store.close()


@pytest.fixture(scope="module")
def sim_a():
    s = make_sim("llama3.2:1b,nomic-embed-text[embed]")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sim_b():
    s = make_sim("llama3.2:1b,qwen2.5:0.5b")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent_a(sim_a):
    a = make_agent(sim_a, parallel=4)
    yield a
    a.stop(0)


@pytest.fixture(scope="module")
def agent_b(sim_b):
    a = make_agent(sim_b, parallel=2)
    yield a
    a.stop(0)


@pytest.fixture
def cluster(db, clock):
    c = ClusterManager(db, clock=clock, client_factory=short_client)
    yield c
    c.close()


@pytest.fixture
def silent():
    s = SilentServer()
    yield s
    s.close()

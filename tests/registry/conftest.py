"""Fixtures: clusters of real agents in front of real simulators of different sizes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.cluster import ClusterManager
from olol.registry import ModelRegistry
from olol.rpc.client import NodeClient
from olol.sim import SimConfig, Simulator, parse_models_spec
from olol.store import DatabaseManager
from tests.support import FakeClock, wait_until  # noqa: F401

GB = 1_000_000_000


@dataclass
class Node:
    """One simulated inference host: a simulator with a disk and an agent declaring it."""

    sim: Simulator
    agent: Agent | None
    disk: int
    models: str

    @property
    def address(self) -> str:
        return self.agent.address

    def kill(self) -> None:
        """The host dies: agent and Ollama gone."""
        if self.agent is not None:
            self.agent.stop(0)
        self.sim.stop(timeout=1)

    def stop_agent(self) -> None:
        self.agent.stop(0)

    def start_agent(self, port: int) -> None:
        self.agent = Agent(AgentConfig(listen=f"127.0.0.1:{port}", ollama_url=self.sim.url,
                                       disk_budget=self.disk, memory_budget=self.disk,
                                       status_timeout=1.0)).start()


def start_sim(models: str, disk: int, pull_speed: float = 0.0, port: int = 0) -> Simulator:
    return Simulator(SimConfig(models=parse_models_spec(models) if models else [],
                               pull_bytes_per_second=pull_speed, disk_bytes=disk,
                               max_queue=64), host="127.0.0.1", port=port).start()


class Cluster:
    """Nodes, a store, a ClusterManager and a ModelRegistry over them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.db = DatabaseManager.memory(clock=self.clock)
        self.cluster = ClusterManager(self.db, clock=self.clock,
                                      client_factory=lambda a: NodeClient(a, timeout=5.0))
        self.nodes: list[Node] = []
        self.registries: list[ModelRegistry] = []

    def add(self, models: str, disk: int, pull_speed: float = 0.0) -> Node:
        sim = start_sim(models, disk, pull_speed)
        node = Node(sim, None, disk, models)
        node.start_agent(0)
        self.nodes.append(node)
        self.cluster.add_node(node.address)
        return node

    def registry(self, **kwargs) -> ModelRegistry:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("pull_timeout_s", 30.0)
        kwargs.setdefault("status_timeout_s", 2.0)
        reg = ModelRegistry(self.cluster, self.db, **kwargs)
        self.registries.append(reg)
        return reg

    def row(self, name: str) -> dict | None:
        return self.db.search_one("models", {"name": name})

    def close(self) -> None:
        for reg in self.registries:
            reg.close(timeout=5)
        self.cluster.close()
        for node in self.nodes:
            if node.agent is not None:
                node.agent.stop(0)
            node.sim.stop(timeout=1)


@pytest.fixture
def make_cluster():
    made: list[Cluster] = []

    def make() -> Cluster:
        c = Cluster()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()

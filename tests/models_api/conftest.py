"""Fixtures for model management: real simulators behind real agents, a real store,
cluster and ModelRegistry, and the front door on a real waitress server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import waitress

from olol.agent.agent import Agent, AgentConfig
from olol.cluster import ClusterManager
from olol.context import ProxyConfig, ProxyContext
from olol.hub import ResponseHub
from olol.keys import KeyStore
from olol.maintenance import MaintenanceJobs
from olol.proxy import close_waitress
from olol.registry import ModelRegistry
from olol.server import create_app
from olol.sim import SimConfig, Simulator, parse_models_spec
from olol.store import DatabaseManager
from tests.support import wait_until  # noqa: F401

GB = 1_000_000_000


@dataclass
class Node:
    sim: Simulator
    agent: Agent

    @property
    def address(self) -> str:
        return self.agent.address

    def models(self) -> set[str]:
        """What the simulated Ollama itself lists (normalized names)."""
        import requests

        data = requests.get(self.sim.url + "/api/tags", timeout=5).json()
        return {m["name"].lower() for m in data["models"]}


@dataclass
class Cluster:
    url: str
    ctx: ProxyContext
    nodes: list[Node]
    registry: ModelRegistry
    extra: dict[str, Any] = field(default_factory=dict)

    def node(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)


def start_node(models: str, disk_gb: float | None = None, **sim_kw: Any) -> Node:
    cfg = dict(models=parse_models_spec(models), ttft=0.0, tokens_per_second=0.0,
               load_time=0.0, pull_bytes_per_second=0.0)
    cfg.update(sim_kw)
    sim = Simulator(SimConfig(**cfg), host="127.0.0.1", port=0).start()
    budget = int(disk_gb * GB) if disk_gb is not None else None
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url,
                              disk_budget=budget, memory_budget=budget)).start()
    return Node(sim, agent)


@contextmanager
def serve(ctx: ProxyContext, threads: int = 8) -> Iterator[str]:
    """The front door on a real waitress server in a named thread, stopped on exit."""
    app = create_app(ctx)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads,
                                    channel_request_lookahead=1, ident="olol-test")
    thread = threading.Thread(target=server.run, name="test-models-front-door", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        close_waitress(server, thread, timeout=2)


@contextmanager
def running_cluster(specs: list[tuple[str, float | None]], *, keys_enabled: bool = False,
                    copies: int = 1, maintenance: MaintenanceJobs | None = None,
                    **sim_kw: Any) -> Iterator[Cluster]:
    """Nodes (``(models spec, disk GB)``), a registry and the front door, all real."""
    from olol.queue import QueueManager

    nodes: list[Node] = []
    db = DatabaseManager.memory()
    cluster = ClusterManager(db)
    registry = None
    try:
        for models, disk in specs:
            nodes.append(start_node(models, disk, **sim_kw))
        for n in nodes:
            cluster.add_node(n.address)
            cluster.refresh(n.address, timeout=5.0)
        registry = ModelRegistry(cluster, db, copies=copies, pull_timeout_s=30.0)
        registry.synchronize_models()
        queue = QueueManager(db)
        queue.recover()
        ctx = ProxyContext(
            config=ProxyConfig(keys_enabled=keys_enabled, model_copies=copies,
                               health_timeout_s=5.0, stream_idle_timeout_s=30.0,
                               pull_timeout_s=30.0),
            db=db, queue=queue, hub=ResponseHub(), cluster=cluster, keys=KeyStore(db),
            registry=registry, maintenance=maintenance,
        )
        with serve(ctx) as url:
            yield Cluster(url, ctx, nodes, registry)
    finally:
        if registry is not None:
            registry.close(timeout=5)
        cluster.close()
        for n in nodes:
            n.agent.stop(0)
            n.sim.stop()
        db.close()


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    """Node 0 has llama3.2:1b and an embedder (big disk); node 1 has nothing (small
    disk). Both can pull from the simulator's default catalog."""
    with running_cluster([("llama3.2:1b,nomic-embed-text[embed]", 100.0),
                          ("", 3.0)]) as c:
        yield c

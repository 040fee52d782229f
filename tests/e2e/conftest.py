"""A live cluster on loopback: simulators, agents in front of them, and a proxy."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.sim import SimConfig, Simulator, parse_models_spec
from tests.support import wait_until  # noqa: F401

MODELS = "llama3.2:1b,qwen2.5:0.5b,nomic-embed-text[embed]"


@dataclass
class Cluster:
    sims: list
    agents: list
    proxy: Proxy
    data_dir: object
    extra: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url


def idle(proxy) -> bool:
    """Nothing held: no relay, no running call, no active batch, no slot, no channel."""
    d = proxy.dispatcher
    return (not d._relays and not d._running and d._active == 0
            and not proxy.scheduler.slots_in_use() and len(proxy.hub) == 0)


def start_nodes(n: int, models: str = MODELS, parallel: int = 4, **sim_kw):
    sims, agents = [], []
    for _ in range(n):
        sim = Simulator(SimConfig(models=parse_models_spec(models), parallel=parallel, **sim_kw),
                        host="127.0.0.1", port=0).start()
        sims.append(sim)
        agents.append(Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url,
                                        parallel=parallel)).start())
    return sims, agents


@pytest.fixture
def make_cluster(tmp_path):
    made: list[Cluster] = []

    def make(nodes: int = 2, models: str = MODELS, parallel: int = 4, sim_kw=None,
             client_factory=None, **config_kw):
        sims, agents = start_nodes(nodes, models, parallel, **(sim_kw or {}))
        config = ProxyConfig(
            listen="127.0.0.1:0", data_dir=tmp_path / f"data{len(made)}",
            nodes=[a.address for a in agents], health_interval_s=1.0,
            dispatcher_threads=8, waitress_threads=32, retry_backoff_s=0.05,
        )
        for k, v in config_kw.items():
            setattr(config, k, v)
        proxy = Proxy(config, client_factory=client_factory).start()
        cluster = Cluster(sims, agents, proxy, config.data_dir)
        made.append(cluster)
        return cluster

    yield make
    for c in made:
        c.proxy.stop(grace_s=2)
        for a in c.agents:
            a.stop(0)
        for s in c.sims:
            s.stop()


@pytest.fixture
def cluster(make_cluster):
    return make_cluster()

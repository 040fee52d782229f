"""Fixtures for the simulator tests: real servers on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import pytest

from olol.sim import SimConfig, Simulator, parse_models_spec

MODELS = "llama3.2:1b,qwen3:0.6b,gemma3:1b[notools,nothink],nomic-embed-text[embed,dim=64]"


@pytest.fixture
def make_sim():
    """Build and start simulators with custom settings; all are stopped at teardown."""
    started: list[Simulator] = []

    def make(models: str = MODELS, **kwargs) -> Simulator:
        sim = Simulator(SimConfig(models=parse_models_spec(models), **kwargs), port=0)
        started.append(sim.start())
        return sim

    yield make
    for sim in started:
        sim.stop(timeout=2)


@pytest.fixture
def sim(make_sim) -> Simulator:
    return make_sim()

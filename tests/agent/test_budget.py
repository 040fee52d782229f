"""Declared disk/memory budgets: the status reports them instead of measured figures."""

from __future__ import annotations

import argparse

import pytest
import requests

from olol.agent.agent import Agent, AgentConfig, AgentConfigError
from olol.agent.cli import register
from olol.agent.hardware import DECLARED_BUDGET_NOTE, parse_bytes
from olol.rpc.client import NodeClient
from olol.sim import parse_models_spec
from tests.agent.conftest import make_sim


@pytest.fixture
def budget_node():
    sim = make_sim(models=parse_models_spec("llama3.2:1b[size=1.3G],qwen3:0.6b[size=523M]"))
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url,
                              disk_budget=4_000_000_000, memory_budget=2_000_000_000)).start()
    client = NodeClient(agent.address, timeout=10.0)
    yield sim, agent, client
    client.close()
    agent.stop(0)
    sim.stop()


def _sizes(sim) -> dict[str, int]:
    tags = requests.get(f"{sim.url}/api/tags", timeout=5).json()["models"]
    return {m["name"]: m["size"] for m in tags}


def test_disk_budget_minus_listed_models(budget_node):
    sim, _, client = budget_node
    disk = client.status()["disk"]
    assert disk["total_bytes"] == 4_000_000_000
    assert disk["free_bytes"] == 4_000_000_000 - sum(_sizes(sim).values())
    assert disk["used_bytes"] + disk["free_bytes"] == disk["total_bytes"]
    assert DECLARED_BUDGET_NOTE in disk["path"]


def test_free_disk_follows_pulls_and_copies(budget_node):
    sim, _, client = budget_node
    before = client.status()["disk"]["free_bytes"]
    list(client.pull({"model": "qwen2.5:0.5b"}))
    after = client.status()["disk"]["free_bytes"]
    assert before - after == _sizes(sim)["qwen2.5:0.5b"]
    # A copy shares its source's blobs: no new space used.
    client.copy({"source": "qwen2.5:0.5b", "destination": "myqwen"})
    assert client.status()["disk"]["free_bytes"] == after


def test_memory_budget_minus_loaded_models(budget_node):
    _, _, client = budget_node
    assert client.status()["memory"]["available_bytes"] == 2_000_000_000
    list(client.generate({"model": "qwen3:0.6b", "prompt": "hi", "stream": False}))
    status = client.status()
    loaded = sum(m["size"] for m in status["ollama"]["loaded"])
    assert loaded > 0
    assert status["memory"]["total_bytes"] == 2_000_000_000
    assert status["memory"]["available_bytes"] == 2_000_000_000 - loaded


def test_without_budget_the_measured_figures_stay(agent, client):
    disk = client.status()["disk"]
    assert DECLARED_BUDGET_NOTE not in disk.get("path", "")


def test_invalid_budget_is_a_config_error():
    with pytest.raises(AgentConfigError, match="disk-budget"):
        AgentConfig(disk_budget=0).validate()
    with pytest.raises(AgentConfigError, match="memory-budget"):
        AgentConfig(memory_budget=-5).validate()


@pytest.mark.parametrize("text,value", [
    ("4G", 4_000_000_000), ("800M", 800_000_000), ("512Mi", 512 * 2**20), ("1000", 1000),
    ("1.5GB", 1_500_000_000), ("2k", 2000),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "G", "lots", "-1G", "4X"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_cli_flags(capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["worker", "--disk-budget", "10G", "--memory-budget", "8G"])
    assert (args.disk_budget, args.memory_budget) == (10_000_000_000, 8_000_000_000)
    assert parser.parse_args(["worker"]).disk_budget is None
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--disk-budget", "0"])
    assert "must be > 0" in capsys.readouterr().err

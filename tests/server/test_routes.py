"""Routes answered without the queue: probes, model lists, show, admin nodes API."""

from __future__ import annotations

import ollama
import openai
import pytest
import requests

from olol import __version__
from olol.agent.agent import Agent, AgentConfig
from olol.sim import parse_models_spec
from tests.server.conftest import build_ctx, make_sim, serve


@pytest.fixture(scope="module")
def second_node():
    """A second node with a model the first one lacks."""
    sim = make_sim(models=parse_models_spec("qwen2.5:0.5b,llama3.2:1b"))
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url)).start()
    yield agent, sim
    agent.stop(0)
    sim.stop()


@pytest.fixture(scope="module")
def served(agent, second_node):
    ctx = build_ctx([agent.address, second_node[0].address])
    with serve(ctx) as s:
        yield s


def test_root_and_version(served, sim):
    r = requests.get(f"{served.url}/", timeout=5)
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert requests.head(f"{served.url}/", timeout=5).status_code == 200
    r = requests.get(f"{served.url}/api/version", timeout=5)
    body = r.json()
    assert body["olol_version"] == __version__
    # the fleet's (oldest) Ollama version, so clients gate features on what nodes run
    node_version = requests.get(f"{sim.url}/api/version", timeout=5).json()["version"]
    assert body["version"] == node_version
    assert requests.head(f"{served.url}/api/version", timeout=5).status_code == 200


def test_tags_is_the_union_over_nodes(served):
    names = sorted(m.model for m in ollama.Client(host=served.url).list().models)
    assert names == ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"]
    r = requests.head(f"{served.url}/api/tags", timeout=5)
    assert r.status_code == 200


def test_ps_union_reflects_loaded_models(served, sim, agent):
    client = ollama.Client(host=sim.url)  # load a model on node 1 directly
    client.generate(model="llama3.2:1b", prompt="hi")
    served.ctx.cluster.refresh(agent.address, timeout=5)
    loaded = [m.model for m in ollama.Client(host=served.url).ps().models]
    assert "llama3.2:1b" in loaded


def test_show_is_forwarded_to_a_node_that_has_the_model(served):
    shown = ollama.Client(host=served.url).show("qwen2.5:0.5b")
    assert shown.modelinfo is not None
    assert shown.details.family
    r = requests.post(f"{served.url}/api/show", json={"name": "llama3.2:1b"}, timeout=5)
    assert r.status_code == 200 and "model_info" in r.json()


def test_openai_models(served):
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"]
    model = client.models.retrieve("qwen2.5:0.5b")
    assert model.id == "qwen2.5:0.5b" and model.owned_by == "library"


def test_admin_nodes_add_list_remove(agent):
    ctx = build_ctx([])
    with serve(ctx) as s:
        base = f"{s.url}/olol/v1/nodes"
        assert requests.get(base, timeout=5).json() == {"nodes": []}
        r = requests.post(base, json={"address": agent.address}, timeout=5)
        assert r.status_code == 201 and r.json()["address"] == agent.address
        assert requests.post(base, json={"address": agent.address}, timeout=5).status_code == 200
        r = requests.post(base, json={"address": "no port"}, timeout=5)
        assert r.status_code == 400 and "host:port" in r.json()["error"].lower()
        r = requests.post(base, json={}, timeout=5)
        assert r.status_code == 400
        assert [n["address"] for n in requests.get(base, timeout=5).json()["nodes"]] == [
            agent.address
        ]
        assert ctx.db.count("servers", {"address": agent.address}) == 1
        r = requests.delete(f"{base}/{agent.address}", timeout=5)
        assert r.status_code == 200
        assert requests.delete(f"{base}/{agent.address}", timeout=5).status_code == 404
        assert requests.get(base, timeout=5).json() == {"nodes": []}


def test_health_and_queue_stats(served):
    r = requests.get(f"{served.url}/olol/v1/health", timeout=5)
    assert r.json()["status"] == "ok"
    r = requests.get(f"{served.url}/olol/v1/queue", timeout=5)
    assert r.status_code == 200 and isinstance(r.json(), dict)

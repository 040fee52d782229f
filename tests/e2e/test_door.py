"""Inputs that used to give 500 "internal error" through a live proxy (issue 9, item 2)."""

from __future__ import annotations

import json

import ollama
import pytest
import requests

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def deep(n: int, kind: str) -> object:
    value: object = 1
    for _ in range(n):
        value = [value] if kind == "list" else {"a": value}
    return value


CASES = [
    # (path, raw body, status, expected error text or None for success)
    ("/api/generate", '{"model":"llama3.2:1b","prompt":"x","options":{"seed":1e20}}',
     400, 'option "seed" must be of type integer'),
    ("/api/generate",
     '{"model":"llama3.2:1b","prompt":"x","options":{"seed":-9223372036854776833}}',
     400, 'option "seed" must be of type integer'),
    ("/api/generate", '{"model":"llama3.2:1b","prompt":"x","options":{"temperature":0,'
     '"top_p":1e300},"stream":false}', 200, None),
    ("/api/embed", '{"model":"nomic-embed-text","input":"x","options":{"top_p":1e300}}',
     200, None),
    ("/api/chat", '{"model":"llama3.2:1b","stream":false,'
     '"messages":[{"role":"user","content":"\\ud800"}]}', 200, None),
    ("/api/generate", json.dumps({"model": "llama3.2:1b", "prompt": "x",
                                  "format": deep(300, "list")}), 400, "exceeded max depth"),
    ("/api/generate", json.dumps({"model": "llama3.2:1b", "prompt": "x",
                                  "format": deep(900, "dict")}), 400, "exceeded max depth"),
    ("/v1/chat/completions", '{"model":"llama3.2:1b","messages":[null]}',
     400, "invalid message content type: <nil>"),
    ("/api/pull", '{"model":"."}', 400, "invalid model name"),
    ("/api/pull", '{"model":"x/y/."}', 400, "invalid model name"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from olol.context import ProxyConfig
    from olol.proxy import Proxy
    from tests.e2e.conftest import MODELS, start_nodes

    sims, agents = start_nodes(1, MODELS)
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("data"),
                              nodes=[a.address for a in agents])).start()
    yield proxy
    proxy.stop(grace_s=2)
    for a in agents:
        a.stop(0)
    for s in sims:
        s.stop()


@pytest.mark.parametrize("path, raw, status, message", CASES)
def test_no_input_gives_a_500(live, path, raw, status, message):
    r = requests.post(live.url + path, data=raw, timeout=20,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text[:300]
    if message is not None:
        error = r.json()["error"]
        text = error["message"] if isinstance(error, dict) else error
        assert text == message
        if path.startswith("/v1/"):
            assert error["type"] == "invalid_request_error"
    assert len(live.hub) == 0
    assert ollama.Client(host=live.url).chat(**CHAT, options={"num_predict": 2}).done


def test_a_known_model_whose_nodes_are_down_is_503_with_retry_after(make_cluster):
    c = make_cluster(nodes=1, failure_threshold=1)
    client = ollama.Client(host=c.url)
    assert client.chat(**CHAT, options={"num_predict": 2}).done
    c.agents[0].stop(0)
    from tests.support import wait_until

    assert wait_until(lambda: not c.proxy.cluster.healthy_nodes(), timeout=15)
    r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": False}, timeout=10)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "no reachable node" in r.json()["error"]
    r = requests.post(c.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["message"].startswith('model "llama3.2:1b"')
    # a model nobody ever had is still 404
    r = requests.post(c.url + "/api/chat", json={**CHAT, "model": "nosuch:1b"}, timeout=10)
    assert r.status_code == 404


def test_keep_alive_0_unloads_the_model_on_every_node_that_has_it(make_cluster):
    c = make_cluster(nodes=2)
    for sim in c.sims:  # loaded on both nodes
        requests.post(sim.url + "/api/generate", json={"model": "llama3.2:1b"}, timeout=10)
    loaded = lambda sim: [m["name"] for m in requests.get(sim.url + "/api/ps", timeout=5)  # noqa: E731
                          .json()["models"]]
    assert all("llama3.2:1b" in loaded(sim) for sim in c.sims)
    r = requests.post(c.url + "/api/generate", json={"model": "llama3.2:1b", "keep_alive": 0},
                      timeout=20)
    assert r.status_code == 200
    assert r.json()["done"] is True and r.json()["done_reason"] == "unload"
    assert all("llama3.2:1b" not in loaded(sim) for sim in c.sims)
    assert requests.get(c.url + "/api/ps", timeout=5).json()["models"] == []

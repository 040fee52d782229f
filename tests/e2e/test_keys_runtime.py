"""API keys managed while the proxy serves, and readiness for load balancers
(issue 12 items 7 and 2), against a live proxy with keys enabled."""

from __future__ import annotations

import json

import pytest
import requests

from olol.cli import main as olol_main
from olol.context import ProxyConfig
from olol.keys import KeyStore
from olol.proxy import Proxy
from tests.e2e.conftest import MODELS, start_nodes

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "stream": False}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    sims, agents = start_nodes(1, MODELS)
    data = tmp_path_factory.mktemp("data")
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=data, keys_enabled=True,
                              nodes=[a.address for a in agents])).start()
    keys = proxy.context.keys or KeyStore(proxy.db, proxy.clock)
    admin_id, admin = keys.create("first admin", admin=True)
    proxy.admin_id, proxy.admin = admin_id, admin
    yield proxy
    proxy.stop(grace_s=2)
    for a in agents:
        a.stop(0)
    for s in sims:
        s.stop()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_key_created_and_revoked_while_serving(served):
    url = served.url
    r = requests.post(url + "/olol/v1/keys", json={"name": "ci", "default_priority": 3},
                      headers=bearer(served.admin), timeout=10)
    assert r.status_code == 201
    made = r.json()
    assert made["name"] == "ci" and made["admin"] is False and made["key"].startswith("olol-")
    assert r.headers["Location"] == f"/olol/v1/keys/{made['id']}"
    assert requests.post(url + "/api/chat", json=CHAT, headers=bearer(made["key"]),
                         timeout=30).status_code == 200
    listed = requests.get(url + "/olol/v1/keys", headers=bearer(served.admin), timeout=10).json()
    row = next(k for k in listed["keys"] if k["id"] == made["id"])
    assert "key" not in row and "hash" not in row and row["last_used_at"]
    # a non-admin key cannot manage keys
    assert requests.get(url + "/olol/v1/keys", headers=bearer(made["key"]),
                        timeout=10).status_code == 403
    r = requests.delete(url + f"/olol/v1/keys/{made['id']}", headers=bearer(served.admin),
                        timeout=10)
    assert r.status_code == 200 and r.json() == {"revoked": made["id"]}
    r = requests.post(url + "/api/chat", json=CHAT, headers=bearer(made["key"]), timeout=30)
    assert r.status_code == 401  # its next request, with no restart
    assert requests.delete(url + "/olol/v1/keys/key_nope", headers=bearer(served.admin),
                           timeout=10).status_code == 404


@pytest.mark.parametrize("body,message", [
    ({"name": ""}, "needs a name"), ({"name": 5}, "name must be a string"),
    ({"name": "x", "admin": "yes"}, "admin must be"),
    ({"name": "x", "default_priority": 1000}, "default_priority"),
])
def test_bad_key_requests_are_400(served, body, message):
    r = requests.post(served.url + "/olol/v1/keys", json=body, headers=bearer(served.admin),
                      timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]


def test_the_last_admin_key_cannot_be_revoked(served):
    r = requests.delete(served.url + f"/olol/v1/keys/{served.admin_id}",
                        headers=bearer(served.admin), timeout=10)
    assert r.status_code == 409 and "last active admin key" in r.json()["error"]
    assert requests.get(served.url + "/olol/v1/keys", headers=bearer(served.admin),
                        timeout=10).status_code == 200


def test_the_cli_goes_through_the_running_proxy(served, monkeypatch, capsys):
    monkeypatch.setenv("OLOL_API_KEY", served.admin)
    monkeypatch.setenv("OLOL_URL", served.url)
    data = str(served.config.data_dir)
    assert olol_main(["keys", "create", "from-cli", "--data-dir", data, "--json"]) == 0
    captured = capsys.readouterr()
    assert "asking the proxy" in captured.err  # the folder is the running proxy's
    made = json.loads(captured.out)
    assert requests.post(served.url + "/api/chat", json=CHAT, headers=bearer(made["key"]),
                         timeout=30).status_code == 200
    assert olol_main(["keys", "ls", "--url", served.url, "--json"]) == 0
    assert made["id"] in {k["id"] for k in json.loads(capsys.readouterr().out)}
    assert olol_main(["keys", "revoke", made["id"], "--url", served.url]) == 0
    assert requests.post(served.url + "/api/chat", json=CHAT, headers=bearer(made["key"]),
                         timeout=30).status_code == 401
    monkeypatch.setenv("OLOL_API_KEY", "olol-wrong")
    assert olol_main(["keys", "ls", "--url", served.url]) == 1
    assert "OLOL_API_KEY" in capsys.readouterr().err


def test_ready_when_a_node_is_healthy(served):
    r = requests.get(served.url + "/olol/v1/ready", timeout=10)  # no key needed
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "healthy_nodes": 1, "nodes": 1}


def test_not_ready_without_a_healthy_node(tmp_path):
    import socket

    with socket.socket() as s:  # a port where nothing answers
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=tmp_path / "a", keys_enabled=True,
                           nodes=[dead], health_timeout_s=0.5)) as proxy:
        r = requests.get(proxy.url + "/olol/v1/ready", timeout=10)
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not ready" and body["healthy_nodes"] == 0
        assert dead in body["reasons"][0]
        assert requests.get(proxy.url + "/olol/v1/health", timeout=10).status_code == 200
    with Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=tmp_path / "b")) as proxy:
        r = requests.get(proxy.url + "/olol/v1/ready", timeout=10)
        assert r.status_code == 503 and "no node is configured" in r.json()["reasons"][0]


def test_readiness_flips_with_node_health(make_cluster):
    import time

    c = make_cluster(nodes=1)
    assert requests.get(c.url + "/olol/v1/ready", timeout=10).status_code == 200
    for agent in c.agents:
        agent.stop(0)
    deadline = time.monotonic() + 30
    while requests.get(c.url + "/olol/v1/ready", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "still ready 30 s after its only node stopped"
        time.sleep(0.2)


def test_two_active_keys_cannot_share_a_name(served):
    r = requests.post(served.url + "/olol/v1/keys", json={"name": "first admin"},
                      headers=bearer(served.admin), timeout=10)
    assert r.status_code == 400 and "already named" in r.json()["error"]

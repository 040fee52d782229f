"""The models and maintenance admin API under /olol/v1 against a live front door."""

from __future__ import annotations

import dataclasses

import orjson
import requests

from olol.maintenance import MaintenanceJobs
from tests.models_api.conftest import running_cluster, serve

API = "/olol/v1"


def test_models_status_lists_where_models_live(two_nodes):
    c = two_nodes
    resp = requests.get(c.url + API + "/models", timeout=10)
    assert resp.status_code == 200
    data = resp.json()
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["llama3.2:1b"]["nodes"] == [c.nodes[0].address]
    assert by_name["nomic-embed-text:latest"]["nodes"] == [c.nodes[0].address]
    assert data["pulls"] == []
    one = requests.get(c.url + API + "/models/llama3.2:1b", timeout=10)
    assert one.status_code == 200 and one.json()["name"] == "llama3.2:1b"
    missing = requests.get(c.url + API + "/models/absent:1b", timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'absent:1b' not found"})
    bad = requests.get(c.url + API + "/models/bad%20name", timeout=10)
    assert bad.status_code == 400


def test_admin_pull_streams_and_targets_nodes(two_nodes):
    c = two_nodes
    target = c.nodes[1].address
    with requests.post(c.url + API + "/models/pull",
                       json={"model": "qwen3:0.6b", "nodes": [target]},
                       stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        records = [orjson.loads(line) for line in resp.iter_lines() if line]
    assert records[-1] == {"status": "success", "nodes": [target]}
    assert {r["node"] for r in records if "digest" in r} == {target}
    assert "qwen3:0.6b" in c.nodes[1].models()
    status = requests.get(c.url + API + "/models/qwen3:0.6b", timeout=10).json()
    assert status["nodes"] == [target]
    # not streamed
    resp = requests.post(c.url + API + "/models/pull",
                         json={"model": "all-minilm", "stream": False}, timeout=30)
    assert resp.status_code == 200 and resp.json()["status"] == "success"
    resp = requests.post(c.url + API + "/models/pull",
                         json={"model": "all-minilm", "nodes": ["nowhere:1"]}, timeout=30)
    assert resp.status_code == 400 and "unknown node" in resp.json()["error"]


def test_last_copy_is_refused_unless_forced(two_nodes):
    c = two_nodes
    url = c.url + API + "/models/llama3.2:1b"
    resp = requests.delete(url, timeout=10)
    assert resp.status_code == 409
    assert "last" in resp.json()["error"]
    assert "llama3.2:1b" in c.nodes[0].models()  # untouched
    # with two copies, one may go without force
    both = [n.address for n in c.nodes]
    requests.post(c.url + API + "/models/pull",
                  json={"model": "llama3.2:1b", "nodes": both, "stream": False}, timeout=30)
    assert all("llama3.2:1b" in n.models() for n in c.nodes)
    resp = requests.delete(url, params={"nodes": c.nodes[1].address}, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["results"] == {c.nodes[1].address: {"status": "deleted"}}
    assert "llama3.2:1b" not in c.nodes[1].models()
    # the remaining one is the last copy again: forced removal
    assert requests.delete(url, timeout=10).status_code == 409
    resp = requests.delete(url, params={"force": "1"}, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["results"] == {c.nodes[0].address: {"status": "deleted"}}
    assert not any("llama3.2:1b" in n.models() for n in c.nodes)
    gone = requests.delete(url, params={"force": "1"}, timeout=10)
    assert gone.status_code == 404


def test_optimize_plans_without_changing_and_applies_on_request():
    # copies=2 and one holder: the plan adds a copy on the node with room
    with running_cluster([("llama3.2:1b", 100.0), ("", 50.0)], copies=2) as c:
        before = [n.models() for n in c.nodes]
        resp = requests.post(c.url + API + "/models/optimize", json={}, timeout=30)
        assert resp.status_code == 200
        data = resp.json()
        assert data["applied"] is False and "results" not in data
        adds = [a for a in data["plan"]["actions"] if a["action"] == "add"]
        assert {(a["model"], a["node"]) for a in adds} == {("llama3.2:1b", c.nodes[1].address)}
        assert all(a.get("reason") for a in data["plan"]["actions"])
        assert [n.models() for n in c.nodes] == before  # a plan changes nothing
        resp = requests.post(c.url + API + "/models/optimize", json={"apply": True}, timeout=60)
        data = resp.json()
        assert data["applied"] is True and data["results"]["done"] == 1
        assert "llama3.2:1b" in c.nodes[1].models()
        bad = requests.post(c.url + API + "/models/optimize", json={"apply": "yes"}, timeout=10)
        assert bad.status_code == 400


def test_sync_and_maintenance_endpoints():
    jobs = MaintenanceJobs(None)
    with running_cluster([("llama3.2:1b", 10.0)], maintenance=jobs) as c:
        jobs.add("registry-sync", c.registry.synchronize_models, 60)

        def broken() -> None:
            raise RuntimeError("broken on purpose")

        jobs.add("broken", broken, 30)
        resp = requests.post(c.url + API + "/models/sync", timeout=10)
        assert resp.status_code == 200 and "models" in resp.json()
        listing = requests.get(c.url + API + "/maintenance", timeout=10).json()["jobs"]
        assert [j["id"] for j in listing] == ["broken", "registry-sync"]
        assert all(j["outcome"] is None and j["runs"] == 0 for j in listing)
        ran = requests.post(c.url + API + "/maintenance/broken/run", timeout=10).json()
        assert ran["outcome"] == "error" and ran["failures"] == 1
        ran = requests.post(c.url + API + "/maintenance/registry-sync/run", timeout=10).json()
        assert ran["outcome"] == "ok" and ran["runs"] == 1
        resp = requests.post(c.url + API + "/maintenance/nope/run", timeout=10)
        assert resp.status_code == 404


def test_registry_missing_answers_503(two_nodes):
    # the app's services are frozen: an app assembled without a registry
    with serve(dataclasses.replace(two_nodes.ctx, registry=None)) as url:
        resp = requests.get(url + API + "/models", timeout=10)
        assert resp.status_code == 503 and "registry" in resp.json()["error"]

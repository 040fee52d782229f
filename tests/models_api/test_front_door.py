"""Model CRUD through the front door with the official ``ollama`` client, against real
agents and simulators."""

from __future__ import annotations

import hashlib

import httpx
import ollama
import orjson
import pytest
import requests

from tests.models_api.conftest import running_cluster, wait_until


def client(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=30)


def raw_pull(url: str, model: str, nodes: str | None = None) -> list[dict]:
    """The NDJSON records of a pull, with olol's extra fields (the client drops them)."""
    headers = {"X-OLOL-Nodes": nodes} if nodes else {}
    with requests.post(url + "/api/pull", json={"model": model}, headers=headers,
                       stream=True, timeout=30) as resp:
        assert resp.status_code == 200, resp.text
        return [orjson.loads(line) for line in resp.iter_lines() if line]


def tags(url: str) -> set[str]:
    return {m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]}


def test_pull_streams_ollama_progress_and_lands_on_a_node(two_nodes):
    c = two_nodes
    records = list(client(c.url).pull("qwen2.5:0.5b", stream=True))
    statuses = [r.status for r in records]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    layer = [r for r in records if r.digest]
    assert layer, "no per-layer progress"
    for r in layer:
        assert r.digest.startswith("sha256:") and r.total and r.total > 0
        assert r.status == f"pulling {r.digest[7:19]}"
    # every layer reaches completion
    assert {r.digest for r in layer if r.completed == r.total} == {r.digest for r in layer}
    # copies=1: exactly one node has it, both in the simulator and in /api/tags
    holders = [n for n in c.nodes if "qwen2.5:0.5b" in n.models()]
    assert len(holders) == 1
    assert "qwen2.5:0.5b" in tags(c.url)


def test_pull_non_streamed_and_unknown_model(two_nodes):
    cl = client(two_nodes.url)
    final = cl.pull("all-minilm", stream=False)
    assert final.status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        cl.pull("no-such-model:7b", stream=False)
    assert err.value.status_code == 404  # Ollama says 500; the proxy passes no 500 on
    assert "file does not exist" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        list(cl.pull("no-such-model:7b", stream=True))
    assert "file does not exist" in err.value.error


def test_pull_raw_ndjson_shape(two_nodes):
    with requests.post(two_nodes.url + "/api/pull", json={"model": "gemma3:1b"},
                       stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        lines = list(resp.iter_lines())
    assert all(lines), "blank line in an NDJSON stream"
    records = [orjson.loads(line) for line in lines]
    assert records[0]["status"] == "pulling manifest"
    assert records[-1]["status"] == "success"
    assert all("error" not in r for r in records)
    assert sum(r["status"] == "success" for r in records) == 1
    progress = [r for r in records if "digest" in r]
    addresses = {n.address for n in two_nodes.nodes}
    for r in progress:
        assert set(r) >= {"status", "digest", "total", "nodes_pulling", "node_completed"}
        assert r["status"] == f"pulling {r['digest'][7:19]}"
        assert set(r["node_completed"]) <= addresses
    # one coherent progress per layer: the slowest node's, never going back
    per_digest: dict[str, list[int]] = {}
    for r in progress:
        per_digest.setdefault(r["digest"], []).append(r.get("completed", 0))
    for seen in per_digest.values():
        assert seen == sorted(seen) and len(seen) == len(set(seen))
    last = progress[-1]
    assert last["completed"] == last["total"] > 0


def test_pull_targets_nodes_from_header(two_nodes):
    c = two_nodes
    target = c.nodes[1].address
    records = list(ollama.Client(host=c.url, headers={"X-OLOL-Nodes": target})
                   .pull("qwen3:0.6b", stream=True))
    assert records[-1].status == "success"
    assert "qwen3:0.6b" in c.nodes[1].models()
    assert "qwen3:0.6b" not in c.nodes[0].models()
    # both nodes at once
    both = f"{c.nodes[0].address}, {c.nodes[1].address}"
    records = raw_pull(c.url, "all-minilm", both)
    assert records[-1] == {"status": "success", "nodes": [n.address for n in c.nodes]}
    layers = [r for r in records if "digest" in r]
    assert layers and all(r["nodes_pulling"] == 2 for r in layers)
    assert set(layers[-1]["node_completed"]) == {n.address for n in c.nodes}
    assert all("all-minilm:latest" in n.models() for n in c.nodes)


def test_bad_nodes_header_and_bad_names(two_nodes):
    url = two_nodes.url
    for header in ("nonsense", "127.0.0.1:1", ",,,"):
        resp = requests.post(url + "/api/pull", json={"model": "qwen3:0.6b"},
                             headers={"X-OLOL-Nodes": header}, timeout=10)
        assert resp.status_code == 400
        assert "X-OLOL-Nodes" in resp.json()["error"]
    resp = requests.post(url + "/api/pull", json={"model": "bad name!"}, timeout=10)
    assert (resp.status_code, resp.json()) == (400, {"error": "invalid model name"})
    resp = requests.post(url + "/api/pull", data=b"{not json", timeout=10)
    assert resp.status_code == 400 and isinstance(resp.json()["error"], str)
    resp = requests.delete(url + "/api/delete", json={"model": "a b"}, timeout=10)
    assert (resp.status_code, resp.json()) == (400, {"error": 'name "a b" is invalid'})
    resp = requests.post(url + "/api/copy", json={"source": "llama3.2:1b",
                                                  "destination": "x y"}, timeout=10)
    assert (resp.status_code, resp.json()) == (400, {"error": 'destination "x y" is invalid'})


def test_copy_then_delete_everywhere(two_nodes):
    c = two_nodes
    cl = client(c.url)
    assert cl.copy("llama3.2:1b", "my-llama").status == "success"
    assert "my-llama:latest" in c.nodes[0].models()
    assert "my-llama:latest" in tags(c.url)
    # the copy is usable like any model
    assert "completion" in cl.show("my-llama").capabilities
    assert cl.delete("my-llama").status == "success"
    assert "my-llama:latest" not in c.nodes[0].models()
    assert "my-llama:latest" not in tags(c.url)
    with pytest.raises(ollama.ResponseError) as err:
        cl.delete("my-llama")
    assert (err.value.status_code, err.value.error) == (404, "model 'my-llama' not found")
    with pytest.raises(ollama.ResponseError) as err:
        cl.copy("nothing-here", "x")
    assert (err.value.status_code, err.value.error) == (404, 'model "nothing-here" not found')


def test_delete_reaches_every_holder_unless_targeted(two_nodes):
    c = two_nodes
    both = ",".join(n.address for n in c.nodes)
    list(ollama.Client(host=c.url, headers={"X-OLOL-Nodes": both})
         .pull("qwen2.5:0.5b", stream=True))
    assert all("qwen2.5:0.5b" in n.models() for n in c.nodes)
    # targeted: only node 1 loses it
    resp = requests.delete(c.url + "/api/delete", json={"model": "qwen2.5:0.5b"},
                           headers={"X-OLOL-Nodes": c.nodes[1].address}, timeout=10)
    assert (resp.status_code, resp.content) == (200, b"")
    assert "qwen2.5:0.5b" in c.nodes[0].models()
    assert "qwen2.5:0.5b" not in c.nodes[1].models()
    # an Ollama client delete may remove the last copy (explicit operator request)
    assert client(c.url).delete("qwen2.5:0.5b").status == "success"
    assert not any("qwen2.5:0.5b" in n.models() for n in c.nodes)


def test_create_with_a_blob_lands_on_the_blob_node(two_nodes, tmp_path):
    c = two_nodes
    path = tmp_path / "model.gguf"
    data = b"GGUF" + bytes(range(256)) * 64
    path.write_bytes(data)
    cl = client(c.url)
    digest = cl.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    holder = c.ctx.db.search_one("model_blobs", {"digest": digest})
    assert holder is not None and holder["size"] == len(data)
    # HEAD finds it through the proxy
    assert requests.head(f"{c.url}/api/blobs/{digest}", timeout=10).status_code == 200
    records = list(cl.create(model="my-gguf", files={"model.gguf": digest}, stream=True))
    assert records[-1].status == "success"
    node = c.node(holder["node"])
    assert "my-gguf:latest" in node.models()
    others = [n for n in c.nodes if n is not node]
    assert all("my-gguf:latest" not in n.models() for n in others)
    assert "my-gguf:latest" in tags(c.url)
    # non-streamed create from an existing model
    final = cl.create(model="tuned", from_="llama3.2:1b", system="be brief")
    assert final.status == "success"
    assert "tuned:latest" in c.nodes[0].models()


def test_blob_errors(two_nodes):
    url = two_nodes.url
    missing = "sha256:" + "0" * 64
    resp = requests.head(f"{url}/api/blobs/{missing}", timeout=10)
    assert resp.status_code == 404
    resp = requests.post(f"{url}/api/blobs/{missing}", data=b"hello", timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("digest mismatch")
    resp = requests.post(f"{url}/api/blobs/sha256:xyz", data=b"hello", timeout=10)
    assert resp.status_code == 400 and "invalid digest" in resp.json()["error"]
    with pytest.raises(ollama.ResponseError) as err:
        client(url).create(model="x", files={"m.gguf": missing})
    assert err.value.status_code == 400 and "not found" in err.value.error


def test_push_runs_on_a_holder_and_streams(two_nodes):
    c = two_nodes
    cl = client(c.url)
    records = list(cl.push("llama3.2:1b", stream=True))
    assert records[0].status == "retrieving manifest"
    assert records[-1].status == "success"
    assert any(r.status == "starting upload" for r in records)
    assert cl.push("llama3.2:1b").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        cl.push("absent:1b")
    assert err.value.status_code == 404


def test_model_routes_need_an_admin_key_when_keys_are_enabled():
    with running_cluster([("llama3.2:1b", 50.0)], keys_enabled=True) as c:
        user = c.ctx.keys.create("user", admin=False)
        admin = c.ctx.keys.create("ops", admin=True)
        user_key = user[1]
        admin_key = admin[1]
        resp = httpx.post(c.url + "/api/pull", json={"model": "all-minilm"}, timeout=10)
        assert resp.status_code == 401
        for path, method in (("/api/pull", "POST"), ("/api/copy", "POST"),
                             ("/api/delete", "DELETE"), ("/olol/v1/models", "GET"),
                             ("/olol/v1/maintenance", "GET")):
            resp = httpx.request(method, c.url + path, json={"model": "llama3.2:1b"},
                                 headers={"Authorization": f"Bearer {user_key}"}, timeout=10)
            assert resp.status_code == 403, path
            assert resp.json() == {"error": "this endpoint needs an admin API key"}
        cl = ollama.Client(host=c.url, headers={"Authorization": f"Bearer {admin_key}"})
        assert cl.pull("all-minilm").status == "success"
        assert cl.copy("llama3.2:1b", "kept").status == "success"
        # inference-only keys still see the catalogue
        resp = httpx.get(c.url + "/api/tags", headers={"Authorization": f"Bearer {user_key}"})
        assert resp.status_code == 200


def test_concurrent_pulls_of_one_model_share_one_operation():
    import threading

    # ~0.4 s per node pull: long enough for the second request to join the first
    with running_cluster([("", 50.0), ("", 50.0)], pull_bytes_per_second=1e9) as c:
        results: dict[str, list[dict]] = {}

        def pull(name: str) -> None:
            results[name] = raw_pull(c.url, "qwen2.5:0.5b")

        first = threading.Thread(target=pull, args=("first",), name="test-pull-1")
        first.start()
        assert wait_until(lambda: c.registry.active_pulls() != [], timeout=5)
        second = threading.Thread(target=pull, args=("second",), name="test-pull-2")
        second.start()
        first.join(30)
        second.join(30)
        assert results["first"][-1]["status"] == "success"
        # the late joiner got the complete, ordered stream (replay + live)
        assert results["second"] == results["first"]
        by_digest: dict[str, list[int]] = {}
        for r in results["first"]:
            if r.get("completed"):
                by_digest.setdefault(r["digest"], []).append(r["completed"])
        assert max(len(v) for v in by_digest.values()) > 2  # really streamed in steps
        assert all(v == sorted(v) for v in by_digest.values())
        assert sum("qwen2.5:0.5b" in n.models() for n in c.nodes) == 1


def test_a_pull_onto_two_paced_nodes_reads_as_one_ollama_pull():
    """Both nodes pull the same layers at once; the official client sees one progress per
    layer that never goes back, and one success."""
    with running_cluster([("", 100.0), ("", 100.0)], pull_bytes_per_second=200e6) as c:
        both = ",".join(n.address for n in c.nodes)
        records = list(ollama.Client(host=c.url, headers={"X-OLOL-Nodes": both}, timeout=30)
                       .pull("all-minilm", stream=True))
        assert [r.status for r in records].count("success") == 1
        assert records[-1].status == "success" and records[0].status == "pulling manifest"
        per_digest: dict[str, list[int]] = {}
        for r in records:
            if r.digest:
                per_digest.setdefault(r.digest, []).append(r.completed or 0)
        assert per_digest
        for seen in per_digest.values():
            assert seen == sorted(seen), seen
            assert seen[-1] > 0
        assert all("all-minilm:latest" in n.models() for n in c.nodes)

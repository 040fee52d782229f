"""``CoherentProgress``: per-node pull records folded into one Ollama-shaped stream."""

from __future__ import annotations

from olol.registry.pull_view import CoherentProgress, coherent

D = "sha256:" + "ab" * 32


def layer(node: str, completed: int, total: int = 100) -> dict:
    rec = {"status": f"pulling {D[7:19]}", "digest": D, "total": total, "node": node}
    if completed:
        rec["completed"] = completed
    return rec


def start(*nodes: str) -> dict:
    return {"status": "pulling manifest", "model": "m", "nodes": list(nodes), "size": 100}


def test_interleaved_nodes_give_the_slowest_progress_never_going_back():
    log = [start("a", "b"), layer("a", 0), layer("b", 0), layer("a", 50), layer("b", 10),
           layer("a", 100), layer("b", 60), layer("b", 100),
           {"status": "verifying sha256 digest", "node": "a"},
           {"status": "node succeeded", "node": "a"},
           {"status": "verifying sha256 digest", "node": "b"},
           {"status": "node succeeded", "node": "b"},
           {"status": "success", "nodes": ["a", "b"]}]
    out = list(coherent(log))
    progress = [r.get("completed", 0) for r in out if "digest" in r]
    assert progress == [0, 10, 60, 100]
    statuses = [r["status"] for r in out]
    assert statuses[0] == "pulling manifest" and statuses.count("pulling manifest") == 1
    assert statuses.count("verifying sha256 digest") == 1
    assert statuses.index("verifying sha256 digest") > statuses.index(f"pulling {D[7:19]}")
    assert statuses[-1] == "success" and statuses.count("success") == 1
    assert "node succeeded" not in statuses
    last_layer = [r for r in out if "digest" in r][-1]
    assert last_layer["node_completed"] == {"a": 100, "b": 100}
    assert last_layer["nodes_pulling"] == 2


def test_a_status_waits_for_every_live_node():
    view = CoherentProgress()
    view.feed(start("a", "b"))
    assert view.feed({"status": "writing manifest", "node": "a"}) == []
    assert view.feed({"status": "writing manifest", "node": "b"}) == [
        {"status": "writing manifest"}]
    assert view.feed({"status": "writing manifest", "node": "b"}) == []


def test_a_failed_node_is_reported_and_leaves_the_least():
    view = CoherentProgress()
    view.feed(start("a", "b"))
    view.feed(layer("a", 80))
    assert [r.get("completed") for r in view.feed(layer("b", 20))] == [20]
    out = view.feed({"status": "node failed", "node": "b", "node_error": "disk full"})
    assert out[0] == {"status": "node b failed: disk full", "node": "b",
                      "node_error": "disk full"}
    assert "error" not in out[0]
    assert [r["completed"] for r in out[1:] if "digest" in r] == [80]
    # a late record of the failed node changes nothing
    assert view.feed(layer("b", 30)) == []
    final = {"error": "pull of m failed on b", "nodes": ["a", "b"], "failed": {"b": "x"}}
    assert view.feed(final)[-1] == final

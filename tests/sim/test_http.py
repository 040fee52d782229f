"""Raw HTTP behaviour: framing, routes, errors, scheduling, faults."""

from __future__ import annotations

import json
import socket
import threading
import time

import requests


def wait_for(predicate, timeout=5.0):
    """Poll ``predicate`` until true or timeout (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def post(sim, path, body, **kw):
    return requests.post(sim.url + path, json=body, timeout=10, **kw)


def test_ndjson_framing_default_stream(sim):
    r = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "hi"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.headers["Transfer-Encoding"] == "chunked"
    lines = r.content.split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1])
    records = [json.loads(line) for line in lines[:-1]]
    assert all(not rec["done"] for rec in records[:-1])
    final = records[-1]
    assert final["done"] and final["done_reason"] == "stop" and final["response"] == ""
    assert final["created_at"].endswith("Z") and "T" in final["created_at"]
    assert set(final) >= {"total_duration", "load_duration", "prompt_eval_count",
                          "prompt_eval_duration", "eval_count", "eval_duration", "context"}
    assert "total_duration" not in records[0]


def test_chat_non_stream_content_type(sim):
    r = post(sim, "/api/chat", {"model": "llama3.2:1b", "stream": False,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.json()["message"]["content"]


def test_head_routes_root_version_404_405(sim):
    assert requests.get(sim.url + "/", timeout=5).text == "Ollama is running"
    assert requests.get(sim.url + "/api/version", timeout=5).json()["version"]
    for path in ("/", "/api/version", "/api/tags"):
        r = requests.head(sim.url + path, timeout=5)
        assert r.status_code == 200 and r.content == b""
    r = requests.get(sim.url + "/api/nothing", timeout=5)
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = requests.get(sim.url + "/api/generate", timeout=5)
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    r = requests.post(sim.url + "/api/delete", json={"model": "x"}, timeout=5)
    assert r.status_code == 405


def test_bad_json_and_missing_fields(sim):
    url = sim.url + "/api/generate"
    r = requests.post(url, data=b"{bad", timeout=5)
    assert r.status_code == 400
    assert r.json() == {"error": "invalid character 'b' looking for beginning of object key string"}
    r = requests.post(url, data=b"", timeout=5)
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    r = requests.post(url, data=b'{"model": "llama3.2:1b"', timeout=5)
    assert r.json() == {"error": "unexpected EOF"}
    r = requests.post(url, data=b"[1]", timeout=5)
    assert r.status_code == 400 and "cannot unmarshal array" in r.json()["error"]
    r = post(sim, "/api/chat", {"messages": []})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = post(sim, "/api/generate", {"prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x", "keep_alive": "3600"})
    assert r.status_code == 400 and "missing unit" in r.json()["error"]


def test_blobs_digest_check(sim):
    data = b"hello blob"
    import hashlib

    good = "sha256:" + hashlib.sha256(data).hexdigest()
    bad = "sha256:" + "0" * 64
    assert requests.head(f"{sim.url}/api/blobs/{good}", timeout=5).status_code == 404
    r = requests.post(f"{sim.url}/api/blobs/{bad}", data=data, timeout=5)
    assert r.status_code == 400
    assert r.json()["error"] == f'digest mismatch, expected "{bad}", got "{good}"'
    assert requests.post(f"{sim.url}/api/blobs/{good}", data=data, timeout=5).status_code == 201
    assert requests.post(f"{sim.url}/api/blobs/{good}", data=data, timeout=5).status_code == 200
    assert requests.head(f"{sim.url}/api/blobs/{good}", timeout=5).status_code == 200


def test_copy_delete_empty_200(sim):
    r = post(sim, "/api/copy", {"source": "llama3.2:1b", "destination": "c2"})
    assert (r.status_code, r.content) == (200, b"")
    r = requests.delete(sim.url + "/api/delete", json={"model": "c2"}, timeout=5)
    assert (r.status_code, r.content) == (200, b"")
    r = post(sim, "/api/copy", {"source": "llama3.2:1b", "destination": "bad name!"})
    assert (r.status_code, r.json()) == (400, {"error": 'destination "bad name!" is invalid'})


def test_determinism_with_seed(sim):
    body = {"model": "llama3.2:1b", "prompt": "seeded", "stream": False, "options": {"seed": 7}}
    a, b = post(sim, "/api/generate", body).json(), post(sim, "/api/generate", body).json()
    assert a["response"] == b["response"]
    other = post(sim, "/api/generate", {**body, "options": {"seed": 8}}).json()
    assert other["response"] != a["response"]


def test_num_predict_cuts_with_length(sim):
    body = {"model": "llama3.2:1b", "prompt": "p", "stream": False,
            "options": {"seed": 1, "num_predict": 3}}
    out = post(sim, "/api/generate", body).json()
    assert out["done_reason"] == "length" and out["eval_count"] == 3
    full = post(sim, "/api/generate", {**body, "options": {"seed": 1}}).json()
    assert full["done_reason"] == "stop" and full["eval_count"] > 3
    assert full["response"].startswith(out["response"])


def test_keep_alive_and_ps(sim):
    post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x", "keep_alive": -1,
                                "stream": False})
    (row,) = requests.get(sim.url + "/api/ps", timeout=5).json()["models"]
    assert row["expires_at"].startswith("2") and int(row["expires_at"][:4]) > 2200
    post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x", "keep_alive": "1h",
                                "stream": False})
    (row,) = requests.get(sim.url + "/api/ps", timeout=5).json()["models"]
    assert int(row["expires_at"][:4]) < 2200
    post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x", "keep_alive": 0,
                                "stream": False})
    # as in Ollama, the unload follows the answer: it may land just after it
    deadline = time.monotonic() + 10
    while requests.get(sim.url + "/api/ps", timeout=5).json()["models"]:
        assert time.monotonic() < deadline, "keep_alive 0 never unloaded the model"
        time.sleep(0.02)


def test_keep_alive_expiry_with_injected_clock():
    from olol.sim import SimConfig, Simulator, parse_models_spec

    now = [1000.0]
    sim = Simulator(SimConfig(models=parse_models_spec("m1")), clock=lambda: now[0]).start()
    try:
        post(sim, "/api/generate", {"model": "m1", "prompt": "x", "keep_alive": 30,
                                    "stream": False})
        assert len(requests.get(sim.url + "/api/ps", timeout=5).json()["models"]) == 1
        now[0] += 31
        assert requests.get(sim.url + "/api/ps", timeout=5).json()["models"] == []
        assert sim.stats()["model_unloads"] == 1
    finally:
        sim.stop()


def test_eviction_beyond_max_loaded(make_sim):
    sim = make_sim("a,b,c", max_loaded=2)
    for name in ("a", "b", "a", "c"):
        post(sim, "/api/generate", {"model": name, "prompt": "x", "stream": False})
        # the slot is released just after the answer is out, which the client may read
        # first: one request after the other, as the LRU order below assumes
        assert wait_for(lambda: sim.stats()["active_generations"] == 0)
    loaded = {m["name"] for m in requests.get(sim.url + "/api/ps", timeout=5).json()["models"]}
    assert loaded == {"a:latest", "c:latest"}  # b was the least recently used
    stats = sim.stats()
    assert (stats["model_loads"], stats["model_unloads"]) == (3, 1)


def test_queue_full_answers_503(make_sim):
    sim = make_sim("slow[ttft=5]", parallel=1, max_queue=1)
    body = {"model": "slow", "prompt": "x", "stream": False}
    results = []

    def call():
        try:
            results.append(post(sim, "/api/generate", body).status_code)
        except requests.RequestException as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=call, name=f"t-client-{i}", daemon=True) for i in range(2)]
    threads[0].start()
    assert wait_for(lambda: sim.stats()["active_generations"] == 1)
    threads[1].start()
    assert wait_for(lambda: sim.stats()["queued"] == 1)
    r = post(sim, "/api/generate", body)
    assert r.status_code == 503
    assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    assert sim.stats()["rejected_busy"] == 1
    sim.stop(timeout=2)
    for t in threads:
        t.join(timeout=5)


def _open_stream(sim, body):
    sock = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
    payload = json.dumps(body).encode()
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock


def test_disconnect_mid_stream_cancels_generation(make_sim):
    sim = make_sim("m[tps=20]")
    sock = _open_stream(sim, {"model": "m", "prompt": "long"})
    received = b""
    for _ in range(20):  # bounded: headers and the first record may arrive separately
        received += sock.recv(4096)
        if b'"done":false' in received:
            break
    assert b'"done":false' in received
    assert sim.stats()["active_generations"] == 1
    sock.close()
    assert wait_for(lambda: sim.stats()["generations_cancelled"] == 1)
    stats = sim.stats()
    assert stats["active_generations"] == 0 and stats["generations_completed"] == 0
    # The slot is free again: the next request completes.
    assert post(sim, "/api/generate", {"model": "m", "prompt": "x", "stream": False,
                                       "options": {"num_predict": 1}}).status_code == 200


def test_fault_fail_next(sim):
    sim.faults.fail_next(2, status=502, error="boom")
    for _ in range(2):
        r = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x"})
        assert (r.status_code, r.json()) == (502, {"error": "boom"})
    assert requests.get(sim.url + "/api/tags", timeout=5).status_code == 200
    assert post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x"}).status_code == 200


def test_fault_drop_next_stream(sim):
    sim.faults.drop_next_stream(1, after_chunks=2)
    with requests.post(sim.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "x"},
                       stream=True, timeout=5) as r:
        got = []
        try:
            for line in r.iter_lines():
                got.append(json.loads(line))
        except requests.RequestException:
            pass
    assert len(got) == 2 and not got[-1]["done"]
    assert wait_for(lambda: sim.stats()["generations_cancelled"] == 1)
    ok = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x"})
    assert json.loads(ok.content.splitlines()[-1])["done"]


def test_fault_hang_and_release(sim):
    sim.faults.hang_next(1)
    result = {}

    def call():
        result["status"] = post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x",
                                                       "stream": False}).status_code

    t = threading.Thread(target=call, name="t-hung-client", daemon=True)
    t.start()
    assert wait_for(lambda: sim.faults.hanging() == 1)
    assert "status" not in result
    sim.faults.release()
    t.join(timeout=5)
    assert result["status"] == 200


def test_faults_and_stats_over_http(sim):
    r = post(sim, "/_sim/faults", {"fail_next": 1, "status": 500, "error": "remote"})
    assert r.status_code == 200
    r = post(sim, "/api/chat", {"model": "llama3.2:1b", "messages": []})
    assert (r.status_code, r.json()) == (500, {"error": "remote"})
    post(sim, "/_sim/faults", {"hang_next": 1})
    post(sim, "/_sim/faults", {"clear": True})
    assert post(sim, "/api/generate", {"model": "llama3.2:1b", "prompt": "x",
                                       "stream": False}).status_code == 200
    # counted before the final record leaves: a client holding the answer sees it
    stats = requests.get(sim.url + "/_sim/stats", timeout=5).json()
    assert stats["generations_completed"] == 1 and stats["requests_total"] == 2
    assert post(sim, "/_sim/faults", {"fail_next": "x"}).status_code == 400


def test_keep_alive_connection_reuse(sim):
    with requests.Session() as s:
        for _ in range(3):
            r = s.post(sim.url + "/api/generate", timeout=5,
                       json={"model": "llama3.2:1b", "prompt": "x", "stream": False})
            assert r.status_code == 200
    assert sim.stats()["requests_total"] == 3


def test_pull_in_progress_not_listed_until_success(make_sim):
    # 398 MB at 2 GB/s: about 0.2 s of progress records for the weights layer.
    sim = make_sim("llama3.2:1b", pull_bytes_per_second=2e9)
    with requests.post(sim.url + "/api/pull", json={"model": "qwen2.5:0.5b"}, stream=True,
                       timeout=10) as r:
        lines = r.iter_lines()
        records = [json.loads(next(lines)) for _ in range(3)]
        assert records[0] == {"status": "pulling manifest"}
        assert "completed" not in records[1] and records[1]["total"] > 0
        names = {m["name"] for m in requests.get(sim.url + "/api/tags", timeout=5)
                 .json()["models"]}
        assert "qwen2.5:0.5b" not in names
        rest = [json.loads(line) for line in lines]
    assert rest[-1] == {"status": "success"}
    weights = records[1]["digest"]
    completed = [rec["completed"] for rec in records[2:] + rest
                 if rec.get("digest") == weights and "completed" in rec]
    assert len(completed) >= 2 and completed == sorted(completed)
    assert completed[-1] == records[1]["total"]
    names = {m["name"] for m in requests.get(sim.url + "/api/tags", timeout=5).json()["models"]}
    assert "qwen2.5:0.5b" in names


def test_stop_is_prompt_with_work_in_flight(make_sim):
    sim = make_sim("m[tps=2]")
    sim.faults.hang_next(1)
    sock = _open_stream(sim, {"model": "m", "prompt": "x"})
    hung = _open_stream(sim, {"model": "m", "prompt": "y"})
    assert wait_for(lambda: sim.stats()["active_generations"] == 1 or sim.faults.hanging())
    sim.stop(timeout=2)
    assert sim.stats()["active_generations"] == 0
    assert not [t for t in threading.enumerate() if t.name.startswith(f"olol-sim-http-{sim.port}")]
    sock.close()
    hung.close()

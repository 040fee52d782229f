"""Streams read by the HTTP thread itself (StreamRelay), through a live proxy, agent and
simulator: every way a stream ends gives back its slot, channel and running entry, and
leaves the right record in the queue."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import ollama
import requests

from tests.e2e.conftest import idle, wait_until

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Tell me a story."}]}


def test_concurrent_streams_complete_and_release_everything(make_cluster):
    c = make_cluster(nodes=2, models="llama3.2:1b[tps=400]", parallel=2)

    def one(i: int) -> tuple[str, list[dict]]:
        r = requests.post(c.url + "/api/chat", json={**CHAT, "options": {"num_predict": 20,
                          "seed": i}}, stream=True, timeout=30)
        assert r.status_code == 200
        return r.headers["X-OLOL-Request-Id"], [json.loads(x) for x in r.iter_lines() if x]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(12)))
    for request_id, lines in results:
        assert lines[-1]["done"] is True and sum(1 for x in lines if x["done"]) == 1
        assert len(lines) > 2 and all(x["model"] == "llama3.2:1b" for x in lines)
        assert c.proxy.queue.get(request_id)["status"] == "completed"
    assert wait_until(lambda: idle(c.proxy), timeout=5)
    # the official client sees the same stream
    parts = list(ollama.Client(host=c.url).chat(**CHAT, stream=True, options={"num_predict": 5}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])


def test_a_client_leaving_mid_stream_stops_the_generation_on_the_node(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=10]")
    payload = json.dumps({**CHAT, "options": {"num_predict": 400}}).encode()
    host, port = c.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        seen = b""
        while seen.count(b'"done":false') < 3:
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            seen += data
        head = seen.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in head)}
        request_id = headers["x-olol-request-id"]
        assert c.proxy.dispatcher._relays  # the stream is being read by the HTTP thread
    assert wait_until(lambda: c.sims[0].stats()["generations_cancelled"] == 1, timeout=10)
    assert wait_until(lambda: idle(c.proxy), timeout=10)
    assert c.proxy.queue.get(request_id)["status"] == "cancelled"


def test_a_node_failure_mid_stream_fails_the_record_and_releases_the_slot(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=200]")
    c.sims[0].faults.drop_next_stream(1, after_chunks=3)
    r = requests.post(c.url + "/api/chat", json={**CHAT, "options": {"num_predict": 40}},
                      stream=True, timeout=30)
    lines = [json.loads(x) for x in r.iter_lines() if x]
    assert "error" in lines[-1] and not any(x.get("done") for x in lines)
    assert wait_until(lambda: idle(c.proxy), timeout=10)
    assert c.proxy.queue.get(r.headers["X-OLOL-Request-Id"])["status"] == "failed"
    # the node answers again after its next health poll, and serves the next stream
    assert wait_until(lambda: c.proxy.cluster.healthy_nodes(), timeout=10)
    parts = list(ollama.Client(host=c.url).chat(**CHAT, stream=True, options={"num_predict": 5}))
    assert parts[-1].done


def record_threads(proxy) -> list[str]:
    """Names of the threads that run claimed batches, from now on."""
    names: list[str] = []
    original = proxy.dispatcher._run_claimed

    def spy(assignment):
        names.append(threading.current_thread().name)
        return original(assignment)

    proxy.dispatcher._run_claimed = spy
    return names


def test_a_request_nothing_waits_before_runs_in_its_own_front_door_thread(make_cluster):
    c = make_cluster(nodes=1)
    names = record_threads(c.proxy)
    client = ollama.Client(host=c.url)
    assert client.chat(**CHAT, options={"num_predict": 4}).done
    assert list(client.chat(**CHAT, stream=True, options={"num_predict": 4}))[-1].done
    assert len(names) == 2 and not any(n.startswith("olol-dispatch") for n in names)
    assert wait_until(lambda: idle(c.proxy), timeout=5)


def test_a_request_behind_others_waits_its_turn_for_a_dispatcher_thread(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=50]", parallel=1)
    names = record_threads(c.proxy)
    body = {**CHAT, "stream": False, "options": {"num_predict": 10}}
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(requests.post, c.url + "/api/chat", json=body, timeout=30)
                   for _ in range(3)]
        assert all(f.result().status_code == 200 for f in futures)
    # one slot: the first runs at once, the two others queue and are dispatched in turn
    assert len(names) == 3
    assert sum(n.startswith("olol-dispatch") for n in names) >= 2


def test_a_client_leaving_a_long_non_streamed_request_run_inline_cancels_it(make_cluster):
    # the simulator's answers have 16 to 48 tokens: at 2 tokens/s, 8 s or more
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=2]")
    names = record_threads(c.proxy)
    payload = json.dumps({**CHAT, "stream": False, "options": {"num_predict": 400}}).encode()
    host, port = c.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        assert wait_until(lambda: c.sims[0].stats()["generations_started"] == 1, timeout=10)
    assert wait_until(lambda: c.sims[0].stats()["generations_cancelled"] == 1, timeout=10)
    assert wait_until(lambda: idle(c.proxy), timeout=10)
    assert names and not names[0].startswith("olol-dispatch")
    records = c.proxy.queue.list_jobs(kind=None)
    assert [r["status"] for r in records] == ["cancelled"]


def test_the_agent_reuses_its_connection_to_ollama_across_requests(make_cluster):
    """Each call is read to its end (not cancelled when dropped), so the agent's
    keep-alive connection to Ollama serves request after request."""
    c = make_cluster(nodes=1)
    client = ollama.Client(host=c.url)
    client.chat(**CHAT, options={"num_predict": 4})
    ollama_client = c.agents[0]._ollama
    opened = ollama_client.connections_opened
    for i in range(10):
        assert client.chat(**CHAT, options={"num_predict": 4, "seed": i}).done
        parts = list(client.chat(**CHAT, stream=True, options={"num_predict": 4, "seed": i}))
        assert parts[-1].done
    # health polls may open one more while a relay holds the pooled one; not 20
    assert ollama_client.connections_opened - opened <= 2


def test_a_failure_while_running_inline_closes_the_channel_and_cancels_the_request(make_cluster):
    c = make_cluster(nodes=1)

    def broken(request_id, disconnected, after=None):
        raise RuntimeError("boom")

    c.proxy.dispatcher.run_inline = broken
    r = requests.post(c.url + "/api/chat", json={**CHAT, "stream": False}, timeout=10)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert len(c.proxy.hub) == 0
    records = c.proxy.queue.list_jobs(kind=None)
    assert [x["status"] for x in records] == ["cancelled"]


def test_requests_that_fail_while_being_admitted_leave_no_channel(make_cluster, monkeypatch):
    """Whatever fails while a request is admitted (building its record, enqueueing it,
    running it inline) may not leave a response channel behind, or enough of them would
    fill the hub and refuse everybody."""
    import olol.server.inference as inference

    c = make_cluster(nodes=1)
    real_build, real_enqueue = inference.build_record, c.proxy.queue.enqueue

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with requests.Session() as s:
        for patch in ("build", "enqueue", "inline"):
            if patch == "build":
                monkeypatch.setattr(inference, "build_record", broken)
            elif patch == "enqueue":
                monkeypatch.setattr(inference, "build_record", real_build)
                monkeypatch.setattr(c.proxy.queue, "enqueue", broken)
            else:
                monkeypatch.setattr(c.proxy.queue, "enqueue", real_enqueue)
                monkeypatch.setattr(c.proxy.dispatcher, "run_inline", broken)
            for _ in range(100):
                r = s.post(c.url + "/api/chat", json={**CHAT, "stream": False}, timeout=10)
                assert r.status_code == 500 and r.json() == {"error": "internal error"}
            assert len(c.proxy.hub) == 0, patch
    monkeypatch.undo()
    assert ollama.Client(host=c.url).chat(**CHAT, options={"num_predict": 3}).done

"""Clients that leave at any point and an agent that restarts under load.

Whatever happens, every answer a client reads to its end is a whole, good one (the
proxy carries a broken stream over to the other node), and once the load is over
nothing is held anywhere: no slot, channel or relay in the proxy, no request in
flight on an agent, no generation on Ollama, no request left pending or running in
the queue. The Mux windows are tiny, so streams pause and resume all the time.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time

import pytest

from olol.agent.agent import Agent, AgentConfig
from tests.e2e.conftest import idle, wait_until

pytestmark = pytest.mark.slow

MODELS = "llama3.2:1b[tps=3000],nomic-embed-text[embed]"
RESTARTS = 3
WINDOW = 1024


def _request(rng: random.Random) -> tuple[str, dict]:
    stream = rng.random() < 0.7
    tokens = rng.choice([5, 50, 300, 1200])
    kind = rng.choice(["chat", "generate", "openai", "embed"])
    if kind == "chat":
        return "/api/chat", {"model": "llama3.2:1b", "stream": stream,
                             "options": {"num_predict": tokens, "seed": rng.randrange(99)},
                             "messages": [{"role": "user", "content": "hi " * rng.randrange(1, 50)}]}
    if kind == "generate":
        return "/api/generate", {"model": "llama3.2:1b", "stream": stream, "prompt": "a story",
                                 "options": {"num_predict": tokens}}
    if kind == "openai":
        return "/v1/chat/completions", {"model": "llama3.2:1b", "stream": stream,
                                        "max_tokens": tokens,
                                        "messages": [{"role": "user", "content": "x"}]}
    return "/api/embed", {"model": "nomic-embed-text", "input": ["a"] * rng.randrange(1, 5)}


def _one(host: str, port: int, rng: random.Random) -> tuple[str, bytes] | None:
    """One request; None when this client left before the end (at a random point:
    mid-upload, before the answer, mid-answer; closed or reset)."""
    path, body = _request(rng)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    leave_at = rng.choice([0, 1, 100, 2000, 20000]) if rng.random() < 0.4 else None
    with socket.create_connection((host, port), timeout=30) as sock:
        if leave_at is not None and rng.random() < 0.1:
            sock.sendall(head + payload[:len(payload) // 2])
            return None
        sock.sendall(head + payload)
        answer = b""
        while True:
            if leave_at is not None and len(answer) >= leave_at:
                if rng.random() < 0.5:  # a reset rather than a close
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return None
            data = sock.recv(65536)
            if not data:
                return path, answer
            answer += data


def test_clients_leaving_and_an_agent_restarting_leave_nothing_held(make_cluster):
    c = make_cluster(nodes=2, models=MODELS, parallel=4)
    for agent in c.agents:
        agent.servicer._mux_window = WINDOW
    host, port = c.url.removeprefix("http://").split(":")
    restarts = 0
    done = threading.Event()
    answers: list[tuple[str, bytes]] = []
    failures: list[str] = []

    def client(k: int) -> None:
        rng = random.Random(k)
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            try:
                got = _one(host, int(port), rng)
            except OSError as exc:
                failures.append(repr(exc))
                return
            if got is not None:
                answers.append(got)

    clients = [threading.Thread(target=client, args=(k,), name=f"test-client-{k}")
               for k in range(16)]
    for t in clients:
        t.start()
    try:
        while restarts < RESTARTS:
            time.sleep(1.0)
            address = c.agents[1].address
            c.agents[1].stop(0)
            time.sleep(0.3)
            for _ in range(50):  # the port may linger a moment
                try:
                    agent = Agent(AgentConfig(listen=address, ollama_url=c.sims[1].url,
                                              parallel=4)).start()
                    break
                except Exception:  # noqa: BLE001 - not bound yet
                    time.sleep(0.1)
            else:
                pytest.fail(f"the agent could not listen on {address} again")
            agent.servicer._mux_window = WINDOW
            c.agents[1] = agent
            restarts += 1
    finally:
        done.set()
        for t in clients:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in clients)
    assert not failures, failures[:3]
    assert len(answers) > 100
    for path, answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (path, answer[:300])
        assert b'"error"' not in body, (path, answer[-300:])
        headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        if b"content-length" in headers:
            assert len(body) == int(headers[b"content-length"]), (path, head)
            assert json.loads(body), (path, body[:300])
        else:  # a stream, whole: its last record, then the end of the chunks
            assert body.endswith(b"0\r\n\r\n"), (path, answer[-300:])
            assert b'"done":true' in body or b"data: [DONE]" in body, (path, answer[-300:])
    assert wait_until(lambda: idle(c.proxy), timeout=30)
    assert wait_until(lambda: all(s.stats()["active_generations"] == 0 for s in c.sims))
    assert all(not a.servicer.in_flight.snapshot() for a in c.agents)
    by_status = c.proxy.queue.get_queue_stats()["by_status"]
    assert by_status["pending"] == 0 and by_status["processing"] == 0, by_status
    assert by_status["failed"] == 0 and by_status["interrupted"] == 0, by_status
    assert by_status["completed"] > 100 and by_status["cancelled"] > 0, by_status

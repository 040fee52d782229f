"""Relayed streams on the multiplexed node call: the proxy's reader of a node's
messages writes each record straight to its client. A client that does not read
must not hold back the other streams of its node, and gets its whole answer once
it reads; the answers are the same as over plain node calls."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from olol.rpc.client import NodeClient
from tests.support import wait_until


def _mux_client(address: str) -> NodeClient:
    """The proxy's node client with every call on the multiplexed path (it sends a
    lone call on a plain one)."""
    return NodeClient(address, mux_lone=True)


def _chat(content: str, tokens: int | None = None) -> dict:
    body: dict = {"model": "llama3.2:1b", "stream": True,
                  "messages": [{"role": "user", "content": content}],
                  "options": {"seed": 3}}
    if tokens is not None:
        body["options"]["num_predict"] = tokens
    return body


def _records(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.iter_lines() if line]


@pytest.mark.parametrize("mux", [True, False], ids=["mux", "plain"])
def test_streams_are_the_same_on_both_node_paths(make_cluster, mux):
    c = make_cluster(nodes=1, node_mux=mux, sim_kw={"tokens_per_second": 400.0},
                     client_factory=_mux_client if mux else None)
    got = _records(c.proxy.url, _chat("same answer", 40))
    assert got[-1]["done"] is True and sum(r["done"] for r in got) == 1
    assert "".join(r["message"]["content"] for r in got[:-1])
    assert len(got) == got[-1]["eval_count"] + 1


def test_a_client_that_does_not_read_holds_back_nobody(make_cluster):
    # long answers written as fast as the node can: the unread one fills its socket
    c = make_cluster(nodes=1, sim_kw={"response_tokens": (30000, 30000)},
                     client_factory=_mux_client)
    host, port = c.proxy.address.rsplit(":", 1)
    sleeper = socket.create_connection((host, int(port)))
    try:
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        body = json.dumps(_chat("a very long answer", 30000)).encode()
        sleeper.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 1)
        time.sleep(0.5)  # the unread stream's buffers fill up
        others = [_records(c.proxy.url, _chat(f"short {i}", 20)) for i in range(3)]
        for got in others:
            assert got[-1]["done"] is True and len(got) == 21
        # the node's multiplexed call shows in the metrics
        metrics = {}
        for line in httpx.get(c.proxy.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("olol_node_mux_"):
                name, _, value = line.rpartition(" ")
                metrics[name.split("{")[0]] = float(value)
        assert metrics["olol_node_mux_messages_total"] > 0
        assert metrics["olol_node_mux_record_parts_total"] >= metrics["olol_node_mux_messages_total"]
        assert "olol_node_mux_calls_open" in metrics
        # now read the long one: complete, in order, ending with its final record
        sleeper.settimeout(30)
        data = bytearray()
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sleeper.recv(1 << 20)
            assert chunk, "the proxy closed the connection"
            data += chunk
    finally:
        sleeper.close()
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    body_bytes = bytearray()
    while rest:  # undo the chunked framing
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body_bytes += rest[:size]
        rest = rest[size + 2:]
    lines = [json.loads(line) for line in bytes(body_bytes).split(b"\n") if line]
    assert lines[-1]["done"] is True and len(lines) == lines[-1]["eval_count"] + 1 == 30001

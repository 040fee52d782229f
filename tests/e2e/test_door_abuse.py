"""20,000 rejected requests of every error class a client can produce leave the proxy
serving and its response hub empty (issue 9 item 1: 10,000 leaked channels used to
refuse every later request with 503).

Slow suite (``make test-slow``); ``OLOL_ABUSE_N`` sets the count per class.
"""

from __future__ import annotations

import http.client
import json
import os
import time

import pytest
import requests

from olol.keys import KeyStore

N = int(os.environ.get("OLOL_ABUSE_N", "20000"))
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "stream": False}


def deep(n: int) -> object:
    value: object = 1
    for _ in range(n):
        value = [value]
    return value


# (name, path, raw body or None for an oversized Content-Length, with key, status)
CLASSES = [
    ("malformed JSON", "/api/chat", b'{"model": "llama3.2:1b", "messages": [', True, 400),
    ("wrong type", "/api/chat", b'{"model": "llama3.2:1b", "messages": "hi"}', True, 400),
    ("bad option", "/api/generate",
     b'{"model": "llama3.2:1b", "prompt": "x", "options": {"seed": 1e20}}', True, 400),
    ("too deep", "/api/generate", json.dumps(
        {"model": "llama3.2:1b", "prompt": "x", "format": deep(300)}).encode(), True, 400),
    ("unknown model", "/api/chat", json.dumps({**CHAT, "model": "nope:1b"}).encode(), True,
     404),
    ("openai null message", "/v1/chat/completions",
     b'{"model": "llama3.2:1b", "messages": [null]}', True, 400),
    ("embed bad input", "/api/embed", b'{"model": "nomic-embed-text", "input": 5}', True, 400),
    ("too large", "/api/chat", None, True, 413),
    ("no key", "/api/chat", json.dumps(CHAT).encode(), False, 401),
]


def announce_only(address: str, path: str, length: int, headers: dict) -> int:
    """Send headers announcing ``length`` bytes of body, none of the body; the status."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_error_class_many_times_leaves_no_channel(make_cluster):
    c = make_cluster(nodes=1, keys_enabled=True, max_body_bytes=1 << 20)
    keys = c.proxy.context.keys or KeyStore(c.proxy.db, c.proxy.clock)
    _, token = keys.create("abuser")
    auth = {"Authorization": f"Bearer {token}"}
    seen: dict[str, dict[int, int]] = {}
    with requests.Session() as s:
        for name, path, raw, keyed, status in CLASSES:
            headers = {"Content-Type": "application/json", **(auth if keyed else {})}
            counts: dict[int, int] = {}
            for _ in range(N):
                if raw is None:  # announce a body over the limit; the door answers first
                    code = announce_only(c.proxy.address, path, 2 << 20, headers)
                else:
                    code = s.post(c.url + path, data=raw, headers=headers, timeout=30).status_code
                counts[code] = counts.get(code, 0) + 1
            seen[name] = counts
            assert counts == {status: N}, (name, counts)
            assert len(c.proxy.hub) == 0, f"{name}: {len(c.proxy.hub)} channels left"
        r = s.post(c.url + "/api/chat", json=CHAT, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["done"] is True
    assert len(c.proxy.hub) == 0
    # the chat's own bookkeeping runs just after its answer was written
    deadline = time.monotonic() + 10
    while c.proxy.queue.depth() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.proxy.queue.depth() == 0

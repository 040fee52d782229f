"""Bugs the fuzzer found, each kept as a regression test: model management answered
a node's failure 500, and a bodyless request with ``Expect: 100-continue`` was never
answered (waitress sent 100 Continue and then waited for a body)."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.fuzz.harness import MODEL


def test_create_that_fails_on_the_node_is_not_a_500(fuzz_env):
    live = fuzz_env.proxy("open")
    # stream defaults to true; the node rejects the source name
    resp = requests.post(live.url + "/api/create", timeout=10,
                         json={"model": "fuzz-made", "from": ".."})
    assert resp.status_code != 500, resp.text


@pytest.mark.parametrize("path", ["/api/pull", "/olol/v1/models/pull"])
def test_pull_that_fails_on_the_node_is_not_a_500(fuzz_env, path):
    live = fuzz_env.proxy("open")
    resp = requests.post(live.url + path, timeout=10,
                         json={"model": "no-such-model:1b", "stream": False})
    assert resp.status_code != 500, resp.text


def test_expect_100_continue_without_a_body_is_answered(fuzz_env):
    live = fuzz_env.proxy("open")
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 0\r\n\r\n")
        got = b""
        deadline = time.monotonic() + 3
        while b"HTTP/1.1 200" not in got and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                piece = sock.recv(4096)
            except TimeoutError:
                break
            if not piece:
                break
            got += piece
    assert b"HTTP/1.1 200" in got, got


def test_the_model_is_still_there_for_the_other_tests(fuzz_env):
    from tests.fuzz.harness import repair

    repair(fuzz_env)
    assert fuzz_env.proxy("open").proxy.cluster.has_model(MODEL)

"""The simulator's sick-node knobs: a node failing all inference, hanging every
request, cutting or stalling its streams, while its status endpoints keep working."""

from __future__ import annotations

import json
import socket
import threading

import requests

from tests.sim.test_http import _open_stream, post, wait_for

BODY = {"model": "llama3.2:1b", "prompt": "x", "options": {"num_predict": 6}}


def _raw_answer(sock: socket.socket) -> bytes:
    """Everything the simulator writes until it closes the connection."""
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except OSError:
            return data
        if not piece:
            return data
        data += piece


def test_fail_all_fails_every_inference_while_status_works(sim):
    sim.faults.fail_all(500, "runner is broken")
    for path, body in (("/api/generate", BODY),
                       ("/api/chat", {"model": "llama3.2:1b", "messages": [
                           {"role": "user", "content": "x"}]}),
                       ("/api/embed", {"model": "nomic-embed-text", "input": "x"})):
        r = post(sim, path, body)
        assert (r.status_code, r.json()) == (500, {"error": "runner is broken"})
    for path in ("/api/tags", "/api/ps", "/api/version"):
        assert requests.get(sim.url + path, timeout=5).status_code == 200
    assert sim.faults.counts()["fail"] == 3  # the status reads did not count
    sim.faults.clear()
    assert post(sim, "/api/generate", dict(BODY, stream=False)).status_code == 200


def test_fail_all_over_http(sim):
    assert post(sim, "/_sim/faults", {"fail_all": True, "status": 503}).status_code == 200
    assert post(sim, "/api/generate", BODY).status_code == 503
    assert post(sim, "/api/generate", BODY).status_code == 503
    post(sim, "/_sim/faults", {"clear": True})
    assert post(sim, "/api/generate", BODY).status_code == 200


def test_hang_all_holds_every_request_until_cleared(sim):
    sim.faults.hang_all()
    results: list[int] = []

    def call():
        results.append(post(sim, "/api/generate", dict(BODY, stream=False)).status_code)

    threads = [threading.Thread(target=call, name=f"t-hung-{i}", daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: sim.faults.hanging() == 3)
    assert requests.get(sim.url + "/api/tags", timeout=5).status_code == 200
    sim.faults.release()  # releases the three; the fault stays armed
    for t in threads:
        t.join(timeout=5)
    assert results == [200, 200, 200]
    t = threading.Thread(target=call, name="t-hung-again", daemon=True)
    t.start()
    assert wait_for(lambda: sim.faults.hanging() == 1)
    sim.faults.clear()
    t.join(timeout=5)
    assert results[-1] == 200 and sim.faults.counts()["hang"] == 4


def test_a_hung_request_whose_client_leaves_stops_hanging(sim):
    sim.faults.hang_all()
    sock = _open_stream(sim, BODY)
    assert wait_for(lambda: sim.faults.hanging() == 1)
    sock.close()
    assert wait_for(lambda: sim.faults.hanging() == 0)


def test_a_stream_cut_right_after_its_headers(sim):
    sim.faults.drop_next_stream(1, after_chunks=0)
    raw = _raw_answer(_open_stream(sim, BODY))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
    assert body == b""  # no chunk, no terminating chunk: a cut


def test_a_stream_that_ends_cleanly_without_its_final_record(sim):
    sim.faults.drop_next_stream(1, after_chunks=2, how="end")
    raw = _raw_answer(_open_stream(sim, BODY))
    body = raw.partition(b"\r\n\r\n")[2]
    assert body.endswith(b"0\r\n\r\n")
    records = [json.loads(line) for line in body.split(b"\r\n") if line.startswith(b"{")]
    assert len(records) == 2 and not any(r["done"] for r in records)


def test_a_stream_that_ends_with_an_error_record(sim):
    sim.faults.drop_next_stream(1, after_chunks=0, how="error", error="runner crashed")
    with requests.post(sim.url + "/api/generate", json=BODY, stream=True, timeout=5) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines == [{"error": "runner crashed"}]


def test_a_stalled_stream_goes_on_when_released(sim):
    sim.faults.stall_next_stream(1, after_chunks=2)
    got: list[dict] = []

    def read():
        with requests.post(sim.url + "/api/generate", json=BODY, stream=True, timeout=10) as r:
            for line in r.iter_lines():
                got.append(json.loads(line))

    t = threading.Thread(target=read, name="t-stalled-reader", daemon=True)
    t.start()
    assert wait_for(lambda: sim.faults.hanging() == 1 and len(got) == 2)
    assert not any(r["done"] for r in got)
    sim.faults.release()
    t.join(timeout=5)
    assert got[-1]["done"] and len(got) == 7


def test_fail_when_fails_only_the_requests_that_carry_the_text(sim):
    sim.faults.fail_when("poison", 500, "runner crashed on this input")
    bad = post(sim, "/api/generate", dict(BODY, prompt="some poison here"))
    assert (bad.status_code, bad.json()) == (500, {"error": "runner crashed on this input"})
    assert post(sim, "/api/generate", dict(BODY, stream=False)).status_code == 200
    assert sim.faults.counts()["fail"] == 1


def test_fault_counts_over_http(sim):
    post(sim, "/_sim/faults", {"fail_next": 1})
    post(sim, "/api/generate", BODY)
    assert requests.get(sim.url + "/_sim/faults", timeout=5).json() == {
        "fail": 1, "drop": 0, "stall": 0, "hang": 0}

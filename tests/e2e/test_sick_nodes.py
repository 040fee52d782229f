"""Sick nodes behind a real proxy and real agents: a node that answers 500 to every
inference while its status works, a node that accepts requests and never answers,
streams cut or stalled before their first record, and 500s that the request
itself causes (which must eject nobody)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest
import requests

from tests.e2e.conftest import wait_until

MODEL = "llama3.2:1b"
CLIENT_TIMEOUT_S = 30  # a hung request today waits 600 s: the client gives up first


@dataclass
class Outcome:
    ok: bool
    detail: str


def ask(url: str, i: int, *, stream: bool, prompt: str | None = None,
        session: str | None = None) -> Outcome:
    """One chat request; ok when a complete answer (``done: true``) arrived."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt or f"q{i}"}],
            "stream": stream, "options": {"num_predict": 8, "seed": i}}
    headers = {"X-OLOL-Session": session} if session else None
    try:
        r = requests.post(url + "/api/chat", json=body, stream=stream, headers=headers,
                          timeout=CLIENT_TIMEOUT_S)
        if r.status_code != 200:
            return Outcome(False, f"{r.status_code} {r.text[:200]}")
        if stream:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        else:
            lines = [r.json()]
    except requests.RequestException as exc:
        return Outcome(False, repr(exc))
    last = lines[-1] if lines else {}
    if any("error" in x for x in lines) or not last.get("done"):
        return Outcome(False, json.dumps(lines[-2:]))
    return Outcome(True, "")


def load(url: str, n: int, threads: int = 6, **kw) -> list[Outcome]:
    """``n`` requests from ``threads`` callers, streamed and not, alternating."""
    out: list[Outcome] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def work() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            result = ask(url, i, stream=bool(i % 2), **kw)
            with lock:
                out.append(result)

    workers = [threading.Thread(target=work, name=f"t-load-{k}") for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=CLIENT_TIMEOUT_S * n)
    return out


def failures(outcomes: list[Outcome]) -> list[str]:
    return [o.detail for o in outcomes if not o.ok]


def sick_cluster(make_cluster, **detector):
    c = make_cluster(nodes=3, models=MODEL, parallel=2)
    d = c.proxy.dispatcher
    d.first_record_timeout_s, d.stall_timeout_s = 2.0, 2.0
    for key, value in detector.items():
        setattr(c.proxy.cluster.outliers, key, value)
    assert wait_until(lambda: len(c.proxy.cluster.healthy_nodes()) == 3, timeout=10)
    return c


def served(sim) -> int:
    """Generations a simulator completed (health polls and failed calls excluded)."""
    return sim.stats()["generations_completed"]


def busiest(c) -> int:
    """Index of the node that served the most so far (where the model is loaded and
    the scheduler keeps sending work: the node whose sickness matters)."""
    return max(range(len(c.sims)), key=lambda i: served(c.sims[i]))


def test_a_node_failing_all_inference_is_ejected_and_nothing_fails(make_cluster):
    # an ejection longer than the test: a slow machine sees no re-admission meanwhile
    c = sick_cluster(make_cluster, base_ejection_s=120.0, max_ejection_s=120.0)
    assert failures(load(c.url, 12)) == []
    i = busiest(c)
    sick, address = c.sims[i], c.agents[i].address
    before = sum(served(s) for s in c.sims)
    sick.faults.fail_all(500, "llama runner process has terminated")
    outcomes = load(c.url, 60)
    assert failures(outcomes) == [] and len(outcomes) == 60
    # the node was tried a few times, then sent nothing more
    assert 1 <= sick.faults.counts()["fail"] <= 5
    assert c.proxy.cluster.outliers.is_ejected(address, MODEL)
    state = c.proxy.cluster.node(address)
    assert state.healthy and MODEL in state.ejected  # its status polls are fine
    assert sum(served(s) for s in c.sims) - before == 60


def test_a_healed_node_is_readmitted(make_cluster):
    c = sick_cluster(make_cluster, base_ejection_s=0.5, max_ejection_s=1.0)
    assert failures(load(c.url, 12)) == []
    i = busiest(c)
    sick, address = c.sims[i], c.agents[i].address
    sick.faults.fail_all()
    assert failures(load(c.url, 30)) == []
    assert c.proxy.cluster.outliers.is_ejected(address, MODEL) or \
        any(e["event"] == "ejected" for e in c.proxy.cluster.outliers.events())
    sick.faults.clear()
    done: list[Outcome] = []

    served_before = served(sick)

    def back_in_service() -> bool:
        done.extend(load(c.url, 6))
        return served(sick) > served_before

    assert wait_until(back_in_service, timeout=20, step=0.05)
    assert failures(done) == []
    assert not c.proxy.cluster.outliers.is_ejected(address, MODEL)
    assert any(e["event"] == "readmitted" for e in c.proxy.cluster.outliers.events())


def test_a_500_the_request_causes_ejects_nobody(make_cluster):
    c = sick_cluster(make_cluster)
    message = "failed to process inputs: this input crashes the runner"
    for sim in c.sims:
        sim.faults.fail_when("poison", 500, message)
    assert failures(load(c.url, 12)) == []  # every node has succeeded lately
    bad: list[Outcome] = []
    good: list[Outcome] = []

    def poison(i: int) -> None:
        r = requests.post(c.url + "/api/chat", timeout=CLIENT_TIMEOUT_S, json={
            "model": MODEL, "stream": False,
            "messages": [{"role": "user", "content": f"poison {i}"}]})
        bad.append(Outcome(r.status_code == 500 and r.json() == {"error": message},
                           f"{r.status_code} {r.text[:200]}"))

    threads = [threading.Thread(target=poison, args=(i,), name=f"t-poison-{i}")
               for i in range(8)]
    for t in threads:
        t.start()
    good.extend(load(c.url, 24))
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT_S)
    assert failures(bad) == [] and len(bad) == 8  # Ollama's own answer, word for word
    assert failures(good) == []
    hits = sum(sim.faults.counts()["fail"] for sim in c.sims)
    assert 8 <= hits <= 16  # each poisoned request was tried on at most two nodes
    assert c.proxy.cluster.outliers.ejected() == {}
    assert all(row["failures"] == 0 for row in c.proxy.cluster.outliers.snapshot())


def test_when_every_node_fails_alike_nobody_is_ejected(make_cluster):
    c = sick_cluster(make_cluster)
    assert failures(load(c.url, 12)) == []
    for sim in c.sims:
        sim.faults.fail_all(500, "model is broken everywhere")
    outcomes = load(c.url, 12)
    assert len(outcomes) == 12 and not any(o.ok for o in outcomes)
    assert all("model is broken everywhere" in o.detail for o in outcomes)
    assert c.proxy.cluster.outliers.ejected() == {}
    for sim in c.sims:
        sim.faults.clear()
    assert failures(load(c.url, 12)) == []


def test_a_node_that_never_answers_is_detected_and_its_requests_retried(make_cluster):
    c = sick_cluster(make_cluster)
    assert failures(load(c.url, 12)) == []
    i = busiest(c)
    hung, address = c.sims[i], c.agents[i].address
    hung.faults.hang_all()
    outcomes = load(c.url, 40)
    assert failures(outcomes) == [] and len(outcomes) == 40
    assert hung.faults.counts()["hang"] >= 1  # it did get requests, and held them
    (row,) = [r for r in c.proxy.cluster.outliers.snapshot() if r["node"] == address]
    assert row["failures"] >= 1  # its missed deadlines were counted against it
    assert wait_until(lambda: hung.faults.hanging() == 0)  # every hung call was cancelled


def test_a_non_streamed_answer_that_stalls_is_retried_elsewhere(make_cluster):
    c = sick_cluster(make_cluster)
    assert ask(c.url, 0, stream=False, session="s").ok
    pinned = next(s for s in c.sims if served(s) == 1)
    pinned.faults.stall_next_stream(1, after_chunks=2)  # the agent streams from Ollama
    outcome = ask(c.url, 1, stream=False, session="s")
    assert outcome.ok, outcome.detail
    assert pinned.faults.counts()["stall"] == 1
    assert sum(served(s) for s in c.sims) == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_stream_that_ends_right_after_its_headers_is_retried(make_cluster, stream):
    c = sick_cluster(make_cluster)
    assert ask(c.url, 0, stream=stream, session="s").ok
    pinned = next(s for s in c.sims if served(s) == 1)
    # 200 and its headers, then the body ends cleanly: no record at all
    pinned.faults.drop_next_stream(1, after_chunks=0, how="end")
    outcome = ask(c.url, 1, stream=stream, session="s")
    assert outcome.ok, outcome.detail
    assert pinned.faults.counts()["drop"] == 1
    assert sum(served(s) for s in c.sims) == 2


def test_an_error_record_before_any_output_is_retried_elsewhere(make_cluster):
    c = sick_cluster(make_cluster)
    assert ask(c.url, 0, stream=True, session="s").ok
    pinned = next(s for s in c.sims if served(s) == 1)
    pinned.faults.drop_next_stream(1, after_chunks=0, how="error", error="runner crashed")
    outcome = ask(c.url, 1, stream=True, session="s")
    assert outcome.ok, outcome.detail
    assert pinned.faults.counts()["drop"] == 1

"""Mid-stream failover against real agents and a real proxy: a stream whose node
dies or stalls after output reached the client is carried over to another node
that has the model, and the client gets one stream whose text is the
uninterrupted answer's (deterministic requests: ``temperature: 0`` or a seed)."""

from __future__ import annotations

import json
import threading

import ollama
import openai
import pytest
import requests

from tests.e2e.conftest import wait_until

MODEL = "llama3.2:1b"
MODELS = f"{MODEL}[tps=200],qwen3:0.6b[tps=200]"
QUESTION = [{"role": "user", "content": "Tell me about rivers."}]
SESSION = {"X-OLOL-Session": "pinned"}
TIMEOUT_S = 30


def resume_cluster(make_cluster, nodes: int = 2, **dispatcher):
    c = make_cluster(nodes=nodes, models=MODELS, parallel=2)
    d = c.proxy.dispatcher
    d.first_record_timeout_s, d.stall_timeout_s = 2.0, 2.0
    for key, value in dispatcher.items():
        setattr(d, key, value)
    assert wait_until(lambda: len(c.proxy.cluster.healthy_nodes()) == nodes, timeout=10)
    return c


def post(c, path: str, body: dict, headers: dict | None = SESSION) -> list[dict]:
    """A streamed native call; every NDJSON record."""
    r = requests.post(c.url + path, json=body, stream=True, headers=headers, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.iter_lines() if line]


def text(records: list[dict]) -> str:
    return "".join((r.get("message") or {}).get("content") or r.get("response") or ""
                   for r in records)


def pinned_sim(c):
    """The simulator that served the one request made so far (the session's node)."""
    (sim,) = [s for s in c.sims if s.stats()["generations_completed"] == 1]
    return sim


def served(c) -> list[int]:
    return [s.stats()["generations_completed"] for s in c.sims]


def server_since(c, before: list[int]):
    """The simulator that served the one request made since ``before``."""
    (sim,) = [s for s, n in zip(c.sims, before, strict=True)
              if s.stats()["generations_completed"] == n + 1]
    return sim


def assert_same_answer(got: list[dict], reference: list[dict], resumed: int = 1) -> None:
    final, ref = got[-1], reference[-1]
    assert not any("error" in r for r in got), got[-2:]
    assert final["done"] is True and sum(1 for r in got if r.get("done")) == 1
    assert text(got) == text(reference)  # nothing lost or repeated at the seam
    assert final["eval_count"] == ref["eval_count"] == len(reference) - 1
    assert final["prompt_eval_count"] == ref["prompt_eval_count"]
    assert final["done_reason"] == ref["done_reason"]
    assert final["total_duration"] > 0 and final["eval_duration"] > 0
    assert final["olol_resumed"] == resumed and "olol_resumed" not in ref


@pytest.mark.parametrize("how", ["close", "error", "end", "stall"])
def test_a_chat_stream_cut_mid_way_is_continued_on_another_node(make_cluster, how):
    c = resume_cluster(make_cluster)
    body = {"model": MODEL, "messages": QUESTION, "options": {"temperature": 0}}
    reference = post(c, "/api/chat", body)
    sick = pinned_sim(c)
    if how == "stall":
        sick.faults.stall_next_stream(1, after_chunks=4)
    else:
        sick.faults.drop_next_stream(1, after_chunks=4, how=how)
    got = post(c, "/api/chat", body)
    assert_same_answer(got, reference)
    assert sum(sick.faults.counts().values()) == 1
    assert sum(s.stats()["generations_completed"] for s in c.sims) == 2  # reference + rest
    assert wait_until(lambda: not c.proxy.dispatcher._resumes, timeout=5)


@pytest.mark.parametrize("raw", [False, True])
def test_a_generate_stream_cut_mid_way_is_continued_on_another_node(make_cluster, raw):
    c = resume_cluster(make_cluster)
    body = {"model": MODEL, "prompt": "Once upon a time, ", "raw": raw,
            "options": {"seed": 5}}
    if not raw:
        body["system"] = "You tell stories."
    reference = post(c, "/api/generate", body)
    pinned_sim(c).faults.drop_next_stream(1, after_chunks=3)
    got = post(c, "/api/generate", body)
    assert_same_answer(got, reference)
    assert all("response" in r and "message" not in r for r in got)  # generate records
    assert ("context" in reference[-1]) is not raw and "context" not in got[-1]


def test_the_official_ollama_client_sees_one_stream(make_cluster):
    c = resume_cluster(make_cluster)
    client = ollama.Client(host=c.url, headers=SESSION, timeout=TIMEOUT_S)
    options = {"temperature": 0}
    reference = list(client.chat(model=MODEL, messages=QUESTION, options=options, stream=True))
    sick = pinned_sim(c)
    sick.faults.drop_next_stream(1, after_chunks=5)
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == \
        "".join(p.message.content for p in reference)
    assert parts[-1].done and parts[-1].eval_count == reference[-1].eval_count
    assert sick.faults.counts()["drop"] == 1
    # generate, through the same client
    before = served(c)
    reference = list(client.generate(model=MODEL, prompt="Why?", options=options, stream=True))
    server_since(c, before).faults.drop_next_stream(1, after_chunks=2)
    parts = list(client.generate(model=MODEL, prompt="Why?", options=options, stream=True))
    assert "".join(p.response for p in parts) == "".join(p.response for p in reference)
    assert parts[-1].done and parts[-1].eval_count == reference[-1].eval_count


def test_the_openai_client_sees_one_stream(make_cluster):
    c = resume_cluster(make_cluster)
    oa = openai.OpenAI(base_url=c.url + "/v1", api_key="unused", max_retries=0,
                       timeout=TIMEOUT_S, default_headers=SESSION)
    ask = {"model": MODEL, "messages": QUESTION, "temperature": 0, "stream": True,
           "stream_options": {"include_usage": True}}
    reference = list(oa.chat.completions.create(**ask))
    sick = pinned_sim(c)
    sick.faults.drop_next_stream(1, after_chunks=4)
    chunks = list(oa.chat.completions.create(**ask))

    def content(chunks) -> str:
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    assert content(chunks) == content(reference) and content(chunks)
    assert [ch.choices[0].delta.role for ch in chunks if ch.choices].count("assistant") == 1
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == reference[-1].usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == reference[-1].usage.prompt_tokens
    assert chunks[-1].model_extra.get("olol_resumed") == 1
    assert "olol_resumed" not in reference[-1].model_extra
    assert len({ch.id for ch in chunks}) == 1
    # /v1/completions
    ask = {"model": MODEL, "prompt": "Once", "seed": 3, "stream": True}
    before = served(c)
    reference = list(oa.completions.create(**ask))
    server_since(c, before).faults.drop_next_stream(1, after_chunks=2)
    chunks = list(oa.completions.create(**ask))
    assert "".join(ch.choices[0].text for ch in chunks) == \
        "".join(ch.choices[0].text for ch in reference)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra.get("olol_resumed") == 1


def cut_twice(c, body: dict) -> list[dict]:
    """A stream whose node breaks after 3 records, then whose next node dies while
    it continues the answer (its agent stops): returns what the client got."""
    sick = pinned_sim(c)
    sick.faults.drop_next_stream(1, after_chunks=3)
    result: list[list[dict]] = []
    reader = threading.Thread(target=lambda: result.append(post(c, "/api/chat", body)),
                              name="t-resume-reader")
    reader.start()

    def continuing() -> int | None:
        return next((i for i, s in enumerate(c.sims) if s is not sick and s.engine.active()),
                    None)

    assert wait_until(lambda: continuing() is not None, timeout=10)
    c.agents[continuing()].stop(0)  # the node carrying on dies mid-answer
    reader.join(timeout=TIMEOUT_S)
    assert result, "the stream did not end"
    return result[0]


@pytest.mark.parametrize("max_resumes", [1, 2])
def test_a_stream_is_carried_over_at_most_max_resumes_times(make_cluster, max_resumes):
    c = make_cluster(nodes=3, models=f"{MODEL}[tps=40]", parallel=2)
    c.proxy.dispatcher.max_resumes = max_resumes
    assert wait_until(lambda: len(c.proxy.cluster.healthy_nodes()) == 3, timeout=10)
    body = {"model": MODEL, "messages": QUESTION, "options": {"seed": 9}}
    reference = post(c, "/api/chat", body)
    assert len(reference) > 12  # long enough to be cut twice
    got = cut_twice(c, body)
    if max_resumes == 2:
        assert_same_answer(got, reference, resumed=2)
    else:
        assert_error_line(got)
        assert text(got) == text(reference)[:len(text(got))]  # nothing repeated
        assert len(got) > 4  # the first node's 3 records and some of the second's


def assert_error_line(got: list[dict]) -> None:
    assert "error" in got[-1] and not any(r.get("done") for r in got)
    assert not any("error" in r for r in got[:-1]) and len(got) >= 2


def test_without_another_node_holding_the_model_the_stream_ends_with_an_error(make_cluster):
    c = resume_cluster(make_cluster)
    body = {"model": "qwen3:0.6b", "messages": QUESTION, "options": {"temperature": 0}}
    post(c, "/api/chat", body)
    sick = pinned_sim(c)
    for sim in c.sims:  # the model is deleted everywhere but the session's node
        if sim is not sick:
            sim.store.remove("qwen3:0.6b")
    assert wait_until(lambda: len(c.proxy.cluster.model_peers("qwen3:0.6b")) == 1, timeout=10)
    sick.faults.drop_next_stream(1, after_chunks=3)
    assert_error_line(post(c, "/api/chat", body))
    assert wait_until(lambda: c.proxy.queue.get_queue_stats()["processing"] == 0, timeout=5)


def test_with_resume_streams_off_the_stream_ends_with_an_error(make_cluster):
    c = resume_cluster(make_cluster, resume_streams=False)
    body = {"model": MODEL, "messages": QUESTION, "options": {"temperature": 0}}
    post(c, "/api/chat", body)
    sick = pinned_sim(c)
    sick.faults.drop_next_stream(1, after_chunks=3)
    assert_error_line(post(c, "/api/chat", body))
    assert sum(s.stats()["generations_completed"] for s in c.sims) == 1


@pytest.mark.parametrize("extra", [
    {"think": True, "model": "qwen3:0.6b"},  # the cut falls in the thinking
    {"format": "json"},  # a grammar cannot restart mid-answer
], ids=["thinking", "format"])
def test_output_that_cannot_be_continued_faithfully_ends_with_an_error(make_cluster, extra):
    c = resume_cluster(make_cluster)
    body = {"model": MODEL, "messages": QUESTION, "options": {"temperature": 0}, **extra}
    post(c, "/api/chat", body)
    pinned_sim(c).faults.drop_next_stream(1, after_chunks=3)
    assert_error_line(post(c, "/api/chat", body))


def test_a_coalesced_stream_is_carried_over_for_each_of_its_callers(make_cluster):
    # two nodes of one slot each, both held by a stalled stream: two identical
    # deterministic requests wait together and are answered by one node call
    c = make_cluster(nodes=2, models=MODEL, parallel=1)
    for sim in c.sims:  # loaded on both: each takes work at once
        requests.post(sim.url + "/api/generate", json={"model": MODEL}, timeout=TIMEOUT_S)
    assert wait_until(lambda: len(c.proxy.cluster.healthy_nodes()) == 2 and all(
        MODEL in (n.loaded_models or {}) for n in c.proxy.cluster.healthy_nodes()), timeout=10)
    body = {"model": MODEL, "messages": QUESTION, "options": {"temperature": 0}}
    reference = post(c, "/api/chat", body, headers=None)
    results: dict[str, list[dict]] = {}

    def start(name: str, payload: dict) -> threading.Thread:
        t = threading.Thread(target=lambda: results.update({name: post(c, "/api/chat", payload,
                                                                       headers=None)}),
                             name=name)
        t.start()
        return t

    first, second = c.sims
    for sim in c.sims:
        sim.faults.stall_next_stream(1, after_chunks=1)
    blockers = [start(f"t-block-{k}", {"model": MODEL, "messages": [
        {"role": "user", "content": f"block {k}"}]}) for k in range(2)]
    assert wait_until(lambda: all(s.faults.hanging() == 1 for s in c.sims), timeout=10)
    first.faults.drop_next_stream(1, after_chunks=3)  # the pair's call breaks there
    calls = [s.stats()["generations_started"] for s in c.sims]
    pair = [start(f"t-pair-{k}", body) for k in range(2)]
    assert wait_until(lambda: c.proxy.queue.get_queue_stats()["pending"] == 2, timeout=10)
    first.faults.release()  # a slot: the pair runs together, and breaks
    assert wait_until(lambda: first.faults.counts()["drop"] == 1, timeout=10)
    second.faults.release()  # the other node carries the pair's answer on
    for t in [*pair, *blockers]:
        t.join(timeout=TIMEOUT_S)
    assert sorted(results) == ["t-block-0", "t-block-1", "t-pair-0", "t-pair-1"]
    for name in ("t-pair-0", "t-pair-1"):
        assert_same_answer(results[name], reference)
    # one call for the pair on each node: the one that broke, then the continuation
    assert [s.stats()["generations_started"] for s in c.sims] == [n + 1 for n in calls]

"""End to end through the whole proxy (olol.proxy.Proxy): official clients → front door
→ queue → dispatcher → node agent → simulator, streaming and not."""

from __future__ import annotations

import time

import ollama
import openai
import pytest
import requests

from olol.context import ProxyConfig
from tests.support import wait_until


@pytest.fixture(scope="module")
def proxy(agent):
    from olol.proxy import Proxy

    p = Proxy(ProxyConfig(listen="127.0.0.1:0", nodes=[agent.address], dispatcher_threads=4,
                          waitress_threads=8, health_interval_s=60.0)).start()
    yield p
    p.stop(grace_s=2)


def test_ollama_generate_and_chat(proxy):
    client = ollama.Client(host=proxy.url)
    whole = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?",
                            options={"num_predict": 8})
    assert whole.done and whole.response and whole.model == "llama3.2:1b"
    parts = list(client.generate(model="llama3.2:1b", prompt="hi", stream=True,
                                 options={"num_predict": 5}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts)
    chat = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hello"}],
                       options={"num_predict": 6})
    assert chat.message.role == "assistant" and chat.message.content
    streamed = list(client.chat(model="llama3.2:1b", stream=True,
                                messages=[{"role": "user", "content": "hello"}],
                                options={"num_predict": 6}))
    assert streamed[-1].done and "".join(c.message.content for c in streamed)


def test_ollama_embeddings(proxy):
    client = ollama.Client(host=proxy.url)
    out = client.embed(model="nomic-embed-text", input=["a", "b", "c"])
    assert len(out.embeddings) == 3
    legacy = client.embeddings(model="nomic-embed-text", prompt="a")
    assert legacy.embedding


def test_queue_headers_and_record(proxy):
    r = requests.post(f"{proxy.url}/api/generate", timeout=30,
                      json={"model": "llama3.2:1b", "prompt": "x", "stream": False,
                            "options": {"num_predict": 3}})
    assert r.status_code == 200, r.text
    # the record is completed right after the answer is written (bookkeeping follows it)
    rid = r.headers["X-OLOL-Request-Id"]
    assert wait_until(lambda: (proxy.queue.get(rid) or {}).get("status") == "completed", timeout=5)


def test_openai_chat_completions_and_embeddings(proxy):
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hello"}]
    done = client.chat.completions.create(model="llama3.2:1b", messages=msgs, max_tokens=6)
    assert done.choices[0].message.content and done.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="llama3.2:1b", messages=msgs,
                                                 max_tokens=6, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    text = client.completions.create(model="llama3.2:1b", prompt="x", max_tokens=4)
    assert text.choices[0].text
    emb = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 1


def test_job_runs_to_completion(proxy):
    r = requests.post(f"{proxy.url}/olol/v1/jobs", timeout=5, json={
        "endpoint": "generate",
        "body": {"model": "llama3.2:1b", "prompt": "x", "options": {"num_predict": 3}},
    })
    assert r.status_code == 202
    job_id = r.json()["id"]
    deadline = time.monotonic() + 20
    got = {}
    while time.monotonic() < deadline:
        got = requests.get(f"{proxy.url}/olol/v1/jobs/{job_id}", timeout=5).json()
        if got["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert got["status"] == "completed", got
    assert got["result"]["done"] is True and got["result"]["response"]

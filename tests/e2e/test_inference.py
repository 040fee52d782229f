"""The proxy as a drop-in Ollama and OpenAI server, with the official clients."""

import base64
import struct

import ollama
import openai
import pytest
import requests

MSG = [{"role": "user", "content": "Tell me about load balancers."}]


def direct(cluster):
    return ollama.Client(host=cluster.sims[0].url)


def test_chat_and_generate_match_ollama_direct(cluster):
    via = ollama.Client(host=cluster.url)
    for stream in (False, True):
        got = via.chat(model="llama3.2:1b", messages=MSG, options={"seed": 3}, stream=stream)
        want = direct(cluster).chat(model="llama3.2:1b", messages=MSG, options={"seed": 3}, stream=stream)
        if stream:
            got, want = list(got), list(want)
            assert len(got) > 2 and got[-1].done and not got[0].done
            assert "".join(c.message.content for c in got) == "".join(c.message.content for c in want)
            assert got[-1].done_reason == want[-1].done_reason
            assert got[-1].eval_count == want[-1].eval_count
        else:
            assert got.message.content == want.message.content
            assert got.done and got.eval_count == want.eval_count
            assert got.model == "llama3.2:1b"
    g = via.generate(model="qwen2.5:0.5b", prompt="why is the sky blue?", options={"seed": 9, "num_predict": 5})
    w = direct(cluster).generate(model="qwen2.5:0.5b", prompt="why is the sky blue?", options={"seed": 9, "num_predict": 5})
    assert g.response == w.response and g.done_reason == "length" and g.eval_count == 5
    chunks = list(via.generate(model="qwen2.5:0.5b", prompt="why is the sky blue?",
                               options={"seed": 9, "num_predict": 5}, stream=True))
    assert "".join(c.response for c in chunks) == w.response


def test_embeddings_match_direct(cluster):
    via = ollama.Client(host=cluster.url)
    got = via.embed(model="nomic-embed-text", input=["a", "b"])
    want = direct(cluster).embed(model="nomic-embed-text", input=["a", "b"])
    assert got.embeddings == want.embeddings and len(got.embeddings) == 2
    legacy = via.embeddings(model="nomic-embed-text", prompt="a")
    assert legacy.embedding == direct(cluster).embeddings(model="nomic-embed-text", prompt="a").embedding


def test_model_listing_endpoints(cluster):
    via = ollama.Client(host=cluster.url)
    names = {m.model for m in via.list().models}
    assert {"llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"} <= names
    via.chat(model="qwen2.5:0.5b", messages=MSG)
    # /api/ps asks the nodes now: the model just used is listed at once
    loaded = {m.model: m for m in via.ps().models}
    assert "qwen2.5:0.5b" in loaded and loaded["qwen2.5:0.5b"].expires_at
    shown = via.show("llama3.2:1b")
    assert shown.capabilities and "completion" in shown.capabilities
    assert requests.get(cluster.url + "/api/version", timeout=5).json()["version"]
    assert requests.head(cluster.url + "/", timeout=5).status_code == 200


def test_errors_in_ollamas_format(cluster):
    via = ollama.Client(host=cluster.url)
    with pytest.raises(ollama.ResponseError) as err:
        via.chat(model="no-such-model", messages=MSG)
    assert err.value.status_code == 404 and "not found" in err.value.error
    r = requests.post(cluster.url + "/api/chat", data=b"{not json", timeout=5)
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(cluster.url + "/api/chat", json={"messages": MSG}, timeout=5)
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = requests.post(cluster.url + "/api/generate", json={"model": "llama3.2:1b", "stream": "yes"}, timeout=5)
    assert r.status_code == 400 and "stream" in r.json()["error"]
    r = requests.post(cluster.url + "/api/chat", data=b"x" * (33 * 1024 * 1024), timeout=30)
    assert r.status_code == 413 and "error" in r.json()
    r = requests.get(cluster.url + "/api/nothing", timeout=5)
    assert r.status_code == 404


def test_queue_headers(cluster):
    r = requests.post(cluster.url + "/api/chat", json={"model": "llama3.2:1b", "messages": MSG, "stream": False}, timeout=10)
    assert r.status_code == 200
    assert int(r.headers["X-OLOL-Queue-Position"]) >= 1
    assert len(r.headers["X-OLOL-Request-Id"]) >= 16


def test_openai_client(cluster):
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused")
    resp = client.chat.completions.create(model="llama3.2:1b", messages=MSG, seed=4)
    assert resp.choices[0].message.content and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0
    parts = list(client.chat.completions.create(model="llama3.2:1b", messages=MSG, seed=4, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == resp.choices[0].message.content
    comp = client.completions.create(model="qwen2.5:0.5b", prompt="hello", max_tokens=5)
    assert comp.choices[0].text and comp.choices[0].finish_reason == "length"
    emb = client.embeddings.create(model="nomic-embed-text", input=["x", "y"])  # base64 by default
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 8
    raw = requests.post(cluster.url + "/v1/embeddings", json={"model": "nomic-embed-text", "input": "x",
                        "encoding_format": "base64"}, timeout=5).json()
    floats = struct.unpack(f"<{len(base64.b64decode(raw['data'][0]['embedding'])) // 4}f",
                           base64.b64decode(raw["data"][0]["embedding"]))
    assert floats == pytest.approx(emb.data[0].embedding, rel=1e-6)
    models = {m.id for m in client.models.list()}
    assert "llama3.2:1b" in models
    assert client.models.retrieve("llama3.2:1b").id == "llama3.2:1b"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing-model", messages=MSG)

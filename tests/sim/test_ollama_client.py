"""The simulator driven by the official ``ollama`` client."""

from __future__ import annotations

import hashlib
import json

import ollama
import pytest


@pytest.fixture
def client(sim):
    return ollama.Client(host=sim.url, timeout=10)


def test_generate_stream_and_non_stream_agree(client):
    opts = {"seed": 42}
    whole = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?", options=opts)
    parts = list(client.generate(model="llama3.2:1b", prompt="Why is the sky blue?",
                                 options=opts, stream=True))
    assert whole.done and whole.done_reason == "stop" and whole.response
    assert "".join(p.response for p in parts) == whole.response
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    final = parts[-1]
    for field in ("total_duration", "load_duration", "prompt_eval_count",
                  "prompt_eval_duration", "eval_count", "eval_duration"):
        assert getattr(final, field) > 0, field
    assert final.eval_count == len(parts) - 1
    assert final.context and all(isinstance(t, int) for t in final.context)


def test_chat_stream_thinking_and_num_predict(client):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    out = client.chat(model="qwen3:0.6b", messages=msgs, think=True,
                      options={"seed": 3, "num_predict": 5})
    assert out.message.role == "assistant"
    assert out.message.thinking
    assert out.done_reason == "length" and out.eval_count >= 5
    chunks = list(client.chat(model="qwen3:0.6b", messages=msgs, stream=True, think=True,
                              options={"seed": 3, "num_predict": 5}))
    assert "".join(c.message.content for c in chunks) == out.message.content
    assert "".join(c.message.thinking or "" for c in chunks) == out.message.thinking


def test_chat_format_json_and_schema(client):
    msgs = [{"role": "user", "content": "give me json"}]
    out = client.chat(model="llama3.2:1b", messages=msgs, format="json")
    assert isinstance(json.loads(out.message.content), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                                "age": {"type": "integer"}},
              "required": ["name", "age"]}
    data = json.loads(client.chat(model="llama3.2:1b", messages=msgs, format=schema)
                      .message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_chat_tools(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    out = client.chat(model="llama3.2:1b", tools=tools,
                      messages=[{"role": "user", "content": "Use get_weather for Paris"}])
    (call,) = out.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)
    plain = client.chat(model="llama3.2:1b", tools=tools,
                        messages=[{"role": "user", "content": "hello there"}])
    assert not plain.message.tool_calls and plain.message.content
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="gemma3:1b", tools=tools, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 400
    assert err.value.error == "registry.ollama.ai/library/gemma3:1b does not support tools"


def test_embed_and_embeddings(client):
    res = client.embed(model="nomic-embed-text", input=["alpha", "beta"])
    assert len(res.embeddings) == 2 and all(len(v) == 64 for v in res.embeddings)
    for vec in res.embeddings:
        assert abs(sum(x * x for x in vec) - 1.0) < 1e-9
    assert res.embeddings[0] != res.embeddings[1]
    again = client.embed(model="nomic-embed-text", input="alpha")
    assert again.embeddings[0] == res.embeddings[0]
    legacy = client.embeddings(model="nomic-embed-text", prompt="alpha")
    assert len(legacy.embedding) == 64


def test_model_errors(client):
    cases = [
        (lambda: client.generate(model="nope", prompt="x"), 404, "model 'nope' not found"),
        (lambda: client.chat(model="nope", messages=[{"role": "user", "content": "x"}]), 404,
         "model 'nope' not found"),
        (lambda: client.embed(model="nope", input="x"), 404,
         'model "nope" not found, try pulling it first'),
        (lambda: client.embeddings(model="nope", prompt="x"), 404,
         'model "nope" not found, try pulling it first'),
        (lambda: client.show("nope"), 404, "model 'nope' not found"),
        (lambda: client.delete("nope"), 404, "model 'nope' not found"),
        (lambda: client.copy("nope", "other"), 404, 'model "nope" not found'),
        (lambda: client.generate(model="nomic-embed-text", prompt="x"), 400,
         '"nomic-embed-text" does not support generate'),
        (lambda: client.embed(model="llama3.2:1b", input="x"), 400,
         '"llama3.2:1b" does not support embeddings'),
        (lambda: client.chat(model="gemma3:1b", think=True,
                             messages=[{"role": "user", "content": "x"}]), 400,
         '"gemma3:1b" does not support thinking'),
    ]
    for call, status, message in cases:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert (err.value.status_code, err.value.error) == (status, message)
    with pytest.raises(ollama.ResponseError) as err:
        next(iter(client.generate(model="nope", prompt="x", stream=True)))
    assert err.value.status_code == 404


def test_list_show_ps_copy_delete(client):
    names = {m.model for m in client.list().models}
    assert {"llama3.2:1b", "nomic-embed-text:latest"} <= names
    show = client.show("llama3.2:1b")
    assert show.capabilities == ["completion", "tools", "thinking"]
    assert show.modelinfo["general.architecture"] == "llama"
    assert show.details.family == "llama" and "FROM" in show.modelfile
    assert client.show("nomic-embed-text").capabilities == ["embedding"]
    assert client.ps().models == []
    client.generate(model="llama3.2:1b", prompt="hi")
    (loaded,) = client.ps().models
    assert loaded.model == "llama3.2:1b" and loaded.size_vram == loaded.size > 0
    assert client.copy("llama3.2:1b", "backup:v1").status == "success"
    copied = {m.model: m for m in client.list().models}
    assert copied["backup:v1"].digest == copied["llama3.2:1b"].digest
    assert client.delete("backup:v1").status == "success"
    assert "backup:v1" not in {m.model for m in client.list().models}


def test_pull_streams_progress_and_installs(client):
    assert "qwen2.5:0.5b" not in {m.model for m in client.list().models}
    statuses = [p.status for p in client.pull("qwen2.5:0.5b", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    assert "qwen2.5:0.5b" in {m.model for m in client.list().models}
    assert client.pull("all-minilm").status == "success"


def test_pull_unknown_model(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("does-not-exist")
    assert err.value.status_code == 500
    assert err.value.error == "pull model manifest: file does not exist"
    stream = client.pull("does-not-exist", stream=True)
    assert next(stream).status == "pulling manifest"
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        next(stream)


def test_push_and_create(client, tmp_path):
    statuses = [p.status for p in client.push("llama3.2:1b", stream=True)]
    assert statuses[0] == "retrieving manifest" and statuses[-1] == "success"
    assert "starting upload" in statuses and "pushing manifest" in statuses
    assert client.push("llama3.2:1b").status == "success"

    assert client.create("pirate", from_="llama3.2:1b", system="Talk like a pirate").status \
        == "success"
    show = client.show("pirate")
    assert "pirate" in show.modelfile and show.details.family == "llama"

    blob = tmp_path / "model.gguf"
    blob.write_bytes(b"GGUF" + bytes(1000))
    digest = client.create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    steps = [p.status for p in client.create("fromfile", files={"model.gguf": digest},
                                             stream=True)]
    assert steps[0] == "parsing GGUF" and steps[-1] == "success"
    assert client.generate(model="fromfile", prompt="hello").response
    with pytest.raises(ollama.ResponseError) as err:
        client.create("nothing")
    assert err.value.status_code == 400


def test_load_and_unload_with_empty_prompt(client, sim):
    loaded = client.generate(model="llama3.2:1b", prompt="")
    assert loaded.done_reason == "load" and loaded.response == ""
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]
    unloaded = client.chat(model="llama3.2:1b", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and unloaded.message.content == ""
    assert client.ps().models == []
    assert sim.stats()["model_unloads"] == 1

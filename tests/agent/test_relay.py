"""Every Ollama endpoint relayed through a real agent, compared with the simulator directly."""

from __future__ import annotations

import hashlib
import http.server
import threading

import orjson
import requests

from olol.agent.agent import Agent, AgentConfig
from olol.rpc.client import NodeClient

VOLATILE = {"created_at", "total_duration", "load_duration", "prompt_eval_duration",
            "eval_duration", "modified_at", "expires_at"}


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def direct_lines(sim, path: str, body: dict) -> list[dict]:
    r = requests.post(sim.url + path, json=body, timeout=10)
    r.raise_for_status()
    return [orjson.loads(line) for line in r.content.splitlines() if line]


GEN = {
    "model": "llama3.2:1b", "prompt": "Why is the sky blue?", "system": "Be brief.",
    "options": {"seed": 42, "num_predict": 12, "temperature": 0.2, "stop": ["zzz"]},
    "keep_alive": "5m", "format": {"type": "object", "properties": {"a": {"type": "string"}}},
}


def test_generate_not_streamed_same_answer_as_direct(sim, client):
    body = dict(GEN, stream=False)
    relayed = list(client.generate(body))
    direct = direct_lines(sim, "/api/generate", body)
    assert len(relayed) == 1 and len(direct) == 1
    assert stable(relayed[0]) == stable(direct[0])
    for key in ("done_reason", "context", "eval_count", "total_duration", "created_at"):
        assert key in relayed[0]


def test_generate_streamed_chunk_by_chunk(sim, client):
    body = dict(GEN, stream=True)
    stream = client.generate(body)
    relayed = list(stream)
    direct = direct_lines(sim, "/api/generate", body)
    assert [stable(r) for r in relayed] == [stable(d) for d in direct]
    assert len(relayed) >= 3
    assert all(r["done"] is False for r in relayed[:-1])
    assert relayed[-1]["done"] is True and stream.done


def test_generate_raw_mode_yields_the_ndjson_bytes(client):
    lines = list(client.generate(dict(GEN, stream=True), raw=True))
    assert all(isinstance(line, bytes) and not line.endswith(b"\n") for line in lines)
    assert orjson.loads(lines[-1])["done"] is True


def test_chat_with_tools_and_think_fields(sim, client):
    body = {
        "model": "llama3.2:1b", "stream": True,
        "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "options": {"seed": 7, "num_predict": 6}, "think": False,
    }
    relayed = list(client.chat(body))
    direct = direct_lines(sim, "/api/chat", body)
    assert [stable(r) for r in relayed] == [stable(d) for d in direct]
    assert all("message" in r for r in relayed)


def test_embed_and_legacy_embeddings(sim, client):
    body = {"model": "nomic-embed-text", "input": ["a", "b c"], "dimensions": 8}
    relayed = client.embed(body)
    direct = requests.post(sim.url + "/api/embed", json=body, timeout=10).json()
    assert relayed["embeddings"] == direct["embeddings"]
    assert len(relayed["embeddings"]) == 2
    legacy = client.embeddings({"model": "nomic-embed-text", "prompt": "a"})
    assert legacy["embedding"] == requests.post(
        sim.url + "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"}, timeout=10
    ).json()["embedding"]


def test_list_show_ps_version(sim, client):
    assert client.tags() == requests.get(sim.url + "/api/tags", timeout=10).json()
    assert client.version() == requests.get(sim.url + "/api/version", timeout=10).json()
    shown = client.show({"model": "llama3.2:1b"})
    assert "model_info" in shown
    assert shown == requests.post(sim.url + "/api/show", json={"model": "llama3.2:1b"},
                                  timeout=10).json()
    list(client.generate({"model": "llama3.2:1b", "prompt": "x", "stream": False}))
    names = [m["name"] for m in client.ps()["models"]]
    assert any(n.startswith("llama3.2") for n in names)


def test_copy_delete_pull_progress(client):
    assert client.copy({"source": "llama3.2:1b", "destination": "backup:1"}) == {}
    assert "backup:1" in [m["name"] for m in client.tags()["models"]]
    assert client.delete({"model": "backup:1"}) == {}
    assert "backup:1" not in [m["name"] for m in client.tags()["models"]]
    progress = list(client.pull({"model": "llama3.2:1b", "stream": True}))
    assert progress[0]["status"] == "pulling manifest"
    assert progress[-1]["status"] == "success"


def test_model_command_streams_progress(client):
    out = list(client.model_command("copy", {"source": "llama3.2:1b", "destination": "c:1"}))
    assert out == [{"status": "success"}]
    out = list(client.model_command("delete", {"model": "c:1"}))
    assert out == [{"status": "success"}]
    out = list(client.model_command("pull", {"model": "llama3.2:1b"}))
    assert out[-1]["status"] == "success" and len(out) > 2


def test_blob_upload_then_exists(client, request):
    # a blob of its own per run (the module's simulator keeps what earlier runs uploaded)
    data = b"GGUF" + request.node.name.encode() + bytes(range(256)) * 64
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.blob_exists(digest) is False
    status = client.upload_blob(digest, [data[:1000], data[1000:]], size=len(data))
    assert status in (200, 201)
    assert client.blob_exists(digest) is True


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records the raw body and answers with fields no Ollama version has yet."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: list[bytes] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        out = b'{"model":"m","future_field":{"x":[1,2]},"done":true,"done_reason":"stop"}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_unknown_fields_pass_through_byte_for_byte():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=server.serve_forever, name="recorder", kwargs={"poll_interval": 0.05})
    t.start()
    try:
        with Agent(AgentConfig(ollama_url=f"http://127.0.0.1:{server.server_port}")) as agent:
            raw = b'{"model":"m","prompt":"p","brand_new_knob":{"deep":[1,2.50,"x"]},"stream":true}'
            with NodeClient(agent.address) as client:
                out = list(client.generate(raw))
        assert _Recorder.bodies[-1] == raw
        assert out == [{"model": "m", "future_field": {"x": [1, 2]}, "done": True,
                        "done_reason": "stop"}]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


CHAT = {
    "model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello", "images": []}],
    "options": {"seed": 7, "num_predict": 9}, "keep_alive": 300, "think": False,
}


def test_chat_not_streamed_same_answer_as_direct(sim, client):
    body = dict(CHAT, stream=False)
    relayed = list(client.chat(body))
    direct = direct_lines(sim, "/api/chat", body)
    assert len(relayed) == 1 and stable(relayed[0]) == stable(direct[0])
    assert relayed[0]["done_reason"] == "length" and relayed[0]["eval_count"] == 9


def test_create_and_push_relay_progress_like_direct(sim, client):
    create = {"model": "relay-made:latest", "from": "llama3.2:1b", "system": "terse"}
    def steps(records):  # layer digests depend on the new model's name
        return [r["status"].split(" sha256:")[0] for r in records]

    relayed = steps(client.create(dict(create, stream=True)))
    direct = steps(direct_lines(sim, "/api/create", dict(
        create, model="direct-made:latest", stream=True)))
    assert relayed == direct and relayed[-1] == "success"
    assert {"relay-made:latest", "direct-made:latest"} <= {m["model"] for m in client.tags()["models"]}
    pushed = [r["status"] for r in client.push({"model": "relay-made:latest", "stream": True})]
    assert pushed[-1] == "success"
    client.delete({"model": "relay-made:latest"})
    client.delete({"model": "direct-made:latest"})

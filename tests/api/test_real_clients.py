"""The official ``openai`` and ``ollama`` clients parse what this layer produces.

A tiny HTTP server on 127.0.0.1 answers with bytes built by olol.api (canned native
answers run through the translators); the clients talk to it over real sockets.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ollama
import openai
import pytest

from olol.api.errors import ApiError, model_not_found
from olol.api.openai_compat import (
    SSE_CONTENT_TYPE,
    ChatStreamTranslator,
    chat_completion_to_ollama,
    embedding_encoding_format,
    embeddings_to_ollama,
    include_usage,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_tags_to_openai_models,
    openai_stream_error_event,
)
from olol.api.streaming import NDJSON_CONTENT_TYPE, ndjson_line, ollama_stream_error_line
from olol.api.validation import parse_json_body, validate_chat

VECTORS = [[0.1, 0.2, -0.3], [0.5, -0.5, 0.0]]
RECORDS = [
    {
        "model": "m",
        "created_at": "2024-01-01T00:00:00Z",
        "done": False,
        "message": {"role": "assistant", "content": "Hi"},
    },
    {
        "model": "m",
        "created_at": "2024-01-01T00:00:00Z",
        "done": False,
        "message": {"role": "assistant", "content": " there"},
    },
    {
        "model": "m",
        "created_at": "2024-01-01T00:00:00Z",
        "done": True,
        "done_reason": "stop",
        "message": {"role": "assistant", "content": ""},
        "prompt_eval_count": 4,
        "eval_count": 2,
    },
]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, content_type, payload):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        tags = {"models": [{"name": "m:latest", "modified_at": "2024-01-01T00:00:00Z"}]}
        self._send(200, "application/json", json.dumps(ollama_tags_to_openai_models(tags)).encode())

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = parse_json_body(raw, 1 << 20)
            if self.path == "/v1/chat/completions":
                self._chat(body)
            elif self.path == "/v1/embeddings":
                native = embeddings_to_ollama(body)
                resp = {"model": native["model"], "embeddings": VECTORS, "prompt_eval_count": 3}
                out = ollama_embed_to_openai(resp, native["model"], embedding_encoding_format(body))
                self._send(200, "application/json", json.dumps(out).encode())
            elif self.path == "/api/chat":
                validate_chat(body)
                lines = b"".join(ndjson_line(r) for r in RECORDS[:1])
                if body["messages"][0]["content"] == "fail midway":
                    lines += ollama_stream_error_line("runner crashed")
                else:
                    lines += b"".join(ndjson_line(r) for r in RECORDS[1:])
                self._send(200, NDJSON_CONTENT_TYPE, lines)
        except ApiError as exc:
            body = exc.openai_body() if self.path.startswith("/v1") else exc.ollama_body()
            self._send(exc.status, "application/json", json.dumps(body).encode())

    def _chat(self, body):
        native = chat_completion_to_ollama(body)
        if native["model"] == "missing":
            raise model_not_found("chat", "missing")
        if not native["stream"]:
            final = {**RECORDS[-1], "message": {"role": "assistant", "content": "Hi there"}}
            out = ollama_chat_to_openai(final, body["model"], "chatcmpl-7", 1700000000)
            self._send(200, "application/json", json.dumps(out).encode())
            return
        translator = ChatStreamTranslator(
            body["model"], "chatcmpl-8", 1700000000, include_usage(body)
        )
        payload = translator.feed_sse(RECORDS[0])
        if native["messages"][0]["content"] == "fail midway":
            payload += openai_stream_error_event("runner crashed")
        else:
            payload += b"".join(translator.feed_sse(r) for r in RECORDS[1:])
        self._send(200, SSE_CONTENT_TYPE, payload)


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="test-api-fake-front-door",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def oai(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=5)


def test_openai_chat_non_streamed(oai):
    resp = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Hi there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == 6


def test_openai_chat_streamed_with_usage(oai):
    stream = oai.chat.completions.create(
        model="m",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2


def test_openai_mid_stream_error_raises(oai):
    stream = oai.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "fail midway"}]
    )
    with pytest.raises(openai.APIError, match="runner crashed"):
        list(stream)


def test_openai_errors_map_to_sdk_exceptions(oai):
    with pytest.raises(openai.NotFoundError, match="model 'missing' not found"):
        oai.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="too short"):
        oai.chat.completions.create(model="m", messages=[])


def test_openai_embeddings_default_base64_decodes_to_floats(oai):
    resp = oai.embeddings.create(model="e", input=["a", "b"])  # SDK asks for base64
    for got, want in zip((d.embedding for d in resp.data), VECTORS, strict=True):
        assert got == pytest.approx(want, abs=1e-7)
    floats = oai.embeddings.create(model="e", input="a", encoding_format="float")
    assert floats.data[0].embedding == VECTORS[0]


def test_openai_models_list(oai):
    assert [m.id for m in oai.models.list()] == ["m:latest"]


def test_ollama_client_stream_and_error_line(server_url):
    client = ollama.Client(host=server_url, timeout=5)
    parts = list(client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Hi there"
    assert parts[-1].done_reason == "stop"
    with pytest.raises(ollama.ResponseError, match="runner crashed"):
        list(
            client.chat(
                model="m", messages=[{"role": "user", "content": "fail midway"}], stream=True
            )
        )
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="a b", messages=[])
    assert (info.value.status_code, info.value.error) == (404, "model 'a b' not found")

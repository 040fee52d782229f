"""NDJSON framing for Ollama's native streams.

One compact JSON object and ``\\n`` per record, never a blank line (the ``ollama``
client parses every line and fails on an empty one). An error after the stream has
started is one more record, ``{"error": "..."}``, after which the stream ends.
"""

from __future__ import annotations

from typing import Any

import orjson

from olol.api.errors import ollama_error_body

#: Field of a stream's final record (native and OpenAI) saying that the answer was
#: carried over to another node mid-stream, and how many times (``olol.resume``).
#: The HTTP headers are gone by then: a field is the only place left to say so.
RESUMED_FIELD = "olol_resumed"

#: Content types Ollama uses for its two response styles.
NDJSON_CONTENT_TYPE = "application/x-ndjson"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def ndjson_line(obj: Any) -> bytes:
    """Encode one record: compact JSON (orjson) followed by a newline.

    orjson never emits a raw newline inside the encoded value, so the result is always
    exactly one line.
    """
    return orjson.dumps(obj) + b"\n"


def ollama_stream_error_line(message: str) -> bytes:
    """The record Ollama writes when a stream fails after its first record."""
    return ndjson_line(ollama_error_body(message))


def respeller(model: str):
    """A function that rewrites one node message (NDJSON records joined by ``\\n``) so
    every record's ``model`` is the caller's spelling, and adds the final newline.

    Records that already start with ``{"model":"<model>",`` (Ollama writes ``model``
    first) pass through as bytes; only the others are decoded.
    """
    prefix = b'{"model":' + orjson.dumps(model) + b","

    def fix(line: bytes) -> bytes:
        if line.startswith(prefix):
            return line
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return line
        if isinstance(record, dict) and "model" in record and record["model"] != model:
            record["model"] = model
            return orjson.dumps(record)
        return line

    def render(body: bytes, done: bool = False) -> bytes:
        if not body:
            return b""
        if b"\n" not in body:
            return fix(body) + b"\n"
        return b"".join(fix(line) + b"\n" for line in body.split(b"\n") if line)

    return render

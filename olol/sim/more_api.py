"""More of Ollama's routes: the Anthropic Messages API (``POST /v1/messages``), the
OpenAI Responses API (``POST /v1/responses``), image generation
(``POST /v1/images/generations``), ``GET /api/status``, and the simulator's stand-ins
for an endpoint a newer Ollama adds.

``/v1/messages`` and ``/v1/responses`` are answered as Ollama answers them: the body
is translated to a native chat (the proxy's own translation, :mod:`olol.api.anthropic`
and :mod:`olol.api.responses_api`, which follow Ollama's middleware), run like
``/api/chat``, and its records translated back (one object, or server-sent events
when ``stream`` is true). Errors take the API's shape (Anthropic's
``{"type": "error", "error": {...}}`` for ``/v1/messages``). As Ollama does for its
Anthropic layer, a ``thinking`` request to a model that cannot think runs without.

``/v1/images/generations`` is the OpenAI-style image route Ollama served from 0.14.3
to 0.32 (removed in 0.33 with its MLX image runner): ``{"model", "prompt", "size",
"response_format", "seed"}`` in, ``{"created", "data": [{"b64_json"}]}`` out. The
simulator draws a small deterministic PNG (a function of model, prompt and seed) for
any generative model. olol has no route for it: tests use it for the pass-through.

``/api/x-sim/echo`` (NDJSON) and ``/v1/x-sim/echo`` (server-sent events) stand for an
endpoint a newer Ollama could add: no Ollama serves them. They answer as
``/api/generate`` and ``/v1/completions`` do, so that the proxy's pass-through of a
*streamed* answer on a route it does not know is tested end to end.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from olol.api import anthropic as an
from olol.api import anthropic_answers as aa
from olol.api import responses_answers as rs
from olol.api import responses_api as ra
from olol.api.errors import ApiError as TranslationError
from olol.sim.httpserver import ApiError, Exchange
from olol.sim.native import NativeEmitter
from olol.sim.openai_api import model_entry

if TYPE_CHECKING:
    from olol.sim.simulator import Simulator

SSE = "text/event-stream"
MAX_IMAGE_SIDE = 64


class _Translated(NativeEmitter):
    """A native chat's records, written as another API's answer."""

    def __init__(self, ex: Exchange, api: Any, model: str, stream: bool, answer: Any):
        super().__init__(ex, api, model, stream, chat=True, raw=False)
        self.answer = answer

    def begin(self) -> None:
        if self.stream:
            self.ex.stream_fault = self.api.sim.faults.take_stream_fault()
            self.ex.start_stream(SSE, headers={"Cache-Control": "no-cache"})

    def out(self, rec: dict) -> None:
        data = self.answer.stream_chunk(rec)
        if data:  # an empty chunk would end the HTTP stream
            self.ex.write_record(data)

    def last(self, rec: dict) -> None:
        if self.stream:
            self.out(rec)
            self.ex.end_stream()
        else:
            self.ex.send_json(200, self.answer.whole(rec))


class _Messages:
    def __init__(self, body: Mapping[str, Any], model: str, message_id: str) -> None:
        self.model, self.message_id = model, message_id
        self.stream = aa.MessagesStreamTranslator(model, message_id,
                                                  an.estimate_input_tokens(body))

    def whole(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return aa.ollama_chat_to_message(record, self.model, self.message_id)

    def stream_chunk(self, record: Mapping[str, Any]) -> bytes:
        return self.stream.feed_sse(record)


class _Response:
    def __init__(self, body: Mapping[str, Any], model: str, response_id: str,
                 clock: Any) -> None:
        self.body, self.model, self.response_id, self.clock = body, model, response_id, clock
        self.created_at = int(clock())
        self.stream = rs.ResponsesStreamTranslator(model, response_id, body,
                                                   self.created_at, clock)

    def whole(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return rs.ollama_chat_to_response(record, self.model, self.response_id, self.body,
                                          created_at=self.created_at,
                                          completed_at=int(self.clock()))

    def stream_chunk(self, record: Mapping[str, Any]) -> bytes:
        return self.stream.feed_sse(record)


def _native(translate: Any, body: Any) -> dict[str, Any]:
    try:
        return translate(body)
    except TranslationError as exc:
        raise ApiError(exc.status, exc.message) from None


def _request_id(kind: str, ex: Exchange, body: Any) -> str:
    digest = hashlib.sha256(f"{id(ex)}:{kind}:{len(str(body))}".encode()).hexdigest()
    return digest[:24]


class MoreApi:
    """Handlers of the routes this module describes."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.native = sim.native

    def _run_chat(self, ex: Exchange, native: dict[str, Any], answer: Any) -> None:
        entry = self.native.lookup(native.get("model"))
        if entry is not None and native.get("think") and not entry.spec.thinking:
            native = {k: v for k, v in native.items() if k != "think"}
        name, entry, job = self.native.chat_job(native)
        if job is None:  # the translations always send messages
            raise ApiError(400, "messages is required")
        emitter = _Translated(ex, self.native, name, bool(native.get("stream")), answer)
        self.native.engine.run(ex, job, emitter)

    def messages(self, ex: Exchange) -> None:
        body = ex.json("anthropic.MessagesRequest")
        native = _native(an.messages_to_ollama, body)
        model = native["model"]
        answer = _Messages(body, model, f"msg_{_request_id('msg', ex, body)}")
        self._run_chat(ex, native, answer)

    def responses(self, ex: Exchange) -> None:
        body = ex.json("openai.ResponsesRequest")
        native = _native(ra.responses_to_ollama, body)
        model = native["model"]
        answer = _Response(body, model, f"resp_{_request_id('resp', ex, body)}",
                           self.sim.wall_clock)
        self._run_chat(ex, native, answer)

    def images(self, ex: Exchange) -> None:
        body = ex.json("openai.ImageGenerationRequest")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt is required")
        model, entry = model_entry(self.native, body, "generate")
        seed = body.get("seed")
        side = 8
        size = body.get("size")
        if isinstance(size, str) and "x" in size:
            try:
                w, _h = (int(v) for v in size.lower().split("x", 1))
                side = max(1, min(MAX_IMAGE_SIDE, w // 64 or 1))
            except ValueError:
                side = 8
        png = _png(hashlib.sha256(f"{entry.spec.name}\x00{prompt}\x00{seed}".encode()).digest(),
                   side)
        ex.send_json(200, {"created": int(self.sim.wall_clock()),
                           "data": [{"b64_json": base64.b64encode(png).decode()}]})

    def status(self, ex: Exchange) -> None:
        ex.send_json(200, {"cloud": {"disabled": False, "source": "none"}})

    def echo(self, ex: Exchange) -> None:
        self.native.generate(ex)

    def echo_sse(self, ex: Exchange) -> None:
        self.sim.openai.completions(ex)


def _png(seed: bytes, side: int) -> bytes:
    """A ``side`` × ``side`` RGB PNG whose colours come from ``seed``."""
    rows = b"".join(b"\x00" + bytes(seed[(x + y) % len(seed)] for x in range(side * 3))
                    for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

"""The OpenAI-compatible ``/v1`` endpoints (chat, completions, embeddings, models)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from olol.sim import textgen
from olol.sim.engine import Emitter, Job, Result
from olol.sim.httpserver import ApiError, Exchange, dumps
from olol.sim.native import full_name

if TYPE_CHECKING:
    from olol.sim.native import NativeApi

_EFFORTS = {"none": False, "minimal": True, "low": True, "medium": True, "high": True,
            "max": True, "xhigh": True, "ultra": True}


def error_body(status: int, message: str) -> dict:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise ApiError(400, "invalid message content")
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise ApiError(400, "invalid message content type")


class OpenAIApi:
    def __init__(self, native: NativeApi):
        self.native = native
        self.sim = native.sim

    def _created(self) -> int:
        return int(self.sim.wall_clock())

    def _entry(self, body: dict, op: str):
        return model_entry(self.native, body, op)

    def _options(self, body: dict) -> dict:
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool)
                                       or not isinstance(max_tokens, int)):
            raise ApiError(400, "max_tokens must be an integer")
        stop = body.get("stop")
        return {"seed": body.get("seed"), "num_predict": max_tokens,
                "stop": [stop] if isinstance(stop, str) else stop or []}

    def _stream_flags(self, body: dict) -> tuple[bool, bool]:
        stream = body.get("stream") is True
        opts = body.get("stream_options")
        include = isinstance(opts, dict) and opts.get("include_usage") is True
        return stream, include

    def chat(self, ex: Exchange) -> None:
        body = self.native_json(ex)
        name, entry = self._entry(body, "chat")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "[] is too short - 'messages'")
        parts = []
        for m in messages:
            if not isinstance(m, dict):
                raise ApiError(400, "invalid message format")
            parts.append(f"{str(m.get('role', '')).lower()}: {_content_text(m.get('content'))}")
        tools = body.get("tools") or None
        if tools and not entry.spec.tools:
            raise ApiError(400, f"{full_name(entry.spec.name)} does not support tools")
        effort = body.get("reasoning_effort")
        if isinstance(body.get("reasoning"), dict):
            effort = body["reasoning"].get("effort", effort)
        if effort is not None and effort not in _EFFORTS:
            raise ApiError(400, f"invalid reasoning value: '{effort}' (must be \"low\", "
                                "\"medium\", \"high\", or \"none\")")
        think = bool(effort and _EFFORTS[effort] and entry.spec.thinking)
        fmt: object = None
        rf = body.get("response_format")
        if isinstance(rf, dict):
            if rf.get("type") == "json_object":
                fmt = "json"
            elif rf.get("type") == "json_schema":
                schema = (rf.get("json_schema") or {}).get("schema")
                fmt = schema if isinstance(schema, dict) else "json"
        opts = self._options(body)
        last_user = str(messages[-1].get("role", "")).lower() == "user"
        job = Job(model=name, spec=entry.spec, prompt="\x00".join(parts), seed=opts["seed"],
                  num_predict=opts["num_predict"], fmt=fmt,
                  tools=tools if last_user else None, think=think, stop=opts["stop"])
        stream, include = self._stream_flags(body)
        emitter = _ChatEmitter(ex, self, name, stream, include)
        self.native.engine.run(ex, job, emitter)

    def completions(self, ex: Exchange) -> None:
        body = self.native_json(ex)
        name, entry = self._entry(body, "generate")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise ApiError(400, "invalid type for 'prompt' field: only string is supported")
        opts = self._options(body)
        job = Job(model=name, spec=entry.spec, prompt=f"\x00{prompt}", seed=opts["seed"],
                  num_predict=opts["num_predict"], stop=opts["stop"])
        stream, include = self._stream_flags(body)
        emitter = _CompletionEmitter(ex, self, name, stream, include)
        self.native.engine.run(ex, job, emitter)

    def embeddings(self, ex: Exchange) -> None:
        body = self.native_json(ex)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        entry = self.native.embed_entry(name)
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        else:
            raise ApiError(400, "invalid input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, f"invalid encoding format: {encoding!r}")
        vecs, metrics = self.native.embed_vectors(ex, entry, {}, texts, body.get("dimensions"))
        data = [{"object": "embedding", "index": i,
                 "embedding": textgen.float32_base64(v) if encoding == "base64" else v}
                for i, v in enumerate(vecs)]
        tokens = metrics.get("prompt_eval_count", 0)
        ex.send_json(200, {"object": "list", "data": data, "model": name,
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def models(self, ex: Exchange) -> None:
        data = [{"id": e.spec.name, "object": "model", "created": int(e.modified_at),
                 "owned_by": _owner(e.spec.name)} for e in self.native.store.all()]
        ex.send_json(200, {"object": "list", "data": data or None})

    def model(self, ex: Exchange, name: str) -> None:
        entry = self.native.lookup(name)
        if entry is None:
            raise ApiError(404, f"model '{name}' not found")
        ex.send_json(200, {"id": name, "object": "model", "created": int(entry.modified_at),
                           "owned_by": _owner(entry.spec.name)})

    def native_json(self, ex: Exchange) -> dict:
        return ex.json("openai.Request")


def _owner(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _rand_id(prefix: str, ex: Exchange) -> str:
    return f"{prefix}-{int(hashlib.md5(str(id(ex)).encode()).hexdigest(), 16) % 999}"


class _SSEEmitter(Emitter):
    object_name = ""
    id_prefix = ""

    def __init__(self, ex: Exchange, api: OpenAIApi, model: str, stream: bool, usage: bool):
        self.ex, self.api, self.model = ex, api, model
        self.stream, self.usage = stream, usage
        self.id = _rand_id(self.id_prefix, ex)
        self.created = api._created()

    def begin(self) -> None:
        if self.stream:
            self.ex.stream_fault = self.api.sim.faults.take_stream_fault()
            self.ex.start_stream("text/event-stream")

    def event(self, obj: dict) -> None:
        self.ex.write_record(b"data: " + dumps(obj) + b"\n\n")

    def head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model, "system_fingerprint": "fp_ollama"}

    def usage_of(self, result: Result) -> dict:
        return {"prompt_tokens": result.prompt_eval_count,
                "completion_tokens": result.eval_count,
                "total_tokens": result.prompt_eval_count + result.eval_count}

    def done(self) -> None:
        self.ex.write_record(b"data: [DONE]\n\n")
        self.ex.end_stream()


def _tool_call(call: dict, index: int) -> dict:
    fn = call.get("function", {})
    digest = hashlib.sha256(dumps(fn)).hexdigest()[:8]
    return {"id": f"call_{digest}", "index": index, "type": "function",
            "function": {"name": fn.get("name", ""),
                         "arguments": json.dumps(fn.get("arguments", {}))}}


class _ChatEmitter(_SSEEmitter):
    id_prefix = "chatcmpl"

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.first = True

    def piece(self, kind: str, value: object) -> None:
        if not self.stream:
            return
        delta: dict[str, Any] = {}
        if self.first:
            delta["role"] = "assistant"
            self.first = False
        if kind == "thinking":
            delta["content"] = ""
            delta["reasoning"] = value
        elif kind == "tool_call":
            delta["content"] = ""
            delta["tool_calls"] = [_tool_call(value, 0)]  # type: ignore[arg-type]
        else:
            delta["content"] = value
        self.event({**self.head("chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def finish(self, result: Result) -> None:
        reason = "tool_calls" if result.tool_calls else result.done_reason
        if self.stream:
            self.event({**self.head("chat.completion.chunk"),
                        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            if self.usage:
                self.event({**self.head("chat.completion.chunk"), "choices": [],
                            "usage": self.usage_of(result)})
            self.done()
            return
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.thinking:
            message["reasoning"] = result.thinking
        if result.tool_calls:
            message["tool_calls"] = [_tool_call(c, i) for i, c in enumerate(result.tool_calls)]
        self.ex.send_json(200, {**self.head("chat.completion"),
                                "choices": [{"index": 0, "message": message,
                                             "finish_reason": reason}],
                                "usage": self.usage_of(result)})


class _CompletionEmitter(_SSEEmitter):
    id_prefix = "cmpl"
    _zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    def piece(self, kind: str, value: object) -> None:
        if not self.stream or kind != "content":
            return
        chunk = {**self.head("text_completion"),
                 "choices": [{"text": value, "index": 0, "finish_reason": None}]}
        if self.usage:
            chunk["usage"] = self._zero
        self.event(chunk)

    def finish(self, result: Result) -> None:
        if self.stream:
            chunk = {**self.head("text_completion"),
                     "choices": [{"text": "", "index": 0, "finish_reason": result.done_reason}]}
            if self.usage:
                chunk["usage"] = self._zero
            self.event(chunk)
            if self.usage:
                self.event({**self.head("text_completion"), "choices": [],
                            "usage": self.usage_of(result)})
            self.done()
            return
        self.ex.send_json(200, {**self.head("text_completion"),
                                "choices": [{"text": result.text, "index": 0,
                                             "finish_reason": result.done_reason}],
                                "usage": self.usage_of(result)})


def model_entry(native: Any, body: dict, op: str) -> tuple[str, Any]:
    """The body's model and its simulator entry, or the error Ollama's OpenAI layer
    answers: 400 without a model, 404 for an unknown one, 400 when it cannot ``op``."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    entry = native.lookup(name)
    if entry is None:
        raise ApiError(404, f"model '{name}' not found")
    if entry.spec.embedding:
        raise ApiError(400, f'"{name}" does not support {op}')
    return name, entry

"""Ollama's native ``/api/*`` endpoints, as described in shared/OLLAMA-API.md."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from olol.sim import textgen
from olol.sim.engine import Emitter, Engine, Job, Result, make_plan, rfc3339
from olol.sim.httpserver import ApiError, Exchange, dumps
from olol.sim.models import Installed
from olol.sim.scheduler import Waiter
from olol.sim.spec import FOREVER, ModelSpec, SpecError, normalize_name, parse_keep_alive

if TYPE_CHECKING:
    from olol.sim.simulator import Simulator

VERSION = "0.33.0"
NDJSON = "application/x-ndjson"
_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-f]{64}$")
_THINK_LEVELS = ("low", "medium", "high", "max")


def full_name(name: str) -> str:
    """``x`` -> ``registry.ollama.ai/library/x:latest`` (as Ollama prints in capability errors)."""
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(parts)


def details(spec: ModelSpec) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    }


def _opt_int(options: dict, key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ApiError(500, f"option {key!r} must be of type integer, got {value!r}")
    return int(value)


def parse_options(body: dict) -> dict:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ApiError(400, "json: cannot unmarshal into Go struct field options of type "
                            "map[string]interface {}")
    return options


def parse_think(value: object) -> bool:
    if value is None or value is False:
        return False
    if value is True or value in _THINK_LEVELS:
        return True
    raise ApiError(400, f"invalid think value: {value!r} (must be \"high\", \"medium\", "
                        "\"low\", \"max\", true, or false)")


def keep_alive_of(body: dict) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def want_stream(body: dict, default: bool = True) -> bool:
    value = body.get("stream", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, "json: cannot unmarshal into Go struct field stream of type bool")
    return value


class NativeApi:
    """Route handlers for ``/`` and ``/api/*``; ``sim`` supplies the shared parts."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.engine: Engine = sim.engine
        self.store = sim.store
        self.wall: Callable[[], float] = sim.wall_clock

    # -- helpers -------------------------------------------------------------------

    def lookup(self, name: object) -> Installed | None:
        if not isinstance(name, str) or not name.strip():
            return None
        try:
            return self.store.get(normalize_name(name))
        except SpecError:
            return None

    def now(self) -> str:
        return rfc3339(self.wall())

    def _name_field(self, body: dict) -> str:
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str):
            raise ApiError(400, "json: cannot unmarshal into Go struct field model of type string")
        return name

    # -- simple routes -------------------------------------------------------------

    def root(self, ex: Exchange) -> None:
        ex.send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def version(self, ex: Exchange) -> None:
        ex.send_json(200, {"version": VERSION})

    def tags(self, ex: Exchange) -> None:
        ex.send_json(200, {"models": [self._tag_entry(e) for e in self.store.all()]})

    def _tag_entry(self, e: Installed) -> dict:
        return {"name": e.spec.name, "model": e.spec.name, "modified_at": rfc3339(e.modified_at),
                "size": sum(la.size for la in e.layers), "digest": e.digest.split(":", 1)[1],
                "details": details(e.spec)}

    def ps(self, ex: Exchange) -> None:
        clock_now = self.sim.clock()
        wall_now = self.wall()
        rows = []
        for spec, expires in self.sim.scheduler.loaded():
            entry = self.store.get(spec.name)
            digest = entry.digest if entry else ""
            remaining = min(expires - clock_now, FOREVER)
            rows.append({
                "name": spec.name, "model": spec.name, "size": spec.size,
                "digest": digest.split(":", 1)[-1], "details": details(spec),
                "expires_at": rfc3339(wall_now + remaining), "size_vram": spec.size,
                "context_length": min(spec.context_length, 4096),
            })
        ex.send_json(200, {"models": rows})

    def show(self, ex: Exchange) -> None:
        body = ex.json("api.ShowRequest")
        name = self._name_field(body)
        if not name:
            raise ApiError(400, "model is required")
        entry = self.lookup(name)
        if entry is None:
            raise ApiError(404, f"model '{name}' not found")
        s = entry.spec
        params = "\n".join(f"{k:<30} {v}" for k, v in s.parameters) or "stop                           \"<|eot_id|>\""
        info: dict[str, Any] = {
            "general.architecture": s.family,
            "general.parameter_count": s.parameter_count,
            "general.file_type": 15,
            "general.quantization_version": 2,
            f"{s.family}.context_length": s.context_length,
            f"{s.family}.embedding_length": s.dim,
            f"{s.family}.block_count": 16,
        }
        modelfile = (f"# Modelfile generated by \"ollama show\"\nFROM {s.name}\n"
                     f"TEMPLATE \"\"\"{s.template}\"\"\"\n")
        if s.system:
            modelfile += f"SYSTEM \"\"\"{s.system}\"\"\"\n"
        for k, v in s.parameters:
            modelfile += f"PARAMETER {k} {v}\n"
        out = {"license": "Simulated model license.", "modelfile": modelfile,
               "parameters": params, "template": s.template, "details": details(s),
               "model_info": info, "capabilities": s.capabilities,
               "modified_at": rfc3339(entry.modified_at)}
        if s.system:
            out["system"] = s.system
        ex.send_json(200, out)

    # -- generation ----------------------------------------------------------------

    def _common(self, ex: Exchange | None, body: dict, name: str,
                op: str) -> tuple[Installed, dict]:
        entry = self.lookup(name)
        if entry is None:
            raise ApiError(404, f"model '{name}' not found")
        if entry.spec.embedding:
            raise ApiError(400, f'"{name}" does not support {op}')
        options = parse_options(body)
        return entry, options

    def _job(self, name: str, entry: Installed, body: dict, options: dict, prompt: str,
             tools: list | None, prefix: str = "") -> Job:
        think = parse_think(body.get("think"))
        if think and not entry.spec.thinking:
            raise ApiError(400, f'"{name}" does not support thinking')
        fmt = body.get("format")
        stop = options.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        return Job(model=name, spec=entry.spec, prompt=prompt, seed=options.get("seed"),
                   temperature=options.get("temperature"), prefix=prefix,
                   num_predict=_opt_int(options, "num_predict"),
                   fmt=fmt if fmt == "json" or isinstance(fmt, dict) else None,
                   tools=tools, think=think, keep_alive=keep_alive_of(body),
                   stop=[s for s in stop if isinstance(s, str)])

    def _load_or_unload(self, ex: Exchange, entry: Installed, body: dict,
                        record: dict) -> None:
        keep_alive = keep_alive_of(body)
        if keep_alive == 0:
            self.sim.scheduler.unload(entry.spec.name)
            record["done_reason"] = "unload"
        else:
            lease = self.engine.acquire(ex, entry.spec, keep_alive,
                                        Waiter(self.sim.stop_event, ex.gone))
            lease.release()
            record["done_reason"] = "load"
        ex.send_json(200, record)

    def generate(self, ex: Exchange) -> None:
        body = ex.json("api.GenerateRequest")
        name = self._name_field(body)
        stream = want_stream(body)
        entry, options = self._common(ex, body, name, "generate")
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                "GenerateRequest.prompt of type string")
        self.sim.note_prompt(prompt)
        raw = bool(body.get("raw"))
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        if not prompt and not body.get("images"):
            self._load_or_unload(ex, entry, body, {
                "model": name, "created_at": self.now(), "response": "", "done": True})
            return
        if raw:
            job = self._job(name, entry, body, options, f"raw\x00{prompt}", None)
            if job.fmt is None and not job.think:
                base, prefix = raw_split(job, self.engine.token_range)
                if prefix:
                    job = self._job(name, entry, body, options, f"raw\x00{base}", None, prefix)
        else:
            # Ollama renders a prompt as the conversation [system, user] (server/routes.go,
            # GenerateHandler → chatPrompt): the same answer as /api/chat gives it
            system = body.get("system") if isinstance(body.get("system"), str) else ""
            convo = [{"role": "system", "content": system or entry.spec.system},
                     {"role": "user", "content": prompt}]
            job = self._job(name, entry, body, options, conversation_text(convo), None)
        emitter = NativeEmitter(ex, self, name, stream, chat=False, raw=raw)
        emitter.prompt_text = prompt
        self.engine.run(ex, job, emitter)

    def chat(self, ex: Exchange) -> None:
        body = ex.json("api.ChatRequest")
        stream = want_stream(body)
        name, entry, job = self.chat_job(body)
        messages = body.get("messages") or [{}]
        self.sim.note_prompt(str(messages[-1].get("content") or ""))
        if job is None:
            self._load_or_unload(ex, entry, body, {
                "model": name, "created_at": self.now(),
                "message": {"role": "assistant", "content": ""}, "done": True})
            return
        emitter = NativeEmitter(ex, self, name, stream, chat=True, raw=False)
        self.engine.run(ex, job, emitter)

    def chat_job(self, body: dict) -> tuple[str, Installed, Job | None]:
        """Check an ``/api/chat`` body as Ollama does; the job to run (None for an
        empty ``messages``: a load or unload). Shared with the translated APIs."""
        name = self._name_field(body)
        if not name:
            raise ApiError(400, "model is required")
        want_stream(body)
        entry, options = self._common(None, body, name, "chat")
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                "ChatRequest.messages of type []api.Message")
        tools = body.get("tools") or None
        if tools is not None and not isinstance(tools, list):
            raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                "ChatRequest.tools of type api.Tools")
        if tools and not entry.spec.tools:
            raise ApiError(400, f"{full_name(entry.spec.name)} does not support tools")
        if not messages:
            return name, entry, None
        for m in messages:
            if not isinstance(m.get("content") or "", str):
                raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                    "Message.messages.content of type string")
        convo = list(messages)
        if str(convo[0].get("role", "")).lower() != "system" and entry.spec.system:
            convo.insert(0, {"role": "system", "content": entry.spec.system})
        prefix = ""
        if len(convo) > 1 and str(convo[-1].get("role", "")).lower() == "assistant":
            # a trailing assistant message is continued, not answered (Ollama's
            # templates leave the last assistant turn open)
            prefix = convo.pop().get("content") or ""
        last_is_user = str(messages[-1].get("role", "")).lower() == "user"
        job = self._job(name, entry, body, options, conversation_text(convo),
                        tools if last_is_user else None, prefix)
        return name, entry, job

    # -- embeddings ----------------------------------------------------------------

    def _embed_run(self, ex: Exchange, entry: Installed, body: dict,
                   texts: list[str], normalize: bool) -> tuple[list[list[float]], dict]:
        start = self.sim.clock()
        lease = self.engine.acquire(ex, entry.spec, keep_alive_of(body),
                                    Waiter(self.sim.stop_event, ex.gone))
        try:
            t_load = self.sim.clock()
            ttft = entry.spec.ttft if entry.spec.ttft is not None else self.engine.ttft
            Waiter(self.sim.stop_event, ex.gone).sleep(ttft)
            dim = entry.spec.dim
            vecs = [textgen.embedding(entry.spec.name, t, dim, normalize) for t in texts]
        finally:
            lease.release()
        end = self.sim.clock()
        metrics = {"total_duration": max(1, int((end - start) * 1e9)),
                   "load_duration": max(1, int((t_load - start) * 1e9)),
                   "prompt_eval_count": sum(textgen.count_tokens(t) for t in texts)}
        return vecs, metrics

    def embed_entry(self, name: object, *, generative_ok: bool = False) -> Installed:
        entry = self.lookup(name)
        if entry is None:
            raise ApiError(404, f'model "{name}" not found, try pulling it first')
        if not entry.spec.embedding and not generative_ok:
            raise ApiError(400, f'"{name}" does not support embeddings')
        return entry

    def embed_vectors(self, ex: Exchange, entry: Installed, body: dict, texts: list[str],
                      dimensions: object = None) -> tuple[list[list[float]], dict]:
        if texts:
            vecs, metrics = self._embed_run(ex, entry, body, texts, True)
        else:
            lease = self.engine.acquire(ex, entry.spec, keep_alive_of(body),
                                        Waiter(self.sim.stop_event, ex.gone))
            lease.release()
            vecs, metrics = [], {}
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
                raise ApiError(400, "dimensions must be a positive integer")
            vecs = [_renorm(v[:dimensions]) for v in vecs]
        return vecs, metrics

    def embed(self, ex: Exchange) -> None:
        body = ex.json("api.EmbedRequest")
        name = self._name_field(body)
        if not name:
            raise ApiError(404, "model '' not found")
        entry = self.embed_entry(name)
        raw = body.get("input")
        if raw is None or raw == "":
            texts: list[str] = []
        elif isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        else:
            raise ApiError(400, "invalid input type")
        vecs, metrics = self.embed_vectors(ex, entry, body, texts, body.get("dimensions"))
        ex.send_json(200, {"model": name, "embeddings": vecs, **metrics})

    def embeddings(self, ex: Exchange) -> None:
        body = ex.json("api.EmbeddingRequest")
        name = self._name_field(body)
        if not name:
            raise ApiError(400, "model is required")
        entry = self.embed_entry(name)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "json: cannot unmarshal into Go struct field "
                                "EmbeddingRequest.prompt of type string")
        if not prompt:
            self.embed_vectors(ex, entry, body, [])
            ex.send_json(200, {"embedding": []})
            return
        vecs, _ = self._embed_run(ex, entry, body, [prompt], False)
        ex.send_json(200, {"embedding": vecs[0]})

    # -- model management ----------------------------------------------------------

    def copy(self, ex: Exchange) -> None:
        body = ex.json("api.CopyRequest")
        src, dst = body.get("source"), body.get("destination")
        try:
            src_name = normalize_name(src if isinstance(src, str) else "")
        except SpecError:
            raise ApiError(400, f'source "{src or ""}" is invalid') from None
        try:
            dst_name = normalize_name(dst if isinstance(dst, str) else "")
        except SpecError:
            raise ApiError(400, f'destination "{dst or ""}" is invalid') from None
        entry = self.store.get(src_name)
        if entry is None:
            raise ApiError(404, f'model "{src}" not found')
        self.store.install(entry.spec.renamed(dst_name), entry.layers, entry.digest)
        ex.send_empty(200)

    def delete(self, ex: Exchange) -> None:
        body = ex.json("api.DeleteRequest")
        name = self._name_field(body)
        try:
            key = normalize_name(name)
        except SpecError:
            raise ApiError(400, f'name "{name}" is invalid') from None
        if not self.store.remove(key):
            raise ApiError(404, f"model '{name}' not found")
        self.sim.scheduler.forget(key)
        ex.send_empty(200)

    def blob_head(self, ex: Exchange, digest: str) -> None:
        if not _DIGEST_RE.match(digest):
            raise ApiError(400, f"invalid digest format {digest!r}")
        digest = "sha256:" + digest[7:]
        if self.store.blob_size(digest) is None:
            raise ApiError(404, f'blob "{digest}" not found')
        ex.send_empty(200)

    def blob_post(self, ex: Exchange, digest: str) -> None:
        if not _DIGEST_RE.match(digest):
            raise ApiError(400, f"invalid digest format {digest!r}")
        expected = "sha256:" + digest[7:]
        data = ex.body()
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != expected:
            raise ApiError(400, f'digest mismatch, expected "{expected}", got "{got}"')
        created = self.store.add_blob(expected, len(data))
        ex.send_empty(201 if created else 200)

    def pull(self, ex: Exchange) -> None:
        from olol.sim.transfer import pull

        pull(self, ex)

    def push(self, ex: Exchange) -> None:
        from olol.sim.transfer import push

        push(self, ex)

    def create(self, ex: Exchange) -> None:
        from olol.sim.transfer import create

        create(self, ex)


def _renorm(vec: list[float]) -> list[float]:
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def conversation_text(messages: list[dict]) -> str:
    """What an answer to a conversation is derived from: ``role: content`` per
    message (empty system messages left out)."""
    parts = []
    for m in messages:
        role = str(m.get("role", "")).lower()
        content = m.get("content") or ""
        if role == "system" and not content:
            continue
        parts.append(f"{role}: {content}")
    return "\x00".join(parts)


def raw_split(job: Job, token_range: tuple[int, int]) -> tuple[str, str]:
    """``(text, answer begun)``: a raw prompt that ends with the beginning of the
    answer the text before it gets (a stream carried over to this node) is split
    there, so the rest of that same answer follows. ``(prompt, "")`` otherwise.

    Candidates are the word starts in the prompt's last 4 KB where a capitalised
    word follows a non-letter (every answer starts with one).
    """
    prompt = job.prompt.split("\x00", 1)[1]
    start = max(1, len(prompt) - 4096)
    for i in range(start, len(prompt)):
        if not prompt[i].isupper() or prompt[i - 1].isalpha():
            continue
        base, given = prompt[:i], prompt[i:]
        probe = dataclasses.replace(job, prompt=f"raw\x00{base}", num_predict=None, stop=[])
        plan = make_plan(probe, token_range)
        if "".join(plan.content).startswith(given):
            return base, given
    return prompt, ""


def context_ids(prompt: str, text: str) -> list[int]:
    """Token ids for generate's deprecated ``context`` field (bounded to 4096)."""
    words = (prompt + " " + text).split()[:4096]
    return [int.from_bytes(hashlib.blake2s(w.encode(), digest_size=2).digest(), "big") + 1
            for w in words]


class NativeEmitter(Emitter):
    def __init__(self, ex: Exchange, api: NativeApi, model: str, stream: bool, *,
                 chat: bool, raw: bool):
        self.ex, self.api, self.model = ex, api, model
        self.stream, self.chat, self.raw = stream, chat, raw
        self.prompt_text = ""

    def begin(self) -> None:
        if self.stream:
            self.ex.stream_fault = self.api.sim.faults.take_stream_fault()
            self.ex.start_stream(NDJSON)

    def _record(self, content: str, thinking: str = "", tool_calls: list | None = None) -> dict:
        rec: dict[str, Any] = {"model": self.model, "created_at": self.api.now()}
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            rec["message"] = msg
        else:
            rec["response"] = content
            if thinking:
                rec["thinking"] = thinking
        return rec

    def piece(self, kind: str, value: object) -> None:
        if not self.stream:
            return
        if kind == "thinking":
            rec = self._record("", thinking=str(value))
        elif kind == "tool_call":
            rec = self._record("", tool_calls=[_with_id(value, 0)])
        else:
            rec = self._record(str(value))
        rec["done"] = False
        self.out(rec)

    def out(self, rec: dict) -> None:
        """Write one record of a stream."""
        self.ex.write_record(dumps(rec) + b"\n")

    def last(self, rec: dict) -> None:
        """Write the final record (the whole answer when not streamed)."""
        if self.stream:
            self.ex.write_record(dumps(rec) + b"\n")
            self.ex.end_stream()
        else:
            self.ex.send_json(200, rec)

    def finish(self, result: Result) -> None:
        if self.stream:
            rec = self._record("")
        else:
            calls = [_with_id(c, i) for i, c in enumerate(result.tool_calls)]
            rec = self._record(result.text, result.thinking, calls)
        rec["done"] = True
        rec["done_reason"] = result.done_reason
        if not self.chat and not self.raw:
            rec["context"] = context_ids(self.prompt_text, result.text)
        rec.update(result.metrics())
        self.last(rec)


def _with_id(call: object, index: int) -> dict:
    call = dict(call) if isinstance(call, dict) else {}
    fn = dict(call.get("function") or {})
    fn["index"] = index
    digest = hashlib.sha256(dumps(fn)).hexdigest()[:8]
    return {"id": f"call_{digest}", "function": fn}

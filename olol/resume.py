"""Mid-stream failover: a stream whose node broke after output reached its client
is carried over to another node, which continues the answer from the text the
client already has.

How the next node is asked (the *seam*):

* ``/api/chat`` (and ``/v1/chat/completions``, translated to it): the same
  conversation with the text sent so far as a final assistant message. Ollama
  continues a trailing assistant message instead of answering it (its templates
  leave the last assistant turn open: ``template.Execute`` cuts the legacy
  template at ``.Response``; ``.Messages`` templates test ``$last``), and its
  stream carries the new tokens only. When the caller's own last message was an
  assistant message (a prefill), the text is appended to it.
* ``/api/generate`` (and ``/v1/completions``): Ollama renders a non-raw prompt as
  the conversation ``[system, user]`` through the chat template
  (``server/routes.go``, ``GenerateHandler`` → ``chatPrompt``), so the
  continuation is that conversation plus the assistant message, sent to
  ``/api/chat``; its records are turned back into generate records. A raw prompt
  is continued raw: ``prompt`` + the text sent. Not carried over: ``suffix``,
  ``template`` or ``context`` (the deprecated token array) — the conversation
  would not render the same.

What is never carried over (the stream ends with an error line, as before):
output that contains thinking or tool calls (a half-finished reasoning or call
cannot be continued faithfully by a template), structured output (``format``:
its grammar would restart at the seam), anything but a stream for a synchronous
caller.

The client sees one stream: the continuation's records follow the ones it has,
and its final record is the one final record, with the counts of the whole
answer: ``eval_count`` = records before the seam (Ollama sends one per token) +
the continuation's; ``prompt_eval_count`` = the continuation's less those
records (it read them as prompt); durations summed, the lost segments' measured
by the proxy (time to their first record as prompt evaluation, first to last
record as evaluation, call start to break as total). It carries
``"olol_resumed": n`` (:data:`MARKER`), the number of times the answer was
carried over. A continuation of ``/api/generate`` has no ``context``.

``num_predict`` is the whole answer's budget: the continuation gets what is left
of it; when nothing is left, the answer ends (``done_reason: length``) without
another call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from olol.api.streaming import RESUMED_FIELD
from olol.hub import CHUNK, DONE, RELAY
from olol.rpc.client import NodeError

#: The message of a stream that stayed silent too long (as the relay's watchdog says).
STALLED_MESSAGE = "timed out waiting for the next record"

#: Field of the final record saying how many times the answer was carried over.
MARKER = RESUMED_FIELD

# /api/chat request fields a continuation of /api/generate keeps
_CHAT_FIELDS = ("model", "keep_alive", "options", "think", "truncate", "shift", "logprobs",
                "top_logprobs")


@dataclass
class Segment:
    """What one node call delivered to the client before it broke (text fields in
    the caller's endpoint format), and when (monotonic seconds)."""

    text: str = ""
    records: int = 0
    thinking: bool = False
    tool_calls: bool = False
    started: float = 0.0  # the call was sent
    first: float | None = None  # its first record arrived
    last: float | None = None  # its last delivered record arrived
    ended: float = 0.0  # it broke


class Transcript:
    """The records one node call delivered, kept as they came (dicts, or node
    messages: NDJSON records joined by ``\\n``) and read only if the call breaks.

    :param endpoint: the caller's endpoint (``chat`` or ``generate``).
    :param started: when the call was sent (monotonic).
    """

    def __init__(self, endpoint: str, started: float) -> None:
        self.endpoint = endpoint
        self.started = started
        self.first: float | None = None
        self.last: float | None = None
        self._items: list[Any] = []

    def add(self, item: Any, now: float) -> None:
        self._items.append(item)
        if self.first is None:
            self.first = now
        self.last = now

    def segment(self, ended: float) -> Segment:
        seg = Segment(started=self.started, first=self.first, last=self.last, ended=ended)
        text: list[str] = []
        for record in _records(self._items):
            if not isinstance(record, dict) or record.get("done") or "error" in record:
                continue
            seg.records += 1
            if self.endpoint == "chat":
                message = record.get("message")
                message = message if isinstance(message, dict) else {}
                content = message.get("content")
                seg.thinking |= bool(message.get("thinking"))
                seg.tool_calls |= bool(message.get("tool_calls"))
            else:
                content = record.get("response")
                seg.thinking |= bool(record.get("thinking"))
                seg.tool_calls |= bool(record.get("tool_calls"))
            if isinstance(content, str):
                text.append(content)
        seg.text = "".join(text)
        return seg


def _records(items: Iterable[Any]) -> Iterable[Any]:
    for item in items:
        if isinstance(item, bytes | bytearray | memoryview):
            for line in bytes(item).split(b"\n"):
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
        else:
            yield item


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass(frozen=True)
class Resume:
    """A request being carried over: its original body, what its client has, and
    how the next node is asked (:meth:`call`)."""

    endpoint: str  # the caller's: chat | generate
    body: dict  # the caller's body, as admitted
    text: str  # content delivered so far, every segment
    tokens: int  # records delivered so far
    resumes: int  # times carried over (1 for the first continuation)
    nodes: tuple[str, ...]  # nodes the stream broke on
    attempts_base: int = 0  # the request's claims before this continuation
    lost: dict = field(default_factory=dict)  # durations (ns) of the segments lost

    @property
    def via_chat(self) -> bool:
        """A generate request continued through /api/chat."""
        return self.endpoint == "generate" and bool(self.text) and not self.body.get("raw")

    @property
    def key(self) -> tuple:
        """Requests with equal keys can share one continuation call."""
        return (self.endpoint, self.text, self.tokens, self.resumes)

    @property
    def spent(self) -> int:
        """Tokens of the answer the client has. Records without text (none reached
        the client's screen) do not count: the continuation is then the whole
        answer again."""
        return self.tokens if self.text else 0

    def _remaining(self) -> int | None:
        options = self.body.get("options")
        n = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return None
        return n - self.spent

    @property
    def exhausted(self) -> bool:
        """The answer's ``num_predict`` is used up: it ends without another call."""
        left = self._remaining()
        return left is not None and left <= 0

    def call(self) -> tuple[str, dict]:
        """``(endpoint, body)`` of the continuation call."""
        body = self.body
        left = self._remaining()
        options = body.get("options")
        if left is not None and isinstance(options, dict):
            options = {**options, "num_predict": max(1, left)}
        if self.endpoint == "chat":
            out = {**body, "stream": True}
            if self.text:
                messages = list(body.get("messages") or [])
                last = messages[-1] if messages else None
                if isinstance(last, dict) and str(last.get("role", "")).lower() == "assistant":
                    messages[-1] = {**last, "content": (last.get("content") or "") + self.text}
                else:
                    messages.append({"role": "assistant", "content": self.text})
                out["messages"] = messages
        elif not self.text:
            out = {**body, "stream": True}
        elif body.get("raw"):
            out = {**body, "stream": True, "prompt": (body.get("prompt") or "") + self.text}
        else:
            user: dict[str, Any] = {"role": "user", "content": body.get("prompt") or ""}
            if body.get("images"):
                user["images"] = body["images"]
            messages = [user, {"role": "assistant", "content": self.text}]
            if isinstance(body.get("system"), str) and body["system"]:
                messages.insert(0, {"role": "system", "content": body["system"]})
            out = {k: body[k] for k in _CHAT_FIELDS if k in body}
            out["messages"] = messages
            out["stream"] = True
            if options is not None:
                out["options"] = options
            return "chat", out
        if options is not None:
            out["options"] = options
        return self.endpoint, out

    def translate(self, record: Any) -> Any:
        """A record of the continuation as the caller's stream carries it."""
        if not isinstance(record, dict):
            return record
        if self.via_chat:
            record = _as_generate(record)
        if record.get("done"):
            record = self._whole(record)
        return record

    def _whole(self, final: dict) -> dict:
        out = dict(final)
        out["eval_count"] = self.spent + _int(final.get("eval_count"))
        if self.spent and _int(final.get("prompt_eval_count")) > self.spent:
            out["prompt_eval_count"] = _int(final["prompt_eval_count"]) - self.spent
        for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
            lost = int(self.lost.get(key, 0))
            if lost or key in out:
                out[key] = _int(final.get(key)) + lost
        out[MARKER] = self.resumes
        return out

    def final_record(self, now: float) -> dict:
        """The final record when ``num_predict`` was used up before the break."""
        created = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        record: dict[str, Any] = {"model": self.body.get("model", ""), "created_at": created}
        if self.endpoint == "chat":
            record["message"] = {"role": "assistant", "content": ""}
        else:
            record["response"] = ""
        record.update({"done": True, "done_reason": "length"})
        return self._whole(record)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_generate(record: dict) -> dict:
    """A /api/chat record as the /api/generate record it stands for."""
    message = record.get("message")
    message = message if isinstance(message, dict) else {}
    out: dict[str, Any] = {"model": record.get("model", ""),
                           "created_at": record.get("created_at", ""),
                           "response": message.get("content") or ""}
    if message.get("thinking"):
        out["thinking"] = message["thinking"]
    for key, value in record.items():
        if key not in ("model", "created_at", "message"):
            out[key] = value
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def carry_over(endpoint: str, body: Any, prior: Resume | None, segment: Segment, node: str,
               *, max_resumes: int, attempts: int = 0) -> Resume | str:
    """The continuation of a stream that broke on ``node`` after ``segment``, or
    the reason it cannot be carried over.

    :param prior: the request's carry-over so far (None: the first break).
    :param attempts: the request's claims so far (its retry budget restarts).
    """
    done = prior.resumes if prior is not None else 0
    if done >= max_resumes:
        return f"carried over {done} times already (max_resumes)"
    if endpoint not in ("chat", "generate") or not isinstance(body, dict):
        return f"/api/{endpoint} is not a text stream"
    if segment.thinking:
        return "the output has thinking"
    if segment.tool_calls:
        return "the output has tool calls"
    if body.get("format") not in (None, ""):
        return "structured output (format) cannot restart mid-answer"
    if endpoint == "chat" and not isinstance(body.get("messages"), list):
        return "no messages"
    if endpoint == "generate" and not body.get("raw"):
        for key in ("suffix", "template", "context"):
            if body.get(key):
                return f"a generate request with {key} cannot be continued"
    lost = dict(prior.lost) if prior is not None else {}
    first = segment.first if segment.first is not None else segment.ended
    last = segment.last if segment.last is not None else first
    for key, seconds in (("total_duration", segment.ended - segment.started),
                         ("prompt_eval_duration", first - segment.started),
                         ("eval_duration", last - first)):
        lost[key] = int(lost.get(key, 0)) + _ns(seconds)
    base = Resume(endpoint=endpoint, body=body, text="", tokens=0, resumes=0, nodes=())
    prior = prior or base
    return replace(prior, text=prior.text + segment.text,
                   tokens=prior.tokens + segment.records, resumes=done + 1,
                   nodes=(*prior.nodes, node), attempts_base=attempts, lost=lost)


class CarryOvers:
    """The requests being carried over (request id → :class:`Resume`), and how many
    of each request's claims were put back unrun (a batch keeps only requests that
    want the same continuation). Bounded; thread-safe."""

    def __init__(self, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._resumes: OrderedDict[str, Resume] = OrderedDict()
        self._bounced: dict[str, int] = {}
        self._limit = limit

    def __bool__(self) -> bool:
        return bool(self._resumes) or bool(self._bounced)

    def __len__(self) -> int:
        with self._lock:
            return len(self._resumes)

    def get(self, request_id: str) -> Resume | None:
        if not self._resumes:
            return None
        with self._lock:
            return self._resumes.get(request_id)

    def put(self, request_id: str, resume: Resume) -> None:
        with self._lock:
            self._resumes[request_id] = resume
            self._resumes.move_to_end(request_id)
            while len(self._resumes) > self._limit:  # a leak must not grow forever
                self._resumes.popitem(last=False)

    def bounced(self, request_id: str) -> None:
        """One claim of the request was put back without running."""
        with self._lock:
            self._bounced[request_id] = self._bounced.get(request_id, 0) + 1
            while len(self._bounced) > self._limit:
                self._bounced.pop(next(iter(self._bounced)))

    def attempts(self, request_id: str, claimed: int) -> int:
        """Of ``claimed`` claims, those that count against the retry budget: not the
        ones put back unrun, nor those before the current continuation."""
        if not self:
            return claimed
        with self._lock:
            resume = self._resumes.get(request_id)
            claimed -= self._bounced.get(request_id, 0)
        if resume is not None:
            claimed -= resume.attempts_base
        return max(1, claimed)

    def pop(self, request_id: str) -> None:
        """The request is over."""
        if not self:
            return
        with self._lock:
            self._resumes.pop(request_id, None)
            self._bounced.pop(request_id, None)


def follow(channel: Any, *, first_wait: float, idle_wait: float,
           on_timeout: Callable[[], object]) -> Iterator[tuple[bytes, bool]]:
    """The rest of a carried-over answer as node-style messages ``(records, done)``,
    read from the request's response channel (:class:`olol.hub.ResponseChannel`)
    by the thread that was reading the broken relay.

    :param first_wait: longest wait for the continuation's first event (it may
        queue for a node); ``idle_wait`` between the next ones.
    :param on_timeout: called when nothing came in time (cancel the request).
    :raises NodeError: the continuation failed (its error event), or timed out.
    """
    wait = first_wait
    while True:
        try:
            event = next(channel.events(idle_timeout=wait))
        except TimeoutError:
            on_timeout()
            raise NodeError(None, STALLED_MESSAGE, 504, mid_stream=True) from None  # type: ignore[arg-type]
        wait = idle_wait
        if event.kind == CHUNK:
            yield orjson.dumps(event.data), False
        elif event.kind == DONE:
            yield orjson.dumps(event.data), True
            return
        elif event.kind == RELAY:
            yield from event.data.messages()
            return
        else:
            data = event.data if isinstance(event.data, dict) else {}
            status = data.get("status") if isinstance(data.get("status"), int) else 502
            raise NodeError(None, str(data.get("error") or "the node failed"), status,  # type: ignore[arg-type]
                            mid_stream=True)

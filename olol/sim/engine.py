"""Generation planning and execution shared by the native and OpenAI endpoints."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from olol.sim import textgen
from olol.sim.faults import Faults
from olol.sim.httpserver import ApiError, ClientGone, Exchange
from olol.sim.scheduler import Aborted, Busy, Scheduler, Stats, Waiter
from olol.sim.spec import ModelSpec


def rfc3339(seconds: float) -> str:
    """Go's time.Time JSON form with nanoseconds, in UTC."""
    whole = int(seconds)
    nanos = int(round((seconds - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    base = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


@dataclass
class Job:
    """A validated generation request."""

    model: str  # as the client spelled it (echoed back)
    spec: ModelSpec
    prompt: str  # the text the answer is derived from
    seed: object = None
    temperature: object = None  # 0: greedy (deterministic without a seed)
    prefix: str = ""  # the start of the answer, given (a trailing assistant message)
    num_predict: int | None = None
    fmt: object = None
    tools: list | None = None
    think: bool = False
    keep_alive: float | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Plan:
    thinking: list[str]
    content: list[str]
    tool_calls: list[dict]
    done_reason: str
    prompt_eval_count: int


@dataclass
class Result:
    """What an emitter needs for the final record; durations in nanoseconds."""

    done_reason: str
    text: str
    thinking: str
    tool_calls: list[dict]
    prompt_eval_count: int
    eval_count: int
    total_duration: int
    load_duration: int
    prompt_eval_duration: int
    eval_duration: int

    def metrics(self) -> dict[str, int]:
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


class Emitter:
    """Turns pieces of output into an HTTP response (streamed or aggregated)."""

    def begin(self) -> None:
        """Called once a slot is held, before the first piece."""

    def piece(self, kind: str, value: object) -> None:
        """``kind`` is ``thinking``, ``content`` or ``tool_call``."""

    def finish(self, result: Result) -> None:
        """Called after the last piece."""


def make_plan(job: Job, token_range: tuple[int, int]) -> Plan:
    """The answer to ``job``: a function of its prompt and seed only.

    With a ``prefix`` (the answer begun: a trailing assistant message, or raw text
    that ends with the start of the answer), the plan is the rest of the answer
    the prompt alone would get, as a model continues its own text: the prefix's
    tokens count as prompt, no thinking comes first, ``num_predict`` and ``stop``
    apply to the new tokens only. A prefix that is not how this answer begins is
    continued with other words (still deterministic).
    """
    seed = textgen.make_seed(job.spec.name, job.prompt, job.seed, job.temperature)
    rng = random.Random(seed)
    thinking = textgen.thinking_tokens(rng) if job.think else []
    tool_calls: list[dict] = []
    call = textgen.pick_tool_call(job.tools, job.prompt.rsplit("\x00", 1)[-1], rng)
    if call is not None:
        tool_calls = [call]
        content: list[str] = []
    elif job.fmt == "json" or isinstance(job.fmt, dict):
        content = textgen.split_text(textgen.json_text(job.fmt, rng))
    else:
        lo, hi = token_range
        content = textgen.text_tokens(rng, rng.randint(lo, max(lo, hi)))
    prompt_tokens = max(1, textgen.count_tokens(job.prompt))
    if job.prefix:
        thinking, tool_calls = [], []  # the answer has begun: its thinking is over
        rest = textgen.strip_prefix(content, job.prefix)
        if rest is not None:
            content, covered = rest
            prompt_tokens += covered
        else:
            other = random.Random(textgen.make_seed(
                job.spec.name, f"{job.prompt}\x00{job.prefix}", job.seed, job.temperature))
            content = textgen.more_tokens(other, other.randint(1, max(1, token_range[0])))
            prompt_tokens += textgen.count_tokens(job.prefix)
    done_reason = "stop"
    if job.num_predict is not None and 0 <= job.num_predict < len(content):
        content = content[: job.num_predict]
        done_reason = "length"
    if job.stop and content:
        text = ""
        for i, tok in enumerate(content):
            text += tok
            if any(s and s in text for s in job.stop):
                content = content[:i]
                break
    return Plan(thinking, content, tool_calls, done_reason, prompt_tokens)


class Engine:
    """Runs jobs: acquires a slot, paces tokens, counts stats, frees the slot."""

    def __init__(self, *, scheduler: Scheduler, stats: Stats, faults: Faults,
                 stop: threading.Event, clock: Callable[[], float],
                 ttft: float, tokens_per_second: float, token_range: tuple[int, int]):
        self.scheduler = scheduler
        self.stats = stats
        self.faults = faults
        self.stop = stop
        self.clock = clock
        self.ttft = ttft
        self.tps = tokens_per_second
        self.token_range = token_range
        self._active_lock = threading.Lock()
        self._active: dict[int, str] = {}  # id(exchange) -> the prompt's last part

    def active(self) -> list[str]:
        """The last part of the prompt (``role: content``) of every generation in
        progress: which node serves which request, for tests and benchmarks."""
        with self._active_lock:
            return list(self._active.values())

    def acquire(self, ex: Exchange, spec: ModelSpec, keep_alive: float | None, waiter: Waiter):
        try:
            return self.scheduler.acquire(spec, keep_alive, waiter)
        except Busy as exc:
            raise ApiError(503, str(exc)) from None
        except Aborted:
            if self.stop.is_set():
                raise ApiError(503, "server is shutting down") from None
            raise ApiError(499, "request canceled") from None

    def run(self, ex: Exchange, job: Job, emitter: Emitter) -> None:
        """Execute ``job``; ApiError before the first piece, ClientGone if the client left."""
        start = self.clock()
        waiter = Waiter(self.stop, ex.gone)
        lease = self.acquire(ex, job.spec, job.keep_alive, waiter)
        self.stats.add("generations_started")
        self.stats.add("active_generations")
        with self._active_lock:
            self._active[id(ex)] = job.prompt.rsplit("\x00", 1)[-1]
        try:
            plan = make_plan(job, self.token_range)
            emitter.begin()
            t_load = self.clock()
            ttft = job.spec.ttft if job.spec.ttft is not None else self.ttft
            waiter.sleep(ttft)
            t_prompt = self.clock()
            tps = job.spec.tokens_per_second if job.spec.tokens_per_second is not None else self.tps
            interval = 1.0 / tps if tps > 0 else 0.0
            count = 0
            for kind, items in (("thinking", plan.thinking), ("content", plan.content),
                                ("tool_call", plan.tool_calls)):
                for item in items:
                    if count and interval:
                        # Ollama's runner decodes one token of every running sequence
                        # per step: the generations of a model advance on one grid
                        # of steps, and their records leave at the same moments
                        due = math.ceil((t_prompt + count * interval) / interval) * interval
                        waiter.sleep(due - self.clock())
                    elif waiter.aborted():
                        raise Aborted()
                    emitter.piece(kind, item)
                    count += 1
            end = self.clock()
            result = Result(
                done_reason=plan.done_reason,
                text="".join(plan.content),
                thinking="".join(plan.thinking),
                tool_calls=plan.tool_calls,
                prompt_eval_count=plan.prompt_eval_count,
                eval_count=count,
                total_duration=_ns(end - start),
                load_duration=_ns(t_load - start),
                prompt_eval_duration=_ns(t_prompt - t_load),
                eval_duration=_ns(end - t_prompt),
            )
            emitter.finish(result)
            self.stats.add("generations_completed")
        except (Aborted, ClientGone):
            self.stats.add("generations_cancelled")
            ex.abort()
            raise ClientGone("client went away") from None
        finally:
            with self._active_lock:
                self._active.pop(id(ex), None)
            self.stats.add("active_generations", -1)
            lease.release()


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))

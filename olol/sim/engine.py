"""Generation planning and execution shared by the native and OpenAI endpoints."""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
import threading
import time
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


class _Step:
    __slots__ = ("fn", "ex", "key", "data", "started", "cancelled", "handback", "error", "done")

    def __init__(self, fn: Callable[[], None], ex: Exchange | None, key: object) -> None:
        self.fn = fn
        self.ex = ex
        self.key = key
        self.data = b""
        self.handback = False
        self.started = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.done = threading.Event()


class Stepper:
    """One decode step's records leave together, from one thread.

    Ollama's runner decodes one token of every running sequence per step and
    hands them out at once, so a node's records of one step reach the network
    within microseconds of each other. Generations here run on their own threads,
    which wake from their sleeps up to hundreds of microseconds apart on a loaded
    machine; so each one hands the write of its next record, due at a step of the
    grid, to this thread. At each step it first builds every record due then, and
    then sends them back to back. A write that could block (a client that does not
    read, an armed fault) goes back to its generation's thread, so that it holds
    back nobody else.

    The thread (``olol-sim-step``) starts on first use and ends with ``stop``.
    """

    def __init__(self, stop: threading.Event,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stop = stop
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Step]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def run_at(self, delay: float, fn: Callable[[], None], waiter: Waiter,
               ex: Exchange | None = None, step_key: object = None) -> None:
        """Run ``fn`` ``delay`` seconds from now with the other writes due then, on
        the step thread, and return once it ran (re-raising what it raised). What
        ``fn`` writes to ``ex`` is sent with the step's other records, or by the
        calling thread when the write could block then. Writes with the same
        ``step_key`` (the step on the grid) go together even when their threads
        said when a little apart. Raises :class:`Aborted` if the waiter is aborted
        before it started."""
        step = _Step(fn, ex, step_key)
        with self._cond:
            if self._stop.is_set():
                raise Aborted()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="olol-sim-step",
                                                daemon=True)
                self._thread.start()
            deadline = self._monotonic() + max(0.0, delay)
            heapq.heappush(self._heap, (deadline, next(self._seq), step))
            if self._heap[0][2] is step:
                self._cond.notify()
        while not step.done.wait(Waiter.SLICE):
            if waiter.aborted():
                with self._cond:
                    if not step.started:
                        step.cancelled = True
                        raise Aborted()
                step.done.wait(Waiter.SLICE * 20)  # a write in progress ends first
                break
        if step.error is not None:
            raise step.error
        if not step.done.is_set() or (step.handback and waiter.aborted()):
            raise Aborted()
        if step.handback:
            fn()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = self._monotonic()
                if not self._heap or self._heap[0][0] > now:
                    wait = self._heap[0][0] - now if self._heap else 0.5
                    self._cond.wait(min(wait, 0.5))
                    continue
                batch = []
                keys = set()
                while self._heap and self._heap[0][0] <= now:
                    step = heapq.heappop(self._heap)[2]
                    if step.key is not None:
                        keys.add(step.key)
                    if not step.cancelled:
                        step.started = True
                        batch.append(step)
                if keys and self._heap:  # the rest of the same steps
                    same = [e for e in self._heap if e[2].key in keys]
                    if same:
                        self._heap = [e for e in self._heap if e[2].key not in keys]
                        heapq.heapify(self._heap)
                        for _, _, step in sorted(same, key=lambda e: (e[0], e[1])):
                            if not step.cancelled:
                                step.started = True
                                batch.append(step)
            for step in batch:  # build the step's records...
                try:
                    ex = step.ex
                    if ex is None:
                        step.fn()
                    elif ex.can_write_now():
                        step.data = ex.capture(step.fn)
                    else:
                        step.handback = True
                except BaseException as exc:  # noqa: BLE001 - re-raised in the generation's thread
                    step.error = exc
            for step in batch:  # ...then send them together
                try:
                    if step.data and step.ex is not None:
                        step.ex.send_captured(step.data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the generation's thread
                    step.error = exc
            for step in batch:  # and only then wake the generations (they would take
                step.done.set()  # the GIL between two sends)
        with self._cond:  # stopping: nobody waits on a write that will not run
            left, self._heap = self._heap, []
        for _, _, step in left:
            step.error = Aborted()
            step.done.set()

    def join(self, timeout: float) -> None:
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)


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
        self.stepper = Stepper(stop)

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
                        # per step: the generations advance on one grid of steps, and
                        # the records of a step leave together (Stepper)
                        due = math.ceil((t_prompt + count * interval) / interval) * interval
                        self.stepper.run_at(due - self.clock(),
                                            functools.partial(emitter.piece, kind, item), waiter,
                                            ex, due)
                    else:
                        if waiter.aborted():
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
            # counted before the final record leaves: whoever holds the whole answer
            # sees it counted (a client that reads the counters at once did not)
            self.stats.add("generations_completed")
            try:
                emitter.finish(result)
            except BaseException:
                self.stats.add("generations_completed", -1)
                raise
        except (Aborted, ClientGone):
            self.stats.add("generations_cancelled")
            ex.abort()
            raise ClientGone("client went away") from None
        finally:
            with self._active_lock:
                self._active.pop(id(ex), None)
            lease.release()  # first: no active generation means its slot is free
            self.stats.add("active_generations", -1)


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))

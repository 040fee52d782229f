"""The dispatcher: a pool of named threads that run claimed batches on nodes.

Each thread asks the scheduler for the next batch, calls the node over gRPC,
and publishes every record to the waiting callers through the ResponseHub as
it arrives. A failure on the node's side before any output reached the client
(a 5xx, a cut stream, a missed first-record or stall deadline, a transport
error) sends the work back to the queue for another node (bounded retries with
backoff) and counts for outlier detection (:mod:`olol.outliers`), unless the
same request already failed alike on another node: then the request is the
cause, it fails as it is and nobody is blamed. After output reached the client
the stream is carried over to another node that has the model, which continues
the answer from the text the client has (:mod:`olol.resume`; ``resume_streams``,
at most ``max_resumes`` times per request); when it cannot be, the request fails
with an error event (the front door ends the stream with an error line). Every
state change is written to the store.

Deadlines (:class:`~olol.node_faults.CallWatch`): a node call must deliver its
first record within ``first_record_timeout_s`` (plus the model's expected load
time when it was cold on the node), then never stay silent longer than
``stall_timeout_s`` before output reached the client (``stream_idle_timeout_s``
after). A non-streamed answer is built by the agent from Ollama's stream, and
the agent shows progress meanwhile, so a hung node is told from a long answer.

A streamed request with one synchronous caller is not relayed record by record:
after its first record the dispatcher hands the node stream to the caller's
HTTP thread as a :class:`~olol.relay.StreamRelay` (which then owns the slot and
the accounting) and goes back to the queue. A watchdog thread ends relayed
streams that stall for longer than ``stream_idle_timeout_s``.

A front-door thread whose request is first in the queue and can be placed at
once runs it itself (:meth:`run_inline`) instead of waking a dispatcher thread
and waiting for it: two thread hand-offs fewer per request. While it waits on
the node, the watchdog checks that its client is still connected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from olol.hub import CHUNK, DONE, ERROR, RELAY
from olol.metrics import request_usage
from olol.node_faults import (
    BUSY,
    NODE,
    Attempt,
    Attempts,
    CallWatch,
    LoadTimes,
    conclusive,
    failure_kind,
    missed,
    signature,
    transport_fault,
)
from olol.passthrough import PASSTHROUGH, PassthroughRuns
from olol.queue.records import STOP_ERROR
from olol.relay import STOPPING_MESSAGE, Relay, StreamRelay
from olol.resume import CarryOvers, Resume, Transcript, carry_over, follow
from olol.rpc.client import NodeError
from olol.scheduler import Assignment, RequestScheduler

if TYPE_CHECKING:
    from olol.interfaces import (
        DispatchCluster,
        DispatchQueue,
        ResponseHub,
        UsageCounter,
    )

log = logging.getLogger(__name__)


_NODE_GONE = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
#: At stop, once the grace is over and the calls left are cancelled: how long they may
#: take to record their end (they are on their way out; not a second grace).
SETTLE_S = 5.0


class _AllGone(Exception):
    """Every caller of a batch went away."""


class Dispatcher(PassthroughRuns):
    def __init__(
        self,
        queue_manager: DispatchQueue,
        scheduler: RequestScheduler,
        cluster_manager: DispatchCluster,
        hub: ResponseHub,
        *,
        threads: int = 32,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
        request_timeout_s: float = 600.0,
        publish_timeout_s: float = 30.0,
        idle_wait_s: float = 0.5,
        registry: UsageCounter | None = None,
        lease_refresh_s: float = 60.0,
        stream_idle_timeout_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        first_record_timeout_s: float = 120.0,
        stall_timeout_s: float = 60.0,
        cold_start_s: float = 30.0,
        node_progress: bool = True,
        resume_streams: bool = True,
        max_resumes: int = 2,
    ):
        """:param first_record_timeout_s: longest wait for a node call's first record
            (0: none); a call placed where the model is cold gets the model's
            expected load time on top (learned, at least ``cold_start_s``).
        :param stall_timeout_s: longest silence between records before any output
            reached the client (0: none); after, ``stream_idle_timeout_s``.
        :param node_progress: have agents build non-streamed answers and show
            progress (needs agents of this version); without it a non-streamed
            call's deadline is its whole answer's.
        :param resume_streams: carry a stream whose node fails after output reached
            the client over to another node, which continues the answer
            (:mod:`olol.resume`); off, such a stream ends with an error line.
        :param max_resumes: how many times one request may be carried over.
        """
        self.queue = queue_manager
        self.scheduler = scheduler
        self.cluster = cluster_manager
        self.hub = hub
        self.registry = registry
        self.lease_refresh_s = lease_refresh_s
        self.clock = clock
        self.n_threads = threads
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.idle_wait_s = idle_wait_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.first_record_timeout_s = first_record_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.node_progress = node_progress
        self.resume_streams = resume_streams
        self.max_resumes = max_resumes
        self.monotonic = monotonic
        self.load_times = LoadTimes(cold_start_s)
        self._calls = CallWatch(monotonic)  # deadlines of node calls in flight
        self._attempts = Attempts()  # node-side failures per request, until it ends
        self._relays: dict[str, Relay] = {}  # request id -> relay being read
        self._inline: dict[str, Callable[[], bool]] = {}  # request id -> "client gone?"
        self._resumes = CarryOvers()  # streams being carried over to another node
        self._local = threading.local()  # .after: where a front-door thread defers work
        self._stop = threading.Event()
        self._claiming = threading.Event()
        self._claiming.set()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._active_lock = threading.Condition()
        self._running: dict[str, Any] = {}  # batch_id -> NodeStream (for shutdown cancel)
        self._batch_of: dict[str, tuple[str, list[str]]] = {}  # request id -> (batch, its ids)
        self._cancelled: set[str] = set()  # batches stopped because their callers cancelled
        self._cut_off = threading.Event()  # stopping, the grace over: running calls cut
        self._running_lock = threading.Lock()
        queue_manager.add_cancel_listener(self._on_cancel)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> Dispatcher:
        for i in range(self.n_threads):
            t = threading.Thread(target=self._loop, name=f"olol-dispatch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._watch, name="olol-dispatch-watch", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self, grace_s: float = 30.0) -> bool:
        """Stop claiming, let running work finish within grace_s; True if all finished.
        Synchronous requests still waiting are answered at once (503, the proxy is
        stopping: their callers may try another proxy) and recorded ``interrupted``."""
        self._claiming.clear()
        for request_id in self.queue.waiting_here():
            self._cut_by_stop({"id": request_id, "kind": "sync"}, None, started=False)
        deadline = self.monotonic() + grace_s
        finished = self._wait_idle(deadline)
        if not finished:
            self._cut_off.set()
            with self._running_lock:
                relays = list(self._relays.values())
            for relay in relays:  # their callers are told why (STOPPING_MESSAGE)
                relay.interrupt()
            for stream in list(self._running.values()):
                try:
                    stream.cancel()
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass
            # the cancelled calls end on their own threads (a relay on its HTTP
            # thread): let them record their end before the queue and store close
            self._wait_idle(self.monotonic() + SETTLE_S)
        self._stop.set()
        self.queue.notify()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - self.monotonic()) + 5)
        return finished

    def _wait_idle(self, until: float) -> bool:
        """Wait (until ``until`` on the monotonic clock) for no claimed work to be
        running; True when none is."""
        with self._active_lock:
            while self._active and self.monotonic() < until:
                self._active_lock.wait(timeout=min(0.5, max(0.01, until - self.monotonic())))
            return self._active == 0

    def tick(self, now: float | None = None) -> Assignment | None:
        """One step of a dispatcher thread: claim the next batch placement assigns
        (at ``now`` on the dispatcher's clock, by default its current value) and run
        it in the calling thread. Returns the assignment it ran (its outcome is in
        the queue and the hub), or None when nothing could be placed now or the
        dispatcher is stopping. Threads call it in a loop; tests call it directly.

        :raises Exception: whatever placement raised (nothing was claimed then).
        """
        if not self._claiming.is_set() or self._stop.is_set():
            return None
        assignment = self.scheduler.schedule_next_batch(
            now=self.clock() if now is None else now)
        if assignment is None:
            return None
        self._run_claimed(assignment)
        return assignment

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._claiming.is_set():
                self._stop.wait(0.2)
                continue
            try:
                assignment = self.tick(self.clock())
            except Exception:
                log.exception("scheduling failed")
                self._stop.wait(0.5)
                continue
            if assignment is None:
                self.queue.wait_for_work(timeout=self.idle_wait_s)

    def _run_claimed(self, assignment: Assignment) -> None:
        with self._active_lock:
            self._active += 1
        handed_off = False
        self._local.ok = False
        try:
            handed_off = self.run(assignment)
        except Exception:
            log.exception("batch %s on %s failed unexpectedly", assignment.batch_id, assignment.node)
            for req in assignment.requests:
                self._fail(req, 500, "internal error while dispatching", started=False)
        finally:
            if not handed_off:  # else the relay releases when its stream ends
                if self._local.ok:
                    self._later(lambda: self._release(assignment))
                else:  # a failure is settled now: a retry may need this very slot
                    self._release(assignment)

    def _later(self, work: Callable[[], None]) -> None:
        """Do ``work`` now, or, in a front-door thread that runs its own request, after
        its response has been written (bookkeeping off the caller's critical path)."""
        after = getattr(self._local, "after", None)
        if after is None:
            work()
        else:
            after(work)

    def run_inline(self, request_id: str, disconnected: Callable[[], bool],
                   after: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """Run a just-enqueued request in the calling (front-door) thread when it is
        first in the queue and a node can take it now. Its outcome reaches the
        caller's channel as usual (already there when this returns, or a relay).

        ``after``, when given, takes the bookkeeping of a successful run (the queue
        record's completion, statistics, the slot's release) to do once the response
        has been written; it must run whatever happens to the response.

        :returns: True when the request was claimed here; False when it was left
            to the dispatcher threads (the caller must then wake one).
        """
        if not self._claiming.is_set() or self._stop.is_set():
            return False
        if not self.queue.is_next(request_id):
            return False
        try:
            assignment = self.scheduler.schedule_next_batch(only=request_id, now=self.clock())
        except Exception:
            log.exception("scheduling request %s failed", request_id)
            return False
        if assignment is None:
            return False
        with self._running_lock:
            self._inline[request_id] = disconnected
        self._local.after = after
        try:
            self._run_claimed(assignment)
        finally:
            self._local.after = None
            with self._running_lock:
                self._inline.pop(request_id, None)
        return True

    def _release(self, assignment: Assignment) -> None:
        self.scheduler.release(assignment)
        with self._active_lock:
            self._active -= 1
            self._active_lock.notify_all()

    def _watch_period(self) -> float:
        limits = [t for t in (self.stream_idle_timeout_s, self.first_record_timeout_s,
                              self.stall_timeout_s) if t and t > 0]
        return max(0.01, min([1.0, *(t / 4 for t in limits)]))

    def _watch(self) -> None:
        """Cancel node calls that miss a deadline, end relayed streams that have sent
        nothing for ``stream_idle_timeout_s``, notice inline callers that left."""
        while not self._stop.wait(self._watch_period()):
            try:
                self._calls.sweep()
            except Exception:  # noqa: BLE001 - the watchdog must keep running
                log.exception("checking node call deadlines failed")
            now = self.monotonic()
            with self._running_lock:
                relays = list(self._relays.values())
                inline = list(self._inline.items())
            for request_id, disconnected in inline:
                try:
                    gone = disconnected()
                except Exception:  # noqa: BLE001 - a probe must not stop the watchdog
                    gone = False
                if gone:
                    log.info("request %s: the client went away while its node worked", request_id)
                    self.queue.cancel(request_id)  # stops the node call (_on_cancel)
            for relay in relays:
                limit = relay.idle_s if relay.idle_s is not None else self.stream_idle_timeout_s
                if not relay.settled and now - relay.last_record > limit:
                    log.warning("request %s: no record for %.0f s, ending its stream",
                                relay.request_id, now - relay.last_record)
                    relay.stall()

    # ---------------------------------------------------------------- running
    def run(self, a: Assignment) -> bool:
        """Run a claimed batch; True when its stream was handed to the caller's thread
        (which then releases the assignment), False when it finished here."""
        if self._resumes and a.mode != "embed_merge":
            self._keep_alike(a)
        head = a.requests[0]
        client = self.cluster.client(a.node)
        final: Any = None
        keep: Transcript | None = None
        try:
            if a.mode == "embed_merge":
                self._run_embed_merge(client, a)
            elif head["endpoint"] in ("embed", "embeddings"):
                call = client.embed if head["endpoint"] == "embed" else client.embeddings
                resp = call(head["body"], timeout=self.request_timeout_s)
                for req in a.requests:
                    self._finish(req, resp)
                final = resp
            elif head["endpoint"] == PASSTHROUGH:  # a route olol does not know
                return self._run_passthrough(client, a)
            elif self._can_relay(a):
                return self._start_relay(client, a)
            else:
                keep = self._transcript(a)
                final = self._run_stream(client, a, keep)
        except _AllGone:
            for req in a.requests:
                self._end_unsuccessful(req["id"], "cancelled", error="the client went away")
            return False
        except NodeError as exc:
            with self._running_lock:
                stopped = a.batch_id in self._cancelled
                self._cancelled.discard(a.batch_id)
            if stopped:  # we cancelled the call: every caller had cancelled
                return False
            self._node_failed(a, exc, keep)
            return False
        self._later(lambda: self._succeeded(a, final))
        self._local.ok = True
        return False

    def _succeeded(self, a: Assignment, final: Any = None) -> None:
        for req in a.requests:
            self._settle_attempts(req["id"], succeeded=True)
        self.cluster.record_success(a.node, a.model_key)
        self.cluster.note_loaded(a.node, a.model_key)
        if final is not None:
            self.scheduler.learn(a.node, a.model_key, final)
            if a.cold:
                self.load_times.note(a.model_key, final)
        if self.registry is not None:
            for _ in a.requests:
                self.registry.note_usage(a.model_key, a.node)

    # ---------------------------------------------------------------- deadlines
    def _first_record_s(self, a: Assignment) -> float:
        if not self.first_record_timeout_s or self.first_record_timeout_s <= 0:
            return 0.0
        extra = self.load_times.allowance(a.model_key) if a.cold else 0.0
        return self.first_record_timeout_s + extra

    def _progress_s(self) -> float | None:
        """How often an agent building a non-streamed answer shows progress."""
        if not self.node_progress:
            return None
        limits = [t for t in (self.first_record_timeout_s, self.stall_timeout_s) if t and t > 0]
        return max(0.05, min(limits) / 4) if limits else None

    # ---------------------------------------------------------------- relaying
    def _can_relay(self, a: Assignment) -> bool:
        """One synchronous streamed caller: its HTTP thread can read the node stream.
        A continuation (the stream carried over) goes record by record: its records
        are rewritten (:meth:`Resume.translate`)."""
        if len(a.requests) != 1 or a.mode != "single":
            return False
        req = a.requests[0]
        return (req.get("kind") != "job" and bool(req.get("stream"))
                and req["endpoint"] in ("chat", "generate")
                and self._resume_of(req["id"]) is None)

    def _start_relay(self, client: Any, a: Assignment) -> bool:
        """Read the first record here (so failures before it are retried as usual),
        then hand the stream to the caller's thread."""
        req = a.requests[0]
        rid = req["id"]
        call = client.chat if req["endpoint"] == "chat" else client.generate
        sent = self.monotonic()
        stream = call(req["body"], timeout=self.request_timeout_s, raw=True)
        with self._running_lock:
            self._running[a.batch_id] = stream
            self._batch_of[rid] = (a.batch_id, [rid])
        self._calls.watch(a.batch_id, stream, self._first_record_s(a), 0.0)
        try:
            try:
                body, done = stream.next_message()
            except StopIteration:
                raise NodeError(None, "the node closed the stream before it finished", 502) from None  # type: ignore[arg-type]
            except NodeError as exc:
                exc = missed(self._calls, a.batch_id, exc)
                exc.mid_stream = False  # nothing reached the client yet
                raise exc from None
        except BaseException:
            self._calls.unwatch(a.batch_id)
            self._forget(a)
            raise
        self._calls.unwatch(a.batch_id)  # the relay's own watchdog takes over
        first_ts = self.clock()  # the first record goes to the client now

        def settle(outcome: str, info: Any) -> Iterator[tuple[bytes, bool]] | None:
            return self._settle_relay(a, outcome, info, relay, first_ts)

        resumable = self._may_resume(a)
        relay = StreamRelay(rid, stream, body, done, settle=settle,
                            on_record=self._lease_keeper(rid), monotonic=self.monotonic,
                            transcript=Transcript(req["endpoint"], sent) if resumable else None,
                            idle_s=self._idle_after_output(resumable))
        return self._hand_over(rid, relay)

    def _lease_keeper(self, request_id: str) -> Callable[[], None]:
        """A callback for each record of a relayed answer: extends the request's lease
        once every ``lease_refresh_s``, so a long answer keeps its claim."""
        next_refresh = self.monotonic() + self.lease_refresh_s

        def keep_lease() -> None:
            nonlocal next_refresh
            now = self.monotonic()
            if now >= next_refresh:
                next_refresh = now + self.lease_refresh_s
                self.queue.extend_lease(request_id)

        return keep_lease

    def _hand_over(self, request_id: str, relay: Relay) -> bool:
        """Give ``relay`` to the caller's thread (or end it: cancelled while its first
        record came, or the caller gone). True: the relay now owns the slot."""
        with self._running_lock:
            self._relays[request_id] = relay
        if self.queue.is_cancelled(request_id):
            relay.abandon("cancelled")
        elif not self.hub.publish(request_id, RELAY, relay, timeout=self.publish_timeout_s):
            relay.abandon("the client went away")
        return True

    def _forget(self, a: Assignment) -> None:
        with self._running_lock:
            self._running.pop(a.batch_id, None)
            for req in a.requests:
                self._batch_of.pop(req["id"], None)
                self._relays.pop(req["id"], None)

    def _settle_relay(self, a: Assignment, outcome: str, info: Any,
                      relay: StreamRelay, first_ts: float | None = None
                      ) -> Iterator[tuple[bytes, bool]] | None:
        """The end of a relayed stream, in whichever thread saw it: record the outcome
        and release the slot (exactly once, :class:`StreamRelay` guarantees it).
        When the node failed after output and the stream is carried over to another
        node, returns the rest of the answer for the relay to hand on."""
        req = a.requests[0]
        rest = None
        try:
            self._forget(a)
            if outcome == "completed":
                self.queue.update_request_status(
                    req["id"], "completed",
                    usage=request_usage(info, first_token_ts=first_ts, cold=a.cold))
                self._succeeded(a, info)
            elif outcome == "failed" and not self.queue.is_cancelled(req["id"]):
                exc: NodeError = info
                node_side = self._claiming.is_set() and failure_kind(exc) == NODE
                if node_side:
                    self._blame_mid_stream(a, exc)
                if node_side and relay.transcript is not None and self._carry_over(
                        a, req, exc, relay.transcript):
                    rest = self._follow(req["id"])
                elif self._cut_off.is_set():  # cut by the shutdown
                    self._end_interrupted(req["id"])
                else:
                    self._end_unsuccessful(req["id"], "failed", error=exc.message,
                                           error_status=exc.http_status)
            elif outcome == "cancelled":
                self._end_unsuccessful(req["id"], "cancelled", error=str(info))
        except Exception:
            log.exception("settling request %s failed", req["id"])
        finally:
            self._release(a)
        return rest

    # ---------------------------------------------------------------- carrying over
    def _resume_of(self, request_id: str) -> Resume | None:
        return self._resumes.get(request_id)

    def _may_resume(self, a: Assignment) -> bool:
        """Whether a stream of this batch could be carried over should its node fail
        (another node serves the model; the request has carry-overs left)."""
        if not self.resume_streams or self.max_resumes <= 0:
            return False
        reqs = [r for r in a.requests if r.get("kind") != "job" and r.get("stream")]
        if not reqs or reqs[0]["endpoint"] not in ("chat", "generate"):
            return False
        prior = self._resume_of(reqs[0]["id"])
        if prior is not None and prior.resumes >= self.max_resumes:
            return False
        return any(n != a.node for n in self.cluster.model_peers(a.model_key))

    def _idle_after_output(self, resumable: bool) -> float:
        """The longest silence of a node after output reached the client: the stall
        deadline when the stream can be carried over (a silent node is then worth
        leaving), else ``stream_idle_timeout_s``."""
        if resumable and self.stall_timeout_s and self.stall_timeout_s > 0:
            return min(self.stall_timeout_s, self.stream_idle_timeout_s)
        return self.stream_idle_timeout_s

    def _transcript(self, a: Assignment) -> Transcript | None:
        """A record of what a record-by-record stream delivers, when it could be
        carried over (relays keep their own)."""
        if a.mode == "embed_merge" or not self._may_resume(a):
            return None
        return Transcript(a.requests[0]["endpoint"], self.monotonic())

    def _carry_over(self, a: Assignment, req: dict, exc: NodeError,
                    transcript: Transcript) -> bool:
        """Send a request whose stream broke after output back to the queue to be
        continued on another node; False (nothing done) when it cannot be."""
        rid = req["id"]
        if not self.resume_streams or req.get("kind") == "job" or not req.get("stream"):
            return False
        prior = self._resume_of(rid)
        broken = {*(prior.nodes if prior is not None else ()), a.node}
        if not any(n not in broken for n in self.cluster.model_peers(a.model_key)):
            log.info("request %s: no other node has %s, its stream ends", rid, a.model_key)
            return False
        segment = transcript.segment(self.monotonic())
        plan = carry_over(req["endpoint"], req.get("body"), prior, segment, a.node,
                          max_resumes=self.max_resumes,
                          attempts=int(req.get("attempts") or 1))
        if isinstance(plan, str):
            log.info("request %s: its stream is not carried over: %s", rid, plan)
            return False
        if not self.hub.listening(rid):
            return False
        self._resumes.put(rid, plan)
        self.scheduler.avoid(rid, a.node)
        if not self.queue.requeue(rid, delay_s=0.0, reason=f"carried over: {exc.message}"):
            self._resumes.pop(rid)
            return False
        log.warning("request %s: %s failed after %d records (%s); continuing on another node "
                    "(carry-over %d)", rid, a.node, plan.tokens, exc.message, plan.resumes)
        return True

    def _follow(self, request_id: str) -> Iterator[tuple[bytes, bool]]:
        """The rest of a carried-over answer, for the caller's thread that was reading
        a relay (:func:`olol.resume.follow`)."""
        channel = self.hub.get(request_id)
        if channel is None:  # the caller left meanwhile: nobody wants the rest
            self.queue.cancel(request_id)
            raise NodeError(None, "the client went away", 499, mid_stream=True)  # type: ignore[arg-type]
        yield from follow(channel, first_wait=self.request_timeout_s,
                          idle_wait=self.stream_idle_timeout_s,
                          on_timeout=lambda: self.queue.cancel(request_id))

    def _keep_alike(self, a: Assignment) -> None:
        """A batch is one node call: requests that ride along with its head must want
        the same continuation (or none). Put the others back in the queue."""
        head = self._resume_of(a.requests[0]["id"])
        key = head.key if head is not None else None
        keep = []
        for req in a.requests:
            mine = self._resume_of(req["id"])
            if (mine.key if mine is not None else None) == key:
                keep.append(req)
            elif self.queue.requeue(req["id"], delay_s=0.0, reason="put back: another answer"):
                self._resumes.bounced(req["id"])
        a.requests[:] = keep
        if len(keep) == 1 and a.mode == "coalesced":
            a.mode = "single"

    def _run_stream(self, client: Any, a: Assignment, keep: Transcript | None = None) -> dict:
        """Run a batch record by record; returns the final record. ``keep`` records
        what reached the callers (for a carry-over should the node fail)."""
        head = a.requests[0]
        resume = self._resume_of(head["id"])
        if resume is not None and resume.exhausted:
            return self._end_exhausted(a, resume)
        endpoint, body = resume.call() if resume is not None else (head["endpoint"], head["body"])
        translate = resume.translate if resume is not None else None
        call = client.chat if endpoint == "chat" else client.generate
        progress = None if head.get("stream") else self._progress_s()
        if progress is not None and isinstance(body, dict):
            stream = call(body, timeout=self.request_timeout_s, aggregate=progress)
        else:
            progress = None
            stream = call(body, timeout=self.request_timeout_s)
        ids = [r["id"] for r in a.requests]
        with self._running_lock:
            self._running[a.batch_id] = stream
            for rid in ids:
                self._batch_of[rid] = (a.batch_id, ids)
        if head.get("stream") or progress is not None:
            self._calls.watch(a.batch_id, stream, self._first_record_s(a), self.stall_timeout_s)
        # else a non-streamed answer that shows no progress: its first record is its end,
        # and only request_timeout_s bounds it
        waiting = list(a.requests)
        delivered = False  # output reached a synchronous caller
        # when the first record went to the callers (a carried-over answer's came earlier)
        first_ts: float | None = None
        next_refresh = self.monotonic() + self.lease_refresh_s
        try:
            for record in stream:
                if first_ts is None and head.get("stream") and resume is None:
                    first_ts = self.clock()
                if self.monotonic() >= next_refresh:
                    # a long generation keeps its claim: the lease must not run out
                    for req in waiting:
                        self.queue.extend_lease(req["id"])
                    next_refresh = self.monotonic() + self.lease_refresh_s
                done = bool(record.get("done")) or stream.done
                if "error" in record and not done:
                    raise NodeError(None, str(record["error"]), 500, mid_stream=delivered)  # type: ignore[arg-type]
                if translate is not None:
                    record = translate(record)
                kind = DONE if done else CHUNK
                still = []
                for req in waiting:
                    if req.get("kind") == "job":
                        still.append(req)
                        continue
                    if self.hub.publish(req["id"], kind, record, timeout=self.publish_timeout_s):
                        still.append(req)
                        if not delivered and not done:
                            delivered = True
                            self._calls.delivered(a.batch_id,
                                                  self._idle_after_output(keep is not None))
                    else:
                        self.queue.update_request_status(
                            req["id"], "cancelled", error="the client went away"
                        )
                waiting = still
                if not waiting:
                    stream.cancel()
                    raise _AllGone()
                if keep is not None and delivered and not done:
                    keep.add(record, self.monotonic())
                if done:
                    def tail(waiting: list = waiting, record: Any = record,
                             first_ts: float | None = first_ts) -> None:
                        for req in waiting:
                            self._finish(req, record, publish=False, usage=request_usage(
                                record, first_token_ts=first_ts, cold=a.cold,
                                resumes=resume.resumes if resume is not None else 0))
                        stream.drain()

                    self._later(tail)
                    return record
            # the stream ended without a final record
            raise NodeError(None, "the node closed the stream before it finished", 502,  # type: ignore[arg-type]
                            mid_stream=delivered)
        except NodeError as exc:
            exc = missed(self._calls, a.batch_id, exc)
            exc.mid_stream = delivered
            a.requests[:] = waiting
            raise exc from None
        finally:
            self._calls.unwatch(a.batch_id)
            with self._running_lock:
                self._running.pop(a.batch_id, None)
                for rid in ids:
                    self._batch_of.pop(rid, None)

    def _end_exhausted(self, a: Assignment, resume: Resume) -> dict:
        """A carried-over answer whose ``num_predict`` was used up before its node
        broke: its final record, without another node call."""
        record = resume.final_record(self.clock())
        for req in a.requests:
            if req.get("kind") != "job":
                self.hub.publish(req["id"], DONE, record, timeout=self.publish_timeout_s)
        for req in a.requests:
            self._finish(req, record, publish=False)
        return record

    def _on_cancel(self, request_id: str) -> None:
        """A request was cancelled (jobs API): when nobody is left waiting for its
        batch, stop the node call so the node stops generating."""
        self._resumes.pop(request_id)
        with self._running_lock:
            relay = self._relays.get(request_id)
            found = self._batch_of.get(request_id)
            batch_id, ids = found if found is not None else (None, [])
            stream = self._running.get(batch_id) if batch_id is not None else None
        if relay is not None:
            relay.abandon("cancelled")
            return
        if stream is None or batch_id is None or not all(
                self.queue.is_cancelled(rid) for rid in ids):
            return
        with self._running_lock:
            self._cancelled.add(batch_id)
        stream.cancel()

    def _run_embed_merge(self, client: Any, a: Assignment) -> None:
        head = a.requests[0]
        inputs: list[str] = []
        spans: list[tuple[int, int, bool]] = []
        for req in a.requests:
            value = req["body"].get("input", "")
            items = [value] if isinstance(value, str) else list(value)
            spans.append((len(inputs), len(inputs) + len(items), isinstance(value, str)))
            inputs.extend(items)
        body = {k: v for k, v in head["body"].items() if k != "input"}
        body["input"] = inputs
        resp = client.embed(body, timeout=self.request_timeout_s)
        vectors = resp.get("embeddings") or []
        if len(vectors) != len(inputs):
            raise NodeError(None, f"the node returned {len(vectors)} embeddings for {len(inputs)} inputs", 502)  # type: ignore[arg-type]
        total_tokens = resp.get("prompt_eval_count") or 0
        for req, (lo, hi, _single) in zip(a.requests, spans, strict=True):
            share = {k: v for k, v in resp.items() if k not in ("embeddings", "prompt_eval_count")}
            share["embeddings"] = vectors[lo:hi]
            if total_tokens:
                share["prompt_eval_count"] = round(total_tokens * (hi - lo) / max(1, len(inputs)))
            share["model"] = req["body"].get("model", resp.get("model"))
            self._finish(req, share)

    # ---------------------------------------------------------------- outcomes
    def _finish(self, req: dict, record: dict, publish: bool = True,
                usage: dict | None = None) -> None:
        if publish and req.get("kind") != "job":
            self.hub.publish(req["id"], DONE, record, timeout=self.publish_timeout_s)
        result = record if req.get("kind") == "job" else None
        if usage is None:
            resume = self._resume_of(req["id"])
            usage = request_usage(record, resumes=resume.resumes if resume is not None else 0)
        self.queue.update_request_status(req["id"], "completed", result, usage=usage)

    def _fail(self, req: dict, status: int, message: str, *, started: bool) -> None:
        if req.get("kind") != "job":
            self.hub.publish(
                req["id"], ERROR, {"status": status, "error": message, "started": started},
                timeout=self.publish_timeout_s,
            )
        self._end_unsuccessful(req["id"], "failed", error=message, error_status=status)

    def fail_unplaceable(self, req: dict, message: str) -> None:
        """A claimed request no node can serve (its model is nowhere)."""
        self._fail(req, 404, message, started=False)

    def _node_failed(self, a: Assignment, exc: NodeError,
                     keep: Transcript | None = None) -> None:
        kind = failure_kind(exc)
        if kind == NODE and self._cut_off.is_set():  # cut by the shutdown
            for req in a.requests:
                self._cut_by_stop(req, exc, started=exc.mid_stream)
            return
        stopping = not self._claiming.is_set()
        if exc.mid_stream:  # output reached the client: carried over, or an error line
            node_side = kind == NODE and not stopping
            if node_side:
                self._blame_mid_stream(a, exc)
            for req in a.requests:
                if req.get("kind") == "job" and node_side:
                    self._retry(req, exc)  # no stream: it starts over
                elif not (node_side and keep is not None and self._carry_over(a, req, exc, keep)):
                    self._fail(req, exc.http_status, exc.message, started=True)
            return
        if kind != NODE:
            # the request itself was refused (unknown model, bad option), or the node
            # is busy (503: try again later)
            for req in a.requests:
                if kind == BUSY:
                    # full with calls we do not see (another proxy's, say): the retry
                    # goes to another node when one can take it
                    self.scheduler.avoid(req["id"], a.node)
                    self._retry(req, exc, busy=True)
                else:
                    self._fail(req, exc.http_status, exc.message, started=False)
            return
        if stopping:  # no retry from a stopping proxy: a job waits for the next start
            for req in a.requests:
                self._cut_by_stop(req, exc, started=False)
            return
        if transport_fault(exc):
            self.scheduler.handle_server_failure(a.node, exc.message)
        ticket = self.cluster.record_failure(a.node, a.model_key)
        sig = signature(exc)
        for req in a.requests:
            rid = req["id"]
            alike = self._attempts.record(rid, Attempt(a.node, sig, ticket))
            if alike:
                # The same failure on another node: the request is the cause (or the
                # whole model is broken). Blame nobody.
                for attempt in (*alike, Attempt(a.node, sig, ticket)):
                    self.cluster.retract_failure(attempt.ticket)
                log.info("request %s failed alike on %s and %s: %s", rid, alike[0].node,
                         a.node, exc.message)
                if conclusive(exc):  # answer what the node said, try no further
                    self._fail(req, exc.http_status, exc.message, started=False)
                    continue
            self.scheduler.avoid(rid, a.node)
            if not transport_fault(exc) and not self._another_node(rid, a.model_key):
                # a 5xx with no other node to ask: answer it as Ollama did
                self._fail(req, exc.http_status, exc.message, started=False)
                continue
            self._retry(req, exc)

    def _cut_by_stop(self, req: dict, exc: NodeError | None, *, started: bool) -> None:
        """A request the shutdown ends: still waiting at the stop (``exc`` None), its
        call failed while stopping (no retry from here), or cut once the grace was
        over. A job goes back to the queue (this proxy after its restart, or another
        one, runs it again); a synchronous caller is told the proxy is stopping (503)
        and its record says ``interrupted``, as after a restart: no proxy could run
        it again."""
        if req.get("kind") == "job" and exc is not None:
            self._retry(req, exc)
            return
        self.hub.publish(req["id"], ERROR,
                         {"status": 503, "error": STOPPING_MESSAGE, "started": started},
                         timeout=self.publish_timeout_s)
        self._end_interrupted(req["id"])

    def _end_interrupted(self, request_id: str) -> None:
        """Record that the shutdown ended a synchronous request (no node to blame)."""
        self._end_unsuccessful(request_id, "interrupted", error=STOP_ERROR, error_status=503)

    def _another_node(self, request_id: str, model_key: str) -> bool:
        """Whether a node this request has not failed on could serve its model."""
        tried = self._attempts.nodes(request_id)
        return any(n not in tried for n in self.cluster.model_peers(model_key))

    def _blame_mid_stream(self, a: Assignment, exc: NodeError) -> None:
        """A node failed after output reached the client: suspect it when the call
        itself broke, and count the failure when its peers are doing fine."""
        if transport_fault(exc):
            self.scheduler.handle_server_failure(a.node, exc.message)
        ticket = self.cluster.record_failure(a.node, a.model_key)
        if not ticket.counted:  # no retry will ever confirm it: do not hold the node
            self.cluster.retract_failure(ticket)

    def _end_unsuccessful(self, request_id: str, status: str, **fields: Any) -> None:
        """Record that a request ended ``failed``, ``cancelled`` or ``interrupted``
        (``fields``: its error and status), and settle its attempts."""
        self.queue.update_request_status(request_id, status, **fields)
        self._settle_attempts(request_id, succeeded=False)

    def _settle_attempts(self, request_id: str, *, succeeded: bool) -> None:
        """The request is over. When it succeeded after failures, those failures
        were the nodes' doing: count the ones still pending."""
        attempts = self._attempts.pop(request_id)
        self.scheduler.forget(request_id)
        self._resumes.pop(request_id)
        if succeeded:
            for attempt in attempts:
                self.cluster.confirm_failure(attempt.ticket)

    def _retry(self, req: dict, exc: NodeError, busy: bool = False) -> None:
        """Send the request back to the queue (with backoff), or fail it when its
        attempts are used up (or cancel it when its caller is gone). A carried-over
        stream has a budget of its own; claims put back unrun do not count."""
        attempts = self._resumes.attempts(req["id"], int(req.get("attempts") or 1))
        gone = req.get("kind") != "job" and not self.hub.listening(req["id"])
        if gone:
            self._end_unsuccessful(req["id"], "cancelled", error="the client went away")
        elif attempts < self.max_attempts:
            delay = self.retry_backoff_s * (2 ** (attempts - 1))
            self.queue.requeue(req["id"], delay_s=delay, reason=exc.message)
        else:
            status = 503 if busy else 502
            self._fail(req, status, f"no node could serve the request: {exc.message}", started=False)

"""A dispatcher on real parts (memory store, queue, hub, cluster, scheduler) whose
nodes are fake clients: no gRPC, no threads, an injected clock, one ``tick`` at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from olol.cluster import ClusterManager
from olol.dispatcher import Dispatcher
from olol.hub import ResponseHub
from olol.queue import QueueManager
from olol.rpc.client import NodeError
from olol.scheduler import RequestScheduler
from olol.store import DatabaseManager
from tests.support import FakeClock

MODEL = "llama3.2:1b"


def final(text: str = "", *, load_s: float = 0.0, total_s: float = 0.5) -> dict:
    return {"model": MODEL, "response": text, "done": True, "done_reason": "stop",
            "load_duration": int(load_s * 1e9), "total_duration": int(total_s * 1e9),
            "eval_count": 4, "eval_duration": int(0.2 * 1e9)}


class FakeStream:
    """A node call's records; ``before(i)`` runs before record ``i`` is handed out
    (it may raise, like a node that fails there)."""

    def __init__(self, records: list[dict], before: Callable[[int], None] | None = None):
        self.records = list(records)
        self.before = before
        self.i = 0
        self.done = False
        self.cancelled = False
        self.drained = False

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> dict:
        if self.before is not None:
            self.before(self.i)
        if self.cancelled:
            raise NodeError(grpc.StatusCode.CANCELLED, "cancelled", 499)
        if self.i >= len(self.records):
            raise StopIteration
        record = self.records[self.i]
        self.i += 1
        self.done = bool(record.get("done"))
        return record

    def cancel(self) -> None:
        self.cancelled = True

    def drain(self) -> None:
        self.drained = True


class FakeNode:
    """What one node does with each call: ``script(body) -> FakeStream`` or raise."""

    def __init__(self, address: str):
        self.address = address
        self.calls: list[dict] = []
        self.script: Callable[[dict], Any] = lambda body: FakeStream(
            [{"model": MODEL, "response": "hi", "done": False}, final("!")])
        self.closed = False

    def _call(self, body: dict, timeout: float | None = None, **kw: Any) -> Any:
        self.calls.append(body)
        return self.script(body)

    chat = generate = _call

    def embed(self, body: dict, timeout: float | None = None) -> dict:
        self.calls.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"model": MODEL, "embeddings": [[float(len(s))] for s in inputs],
                "total_duration": int(0.1 * 1e9), "load_duration": 0}

    def close(self) -> None:
        self.closed = True


def status(models=(MODEL,), loaded=(), parallel=1) -> dict:
    return {"ollama": {"reachable": True, "models": [{"name": m} for m in models],
                       "loaded": [{"name": m} for m in loaded]},
            "agent": {"parallel": parallel, "in_flight_total": 0}}


class Mono:
    """The dispatcher's monotonic clock, advanced by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, nodes: tuple[str, ...] = ("n1:1", "n2:1"), **dispatcher_kw: Any):
        self.clock = FakeClock()
        self.mono = Mono()
        self.db = DatabaseManager.memory(clock=self.clock)
        self.queue = QueueManager(self.db, clock=self.clock)
        self.hub = ResponseHub()
        self.nodes = {a: FakeNode(a) for a in nodes}
        self.cluster = ClusterManager(self.db, clock=self.clock,
                                      client_factory=lambda a: self.nodes[a])
        for a in nodes:
            self.cluster.add_node(a)
            self.cluster.record_poll(a, status(), 1.0)
        self.scheduler = RequestScheduler(
            self.queue, self.cluster, clock=self.clock,
            on_unplaceable=lambda req, msg: self.dispatcher.fail_unplaceable(req, msg))
        kw: dict[str, Any] = {"threads": 0, "clock": self.clock, "monotonic": self.mono,
                              "retry_backoff_s": 0.0, "node_progress": False,
                              "resume_streams": False, "publish_timeout_s": 0.5}
        kw.update(dispatcher_kw)
        self.dispatcher = Dispatcher(self.queue, self.scheduler, self.cluster, self.hub, **kw)

    def submit(self, rid: str, *, model: str = MODEL, endpoint: str = "generate",
               stream: bool = False, listen: bool = True, **extra: Any) -> Any:
        body: dict[str, Any] = {"model": model, "stream": stream}
        if endpoint == "embed":
            body["input"] = extra.pop("input", "x")
        else:
            body["prompt"] = "hi"
        self.queue.enqueue({"id": rid, "kind": "sync", "endpoint": endpoint, "api": "ollama",
                            "model": model, "body": body, "stream": stream, **extra})
        return self.hub.open(rid) if listen else None

    def status_of(self, rid: str) -> str:
        rec = self.queue.get(rid)
        assert rec is not None
        return rec["status"]

    def close(self) -> None:
        self.dispatcher.stop(grace_s=0.0)
        self.db.close()


@pytest.fixture
def rig():
    made: list[Rig] = []

    def make(*args: Any, **kw: Any) -> Rig:
        r = Rig(*args, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()

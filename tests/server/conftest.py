"""Fixtures for the front door: real simulator + agent, real store, queue, hub and
cluster, and the app served by a real waitress on a loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import waitress

from olol.agent.agent import Agent, AgentConfig
from olol.cluster import ClusterManager
from olol.context import ProxyConfig, ProxyContext
from olol.hub import DONE, ResponseHub
from olol.keys import KeyStore
from olol.proxy import close_waitress
from olol.server import create_app
from olol.sim import Simulator
from olol.store import DatabaseManager
from tests import support
from tests.support import wait_until  # noqa: F401

MODELS = "llama3.2:1b,nomic-embed-text[embed]"


def make_sim(**overrides: Any) -> Simulator:
    return support.make_sim(**{"models": MODELS, **overrides})


@pytest.fixture(scope="session")
def sim():
    s = make_sim()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def agent(sim):
    a = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url)).start()
    yield a
    a.stop(0)


def build_ctx(nodes: list[str], *, queue_kw: dict | None = None, **config: Any) -> ProxyContext:
    """A context over a memory store, a real queue, hub and cluster (nodes polled once)."""
    from olol.queue import QueueManager

    clock = time.time
    db = DatabaseManager.memory(clock=clock)
    queue = QueueManager(db, clock=clock, **(queue_kw or {}))
    queue.recover()
    cluster = ClusterManager(db, clock=clock)
    for address in nodes:
        cluster.add_node(address)
        cluster.refresh(address, timeout=5.0)
    return ProxyContext(
        config=ProxyConfig(**config), db=db, queue=queue, hub=ResponseHub(), cluster=cluster,
        keys=KeyStore(db, clock), clock=clock,
    )


@dataclass
class Served:
    url: str
    ctx: ProxyContext


@contextmanager
def serve(ctx: ProxyContext, threads: int = 8) -> Iterator[Served]:
    """The front door on a real waitress server, in a named thread, stopped on exit."""
    app = create_app(ctx)
    server = waitress.create_server(
        app, host="127.0.0.1", port=0, threads=threads, channel_request_lookahead=1,
        ident="olol-test",
    )
    thread = threading.Thread(target=server.run, name="test-front-door", daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.effective_port}", ctx)
    finally:
        close_waitress(server, thread, timeout=2)
        ctx.cluster.close()
        ctx.db.close()


class ScriptedDispatcher:
    """Plays the dispatcher's part of the hub contract without a node: claims every
    pending request and publishes ``script(record)`` (a list of (kind, data, delay_s))
    to its channel. Lets tests drive exact event sequences through the front door."""

    def __init__(self, ctx: ProxyContext, script: Callable[[dict], list[tuple[str, Any, float]]]):
        self.ctx = ctx
        self.script = script
        self.claimed: list[dict] = []
        self.publish_results: list[bool] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-scripted-dispatcher",
                                        daemon=True)

    def __enter__(self) -> ScriptedDispatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.ctx.queue.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.ctx.queue.wait_for_work(timeout=0.2):
                continue
            for record in self.ctx.queue.dequeue(batch_size=8):
                self.claimed.append(record)
                delivered = True
                for kind, data, delay in self.script(record):
                    if self._stop.wait(delay):
                        return
                    ok = self.ctx.hub.publish(record["id"], kind, data, timeout=2.0)
                    self.publish_results.append(ok)
                    if not ok:
                        delivered = False
                        break
                if delivered:
                    self.ctx.queue.update_request_status(record["id"], "completed")


def generate_script(words: list[str], model: str = "llama3.2:1b"):
    """A generate stream: one chunk per word, then the final record."""
    def script(record: dict) -> list[tuple[str, Any, float]]:
        events: list[tuple[str, Any, float]] = [
            ("chunk", {"model": model, "created_at": "2024-01-01T00:00:00Z",
                       "response": w, "done": False}, 0.0)
            for w in words
        ]
        events.append((DONE, {"model": model, "created_at": "2024-01-01T00:00:00Z",
                              "response": "", "done": True, "done_reason": "stop",
                              "prompt_eval_count": 3, "eval_count": len(words)}, 0.0))
        return events
    return script

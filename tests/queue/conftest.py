"""Fixtures for the queue tests: a settable clock, both store kinds, request builders."""

from __future__ import annotations

from typing import Any

import pytest

from olol.api.validation import VALIDATORS
from olol.queue import QueueManager
from olol.store import DatabaseManager

START = 1_700_000_000.0


class FakeClock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self, start: float = START):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_request(
    model: str = "llama3.2:1b",
    endpoint: str = "generate",
    prompt: str = "hi",
    *,
    priority: int = 0,
    kind: str = "sync",
    options: dict | None = None,
    stream: bool = False,
    **extra: Any,
) -> dict:
    """A request as the front door builds it (keys from the real validators)."""
    body: dict[str, Any] = {"model": model, "stream": stream}
    if endpoint == "generate":
        body["prompt"] = prompt
    elif endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    elif endpoint == "embed":
        body["input"] = prompt
    else:
        body["prompt"] = prompt
    if options is not None:
        body["options"] = options
    v = VALIDATORS[endpoint](body)
    req = {
        "kind": kind, "endpoint": endpoint, "api": "ollama", "model": model,
        "model_key": v.normalized_model, "body": body, "stream": v.stream,
        "prompt": prompt, "priority": priority, "coalesce_key": v.coalesce_key,
        "batch_key": v.batch_key,
    }
    req.update(extra)
    return req


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "durable"])
def db(request, tmp_path, clock):
    """Every queue test runs against the in-memory and the durable store."""
    if request.param == "memory":
        store = DatabaseManager.memory(clock=clock)
    else:
        store = DatabaseManager(tmp_path / "data", clock=clock, background_checkpoints=False)
    yield store
    store.close()


@pytest.fixture
def make_queue(db, clock):
    def build(**kw: Any) -> QueueManager:
        kw.setdefault("clock", clock)
        return QueueManager(db, **kw)

    return build


@pytest.fixture
def q(make_queue) -> QueueManager:
    return make_queue()

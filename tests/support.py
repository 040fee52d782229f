"""Helpers shared by the test suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

DEFAULT_MODELS = "llama3.2:1b,nomic-embed-text[embed]"


class FakeClock:
    """A settable clock (seconds since the epoch) to inject where time matters."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Bounded polling: True as soon as ``predicate()`` holds, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def record_sim_calls(sim: Any, route: str = "embed", api: str = "native") -> list[dict | None]:
    """Record every call a started simulator's handler ``api.route`` receives
    (``"native"``/``"embed"`` is ``POST /api/embed``) and return the list of their
    JSON bodies, appended as calls arrive (``None`` for a body that is not JSON).

    Only that route is recorded: health polls and other traffic are not, unlike
    ``requests_total``. A call held by ``faults.hang_next`` is recorded once it is
    released, when the handler runs.
    """
    owner = getattr(sim, api)
    original = getattr(owner, route)
    bodies: list[dict | None] = []

    def recording(ex: Any, *args: Any) -> Any:
        try:
            body = ex.json()  # the exchange keeps the body: the handler reads it again
        except Exception:  # noqa: BLE001 - the handler answers the error itself
            body = None
        bodies.append(body)
        return original(ex, *args)

    setattr(owner, route, recording)
    return bodies


def make_sim(models: Any = DEFAULT_MODELS, port: int = 0, **overrides: Any):
    """A started simulator on loopback with no delays. ``models`` is a spec string or
    parsed specs; ``overrides`` set other SimConfig fields."""
    from olol.sim import SimConfig, Simulator, parse_models_spec

    cfg: dict[str, Any] = dict(
        models=parse_models_spec(models) if isinstance(models, str) else models, ttft=0.0, tokens_per_second=0.0, load_time=0.0,
        parallel=4, max_loaded=3, max_queue=512,
    )
    cfg.update(overrides)
    return Simulator(SimConfig(**cfg), host="127.0.0.1", port=port).start()

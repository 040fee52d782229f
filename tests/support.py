"""Helpers shared by the test suites."""

from __future__ import annotations

import time
from collections.abc import Callable


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

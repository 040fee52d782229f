"""Fault injection: failures, dropped streams and hangs, armed by tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    status: int
    error: str


class Faults:
    """Counters of pending faults. Each matching request consumes one unit.

    :param stop: the simulator's stop event (ends hangs).
    :param hang_limit: the longest a hung request blocks, in seconds.
    """

    def __init__(self, stop: threading.Event, hang_limit: float = 60.0):
        self._lock = threading.Lock()
        self._stop = stop
        self._release = threading.Event()
        self.hang_limit = hang_limit
        self._fail_n = 0
        self._fail = Failure(500, "simulated failure")
        self._drop_n = 0
        self._drop_after = 1
        self._hang_n = 0
        self._hanging = 0

    def fail_next(self, n: int = 1, status: int = 500, error: str = "simulated failure") -> None:
        """The next ``n`` inference/model requests answer ``status`` with ``{"error": error}``."""
        if not 400 <= int(status) <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._fail_n = max(0, int(n))
            self._fail = Failure(int(status), str(error))

    def drop_next_stream(self, n: int = 1, after_chunks: int = 1) -> None:
        """The next ``n`` streamed responses are cut (connection closed) after that many records."""
        with self._lock:
            self._drop_n = max(0, int(n))
            self._drop_after = max(0, int(after_chunks))

    def hang_next(self, n: int = 1) -> None:
        """The next ``n`` requests block until :meth:`release`, stop, or ``hang_limit``."""
        with self._lock:
            self._hang_n = max(0, int(n))
            self._release.clear()

    def release(self) -> None:
        """Let every hung request continue."""
        with self._lock:
            self._hang_n = 0
        self._release.set()

    def clear(self) -> None:
        """Disarm every fault and release hung requests."""
        with self._lock:
            self._fail_n = self._drop_n = 0
        self.release()

    def hanging(self) -> int:
        with self._lock:
            return self._hanging

    # -- consumed by the request handlers ---------------------------------------------

    def take_failure(self) -> Failure | None:
        with self._lock:
            if self._fail_n <= 0:
                return None
            self._fail_n -= 1
            return self._fail

    def take_drop(self) -> int | None:
        """Records after which to cut this stream, or None."""
        with self._lock:
            if self._drop_n <= 0:
                return None
            self._drop_n -= 1
            return self._drop_after

    def maybe_hang(self) -> None:
        with self._lock:
            if self._hang_n <= 0:
                return
            self._hang_n -= 1
            self._hanging += 1
        try:
            waited = 0.0
            while waited < self.hang_limit and not self._release.is_set():
                if self._stop.wait(0.05):
                    break
                waited += 0.05
        finally:
            with self._lock:
                self._hanging -= 1

    def apply(self, body: dict) -> None:
        """Apply a ``POST /_sim/faults`` body; raises ValueError on bad values."""
        def num(key: str, default: int) -> int:
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer")
            return value

        if body.get("clear"):
            self.clear()
        if body.get("release"):
            self.release()
        if "fail_next" in body:
            error = body.get("error", "simulated failure")
            if not isinstance(error, str):
                raise ValueError("error must be a string")
            self.fail_next(num("fail_next", 0), num("status", 500), error)
        if "drop_next_stream" in body:
            self.drop_next_stream(num("drop_next_stream", 0), num("after_chunks", 1))
        if "hang_next" in body:
            self.hang_next(num("hang_next", 0))

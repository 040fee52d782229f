"""One cluster-wide pull: per-node pull threads feeding one ordered progress stream.

A :class:`PullOperation` runs ``/api/pull`` on each target node through its agent, in
parallel, on named threads (the registry's semaphore bounds how many run at once). Every
node record is re-emitted, in arrival order, into one event log that all subscribers
read from the start (a late subscriber gets the replay), so everyone sees the same
complete, ordered stream. Records keep Ollama's shape (``status``, ``digest``,
``total``, ``completed``) and add:

* ``node``: the node the record comes from;
* ``node_completed`` / ``node_total``: that node's bytes over every digest seen so far;
* ``cluster_completed`` / ``cluster_total``: the same summed over all target nodes.

A node's own ``success`` becomes ``{"status": "node succeeded", "node": ...}`` and a
node's failure ``{"status": "node failed", "node": ..., "node_error": ...}`` (never an
``error`` key mid-stream: Ollama clients stop at the first one). The last record is
``{"status": "success", "nodes": [...]}`` when every target succeeded, else
``{"error": "...", "nodes": [...], "failed": {node: message}}``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: Events kept for replay; when exceeded the oldest *progress* records are dropped first.
MAX_EVENTS = 20_000


class PullOperation:
    """A running (or finished) pull of one model on some nodes.

    :ivar id: operation id (hex).
    :ivar model: the normalized model key.
    :ivar name: the name as requested (sent to the nodes).
    :ivar nodes: target node addresses, in placement order.
    """

    def __init__(self, model: str, name: str, nodes: list[str], *,
                 clock: Callable[[], float] = time.time, max_events: int = MAX_EVENTS) -> None:
        self.id = uuid.uuid4().hex
        self.model, self.name, self.nodes = model, name, list(nodes)
        self.clock = clock
        self.started_at = clock()
        self.finished_at: float | None = None
        self._on_finish: list[Callable[[PullOperation], None]] = []
        self._cond = threading.Condition()
        self._events: list[dict] = []
        self._base = 0  # absolute index of self._events[0]
        self._max_events = max(16, max_events)
        self._outcome: dict[str, dict] = {n: {"status": "pending"} for n in self.nodes}
        self._bytes: dict[str, dict[str, tuple[int, int]]] = {n: {} for n in self.nodes}
        self._streams: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self.stop_event = threading.Event()
        self.final: dict | None = None

    # -- reading ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.final is not None

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Every record from the first, in order, ending with the final record.

        ``timeout`` bounds the wait for the *next* record (None = until the operation
        ends); on expiry the iterator stops without a final record.
        """
        index = 0
        while True:
            with self._cond:
                if index < self._base:
                    index = self._base  # fell behind a trimmed log: continue from the oldest
                if index >= self._base + len(self._events):
                    if self.final is not None:
                        return
                    if not self._cond.wait(timeout if timeout is not None else 1.0):
                        if timeout is not None:
                            return
                    continue
                batch = self._events[index - self._base:]
                index += len(batch)
            yield from (dict(e) for e in batch)

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the end (at most ``timeout`` seconds); per node outcome:
        ``{"status": "success"}``, ``{"error": msg}`` or ``{"status": "pending"}``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.final is None:
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            return {n: dict(o) for n, o in self._outcome.items()}

    def outcome(self) -> dict:
        with self._cond:
            return {n: dict(o) for n, o in self._outcome.items()}

    def pending_nodes(self) -> list[str]:
        with self._cond:
            return [n for n, o in self._outcome.items() if o.get("status") == "pending"]

    def summary(self) -> dict:
        """JSON description for ``active_pulls`` and the admin API."""
        with self._cond:
            return {
                "id": self.id, "model": self.model, "name": self.name, "nodes": list(self.nodes),
                "started_at": self.started_at, "finished_at": self.finished_at,
                "outcome": {n: dict(o) for n, o in self._outcome.items()},
                "progress": {n: dict(zip(("completed", "total"), self._node_bytes(n),
                                         strict=True)) for n in self.nodes},
                "done": self.final is not None,
            }

    # -- writing (the registry's threads) --------------------------------------------

    def _node_bytes(self, node: str) -> tuple[int, int]:
        layers = self._bytes[node].values()
        return sum(c for c, _ in layers), sum(t for _, t in layers)

    def _append(self, record: dict) -> None:
        # Caller holds self._cond.
        self._events.append(record)
        if len(self._events) > self._max_events:
            drop = next((i for i, e in enumerate(self._events)
                         if "digest" in e and "completed" in e), 0)
            # Dropping a record shifts the later ones down by one: moving the base keeps
            # the absolute index of every later record (a reader before the dropped one
            # may see one record twice, never skip one).
            del self._events[drop]
            self._base += 1
        self._cond.notify_all()

    def publish(self, node: str, record: dict) -> None:
        """One record from ``node``'s pull stream."""
        out = {k: v for k, v in record.items() if k != "error"}
        with self._cond:
            if self.final is not None:
                return
            digest = record.get("digest")
            if isinstance(digest, str) and digest:
                total = int(record.get("total") or 0)
                completed = int(record.get("completed") or 0)
                prev = self._bytes[node].get(digest, (0, 0))
                self._bytes[node][digest] = (max(prev[0], completed), max(prev[1], total))
            if out.get("status") == "success":
                out["status"] = "node succeeded"
            out["node"] = node
            out["node_completed"], out["node_total"] = self._node_bytes(node)
            both = [self._node_bytes(n) for n in self.nodes]
            out["cluster_completed"] = sum(c for c, _ in both)
            out["cluster_total"] = sum(t for _, t in both)
            self._append(out)

    def node_finished(self, node: str, error: str | None) -> None:
        with self._cond:
            if self._outcome.get(node, {}).get("status") != "pending":
                return
            if error is None:
                self._outcome[node] = {"status": "success"}
            else:
                self._outcome[node] = {"error": error}
                if self.final is None:
                    self._append({"status": "node failed", "node": node, "node_error": error})

    def start_record(self, size: int | None) -> None:
        with self._cond:
            self._append({"status": "pulling manifest", "model": self.name,
                          "nodes": list(self.nodes), "size": size})

    def finish(self, error: str | None = None) -> dict:
        """Emit the final record (once) from the node outcomes, or ``error`` if given."""
        with self._cond:
            if self.final is not None:
                return self.final
            for node, o in self._outcome.items():
                if o.get("status") == "pending":
                    self._outcome[node] = {"error": error or "pull did not finish"}
            failed = {n: o["error"] for n, o in self._outcome.items() if "error" in o}
            final: dict[str, Any]
            if error is None and not failed:
                final = {"status": "success", "nodes": list(self.nodes)}
            else:
                detail = "; ".join(f"{n}: {m}" for n, m in failed.items())
                message = error or f"pull of {self.name} failed on {', '.join(failed)}"
                if detail and error is None:
                    message = f"{message} ({detail})"
                final = {"error": message, "nodes": list(self.nodes), "failed": failed}
            self.final = final
            self.finished_at = self.clock()
            self._append(dict(final))
        for listener in list(self._on_finish):
            try:
                listener(self)
            except Exception:  # a listener must not change the outcome
                log.exception("pull %s: finish listener failed", self.id)
        return final

    def on_finish(self, listener: Callable[[PullOperation], None]) -> None:
        """Call ``listener(self)`` once the final record is out (at once if it is)."""
        with self._cond:
            if self.final is None:
                self._on_finish.append(listener)
                return
        listener(self)

    def register_stream(self, node: str, stream: Any) -> None:
        with self._cond:
            self._streams[node] = stream
            cancelled = self.stop_event.is_set()
        if cancelled:
            stream.cancel()

    def cancel(self) -> None:
        """Stop every node pull (the node agents cancel their Ollama requests)."""
        self.stop_event.set()
        with self._cond:
            streams = list(self._streams.values())
        for stream in streams:
            try:
                stream.cancel()
            except Exception:  # noqa: BLE001 - best effort
                log.debug("cancelling a pull stream failed", exc_info=True)

    def join(self, timeout: float) -> bool:
        """Wait for the node threads (bounded); True when all have ended."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

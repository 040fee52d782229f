"""One coherent progress stream for a pull onto several nodes (``POST /api/pull``).

A :class:`~olol.registry.pulls.PullOperation` logs every node's records as they
arrive, so two nodes pulling the same layer interleave and a client's progress bar
would jump back and forth. :class:`CoherentProgress` folds that log into what one
Ollama would send:

* a layer's record is the **slowest node's** progress: ``completed`` is the least
  that any target node still pulling has of that layer (a node that has not started
  the layer counts 0), ``total`` the layer's size. Each node's own count only grows,
  and a node that leaves (fails) can only raise the least, so ``completed`` never goes
  back; a record is sent only when it changed;
* a record without a layer (``verifying sha256 digest``, ``writing manifest``...) is
  sent once, when every target node still pulling has reached it;
* a node that fails is reported at once by a record ``{"status": "node <address>
  failed: <message>", "node", "node_error"}`` (no ``error`` key: Ollama's clients stop
  at the first one, and the other nodes go on); the pull then ends with the
  operation's ``{"error": ...}`` record naming the failed nodes;
* the stream ends with exactly one final record: ``{"status": "success"}`` when every
  target node succeeded, else the error.

Extra fields for olol-aware clients (Ollama's ignore them): ``nodes_pulling`` (how many target
nodes are still pulling) and ``node_completed`` (each node's bytes of that layer).
The per-node log itself stays available on the admin API (``/olol/v1/models/pull``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class CoherentProgress:
    """Folds a pull operation's per-node records into one Ollama-shaped stream.

    :param nodes: the target nodes (None: taken from the ``pulling manifest`` record).
    """

    def __init__(self, nodes: Iterable[str] | None = None) -> None:
        self._nodes: list[str] = list(nodes or [])
        self._failed: set[str] = set()
        self._layers: dict[str, dict[str, tuple[int, int]]] = {}  # digest -> node -> (c, t)
        self._status: dict[str, str] = {}  # digest -> its status text
        self._sent: dict[str, int] = {}  # digest -> completed last sent
        self._reached: dict[str, set[str]] = {}  # layerless status -> nodes there
        self._said: set[str] = set()
        self._started = False

    def _live(self) -> list[str]:
        return [n for n in self._nodes if n not in self._failed]

    def feed(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The records to send for one record of the operation's log."""
        if "error" in record or record.get("status") == "success":
            return self._pending_statuses() + [record]  # the final record, unchanged
        status = record.get("status")
        if status == "pulling manifest" and "node" not in record:
            if not self._nodes and isinstance(record.get("nodes"), list):
                self._nodes = [str(n) for n in record["nodes"]]
            if self._started:
                return []
            self._started = True
            return [{"status": "pulling manifest", "nodes_pulling": len(self._live())}]
        node = record.get("node")
        if not isinstance(node, str):
            return []
        if node not in self._nodes:
            self._nodes.append(node)
        if status == "node failed":
            self._failed.add(node)
            error = str(record.get("node_error") or "failed")
            out = [{"status": f"node {node} failed: {error}", "node": node,
                    "node_error": error}]
            out.extend(self._changed_layers())
            return out + self._pending_statuses()
        if status == "node succeeded":
            return []
        digest = record.get("digest")
        if isinstance(digest, str) and digest:
            layer = self._layers.setdefault(digest, {})
            before = layer.get(node, (0, 0))
            layer[node] = (max(before[0], int(record.get("completed") or 0)),
                           max(before[1], int(record.get("total") or 0)))
            if isinstance(status, str):
                self._status.setdefault(digest, status)
            return self._layer_record(digest)
        if isinstance(status, str) and status:
            if status == "pulling manifest":
                return []  # a node's own start: the stream has said it once
            self._reached.setdefault(status, set()).add(node)
            return self._pending_statuses()
        return []

    def _layer_record(self, digest: str, force: bool = False) -> list[dict[str, Any]]:
        layer = self._layers[digest]
        live = self._live()
        if not live:
            return []
        total = max(t for _, t in layer.values())
        completed = min(layer.get(n, (0, 0))[0] for n in live)
        completed = max(completed, self._sent.get(digest, -1))
        if digest in self._sent and completed == self._sent[digest] and not force:
            return []
        self._sent[digest] = completed
        out: dict[str, Any] = {"status": self._status.get(digest, f"pulling {digest[7:19]}"),
                               "digest": digest, "total": total}
        if completed:
            out["completed"] = completed
        out["nodes_pulling"] = len(live)
        out["node_completed"] = {n: c for n, (c, _) in sorted(layer.items())}
        return [out]

    def _changed_layers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for digest in list(self._layers):
            out.extend(self._layer_record(digest))
        return out

    def _pending_statuses(self) -> list[dict[str, Any]]:
        live = set(self._live())
        out = []
        for status, reached in self._reached.items():
            if status not in self._said and live and live <= reached:
                self._said.add(status)
                out.append({"status": status})
        return out


def coherent(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """:class:`CoherentProgress` over a whole record stream."""
    view = CoherentProgress()
    for record in records:
        yield from view.feed(record)

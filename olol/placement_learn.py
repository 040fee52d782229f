"""What placement learns from what nodes report: load and service times per node×model.

An Ollama final record carries ``load_duration``, ``total_duration``,
``eval_count`` and ``eval_duration`` (nanoseconds). :class:`Timings` keeps, per
node×model, the seconds a load took (when the call loaded the model), the
seconds a call took without its load, and the generation rate (tokens/s), as
exponentially weighted averages; until a node×model has reported, the model's
figures on other nodes stand in, then the defaults.
"""

from __future__ import annotations

import math
import threading
from collections import ChainMap, OrderedDict
from collections.abc import Mapping
from typing import Any

# a load_duration below this is Ollama finding the model already loaded
MIN_LOAD_S = 0.05


def _seconds(record: Mapping[str, Any], key: str) -> float | None:
    ns = record.get(key)
    if isinstance(ns, bool) or not isinstance(ns, int | float) or not math.isfinite(ns) or ns <= 0:
        return None
    return float(ns) / 1e9


class Timings:
    """Learned load time, service time and generation rate per node×model.

    :param alpha: weight of a new observation.
    :param max_keys: bound on the node×model pairs kept (least recently noted go first).
    """

    def __init__(self, *, alpha: float = 0.3, max_keys: int = 65_536) -> None:
        self.alpha = alpha
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tables: dict[str, dict[str, dict[str, float]]] = {
            "load": {}, "service": {}, "rate": {}}  # kind -> node -> model -> value
        self._means: dict[str, dict[str, float]] | None = None
        self._views: dict[str, tuple[Mapping[str, float], Mapping[str, float]]] = {}
        self.version = 0  # bumped by every note (views of nodes are cached until then)

    def note(self, node: str, model: str, record: Any) -> None:
        """A call of ``model`` on ``node`` ended with ``record`` (its final record)."""
        if not isinstance(record, Mapping):
            return
        load = _seconds(record, "load_duration")
        total = _seconds(record, "total_duration")
        count = record.get("eval_count")
        eval_s = _seconds(record, "eval_duration")
        with self._lock:
            if load is not None and load >= MIN_LOAD_S:
                self._put("load", node, model, load)
            if total is not None:
                self._put("service", node, model, max(0.0, total - (load or 0.0)))
            if (eval_s is not None and isinstance(count, int | float)
                    and not isinstance(count, bool) and count > 0):
                self._put("rate", node, model, float(count) / eval_s)

    def _put(self, kind: str, node: str, model: str, value: float) -> None:
        row = self._tables[kind].setdefault(node, {})
        old = row.get(model)
        row[model] = value if old is None else old + self.alpha * (value - old)
        key = (node, model)
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.max_keys:
            (n, m), _ = self._keys.popitem(last=False)
            for table in self._tables.values():
                table.get(n, {}).pop(m, None)
        self._means = None
        self._views.clear()
        self.version += 1

    def _get(self, kind: str, node: str, model: str) -> float | None:
        with self._lock:
            return self._tables[kind].get(node, {}).get(model)

    def load_s(self, node: str, model: str) -> float | None:
        return self._get("load", node, model)

    def service_s(self, node: str, model: str) -> float | None:
        return self._get("service", node, model)

    def tokens_per_s(self, node: str, model: str) -> float | None:
        return self._get("rate", node, model)

    def for_node(self, node: str) -> tuple[Mapping[str, float], Mapping[str, float]]:
        """(load seconds by model, service seconds by model) for one node: its own
        figures, else the mean over the nodes that reported the model. Cached until
        the next :meth:`note`."""
        with self._lock:
            got = self._views.get(node)
            if got is not None:
                return got
            if self._means is None:
                self._means = {kind: _means(table) for kind, table in self._tables.items()}
            got = (ChainMap(dict(self._tables["load"].get(node, {})), self._means["load"]),
                   ChainMap(dict(self._tables["service"].get(node, {})),
                            self._means["service"]))
            self._views[node] = got
            return got


def _means(table: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row in table.values():
        for model, value in row.items():
            acc = sums.setdefault(model, [0.0, 0.0])
            acc[0] += value
            acc[1] += 1
    return {m: total / n for m, (total, n) in sums.items()}

"""Outlier detection, in the manner of Envoy's: eject a node×model that fails where
its peers succeed, for a growing interval, then re-admit it.

The dispatcher reports each inference call's outcome on a node for a model (a
*key*): a success, or a failure on the node's side (a 5xx from Ollama, a cut
stream, a missed first-record or stall deadline, a transport error). A failure
is a :class:`Ticket`. Whether it counts against the node is decided with care,
because a request can cause a 500 by itself (a wrongly typed option does, on
every node):

* it counts at once when other nodes are succeeding on the same model (their
  last outcome for it was a success, less than ``evidence_s`` ago);
* otherwise it is *pending*: counted when the same request then succeeds on
  another node (:meth:`OutlierDetector.confirm`), forgotten when it fails there
  alike (:meth:`OutlierDetector.retract`, which also cancels an ejection the
  failure caused).

A key is ejected (sent nothing) when its counted failures reach
``consecutive_failures`` in a row, or when its failure rate over its recent calls
is at least ``failure_rate`` while the other nodes serving the model, together,
fail at most half as often. The ejection lasts ``base_ejection_s`` times the
number of times the key was ejected (capped at ``max_ejection_s``; the count
goes down by one for every ``decay_s`` without an ejection). Then the key is
re-admitted on probation: one call at a time, and its first counted failure
ejects it again. At most ``max_ejected_fraction`` of the nodes serving a model
are ejected at once (always at least one of two or more; never the only one).

Between a failure and the next success, a key takes one call at a time; while a
failure of it is pending it is *held*: placed elsewhere when another node can
take the call. So a node that fails fast does not draw a burst of traffic while
the evidence comes in.

Nothing here talks to a node or runs a thread: state changes happen in the
callers' threads, re-admission is computed when a key is next looked at.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """One failure of one call on ``node`` for ``model``."""

    id: int
    node: str
    model: str
    ts: float
    counted: bool = False
    retracted: bool = False


@dataclass(frozen=True)
class ModelView:
    """What the scheduler must respect for one model, at one moment.

    ``ejected``: send nothing. ``held``: a failure is being checked; place
    elsewhere when possible. ``limited``: at most one call in flight (the last
    outcome was a failure, or the key is on probation after an ejection).
    """

    ejected: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    limited: frozenset[str] = frozenset()


EMPTY_VIEW = ModelView()


@dataclass
class _Key:
    consecutive: int = 0
    streak: list[int] = field(default_factory=list)  # tickets of the current run
    window: deque = field(default_factory=deque)  # (ts, ok, ticket id) of counted outcomes
    last_ok: bool | None = None
    last_ts: float = 0.0
    pending: dict[int, float] = field(default_factory=dict)  # ticket id -> ts
    ejected_until: float = 0.0
    ejected_by: set[int] = field(default_factory=set)
    ejections: int = 0
    quiet_since: float = 0.0
    probation: bool = False
    successes: int = 0
    failures: int = 0  # counted
    ejected_total: int = 0


class OutlierDetector:
    """Per node×model failure accounting and ejection (see the module docstring).

    :param clock: seconds (the cluster's clock); only differences are used.
    :param consecutive_failures: counted failures in a row that eject a key.
    :param base_ejection_s: first ejection's length; the n-th lasts n times this.
    :param max_ejection_s: cap on one ejection's length.
    :param failure_rate: failure share over the recent window that makes a key an
        outlier (when its peers fail at most half as often).
    :param rate_window: how many recent counted outcomes the rate looks at.
    :param rate_min_requests: outcomes needed, for the key and for its peers
        together, before a rate is judged.
    :param window_s: outcomes older than this leave the rate window.
    :param evidence_s: how recent a peer's success must be to count a failure at once.
    :param hold_s: longest a pending failure holds its key.
    :param max_ejected_fraction: most of a model's serving nodes ejected at once.
    :param decay_s: the ejection count goes down by one per this many seconds
        without an ejection.
    :param max_events: ejection and re-admission events kept for :meth:`events`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 consecutive_failures: int = 3, base_ejection_s: float = 5.0,
                 max_ejection_s: float = 20.0, failure_rate: float = 0.5,
                 rate_window: int = 20, rate_min_requests: int = 10, window_s: float = 60.0,
                 evidence_s: float = 30.0, hold_s: float = 5.0,
                 max_ejected_fraction: float = 0.5, decay_s: float = 60.0,
                 max_events: int = 256) -> None:
        if consecutive_failures < 1 or base_ejection_s <= 0 or max_ejection_s < base_ejection_s:
            raise ValueError("consecutive_failures must be >= 1 and "
                             "0 < base_ejection_s <= max_ejection_s")
        if not 0 < failure_rate <= 1 or not 0 <= max_ejected_fraction <= 1:
            raise ValueError("failure_rate must be in (0, 1], max_ejected_fraction in [0, 1]")
        self.clock = clock
        self.consecutive_failures = int(consecutive_failures)
        self.base_ejection_s = float(base_ejection_s)
        self.max_ejection_s = float(max_ejection_s)
        self.failure_rate = float(failure_rate)
        self.rate_window = max(1, int(rate_window))
        self.rate_min_requests = max(1, int(rate_min_requests))
        self.window_s = float(window_s)
        self.evidence_s = float(evidence_s)
        self.hold_s = float(hold_s)
        self.max_ejected_fraction = float(max_ejected_fraction)
        self.decay_s = float(decay_s)
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, _Key]] = {}
        self._tickets = itertools.count(1)
        self._events: deque[dict] = deque(maxlen=max(1, int(max_events)))
        # (event, node) -> how many times, since start (metrics read it at scrape time)
        self._counts: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------------ outcomes
    def success(self, node: str, model: str) -> None:
        """A call on ``node`` for ``model`` succeeded."""
        now = self.clock()
        with self._lock:
            key = self._key(node, model)
            self._readmit(node, model, key, now)
            key.consecutive = 0
            key.streak.clear()
            key.probation = False
            key.last_ok, key.last_ts = True, now
            key.successes += 1
            self._push(key, now, True, 0)

    def failure(self, node: str, model: str, peers: Iterable[str] | None = None,
                *, count: bool | None = None) -> Ticket:
        """A call on ``node`` for ``model`` failed on the node's side.

        :param peers: the nodes serving the model now (``node`` included or not);
            None: every node seen for it.
        :param count: True or False to decide; None (default): count when a peer is
            succeeding on the model, else leave the failure pending.
        """
        now = self.clock()
        with self._lock:
            keys = self._models.setdefault(model, {})
            key = self._key(node, model)
            self._readmit(node, model, key, now)
            ticket = Ticket(next(self._tickets), node, model, now)
            peer_set = self._peer_set(keys, node, peers)
            if count is None:
                count = any(
                    (other := keys.get(p)) is not None and other.last_ok
                    and now - other.last_ts <= self.evidence_s
                    for p in peer_set)
            key.last_ok, key.last_ts = False, now
            if count:
                self._count(key, ticket, keys, peer_set, now)
            else:
                key.pending[ticket.id] = now
            return ticket

    def confirm(self, ticket: Ticket, peers: Iterable[str] | None = None) -> None:
        """The request behind a pending failure then succeeded: count the failure."""
        now = self.clock()
        with self._lock:
            if ticket.counted or ticket.retracted:
                return
            keys = self._models.setdefault(ticket.model, {})
            key = self._key(ticket.node, ticket.model)
            key.pending.pop(ticket.id, None)
            self._readmit(ticket.node, ticket.model, key, now)
            self._count(key, ticket, keys, self._peer_set(keys, ticket.node, peers), now)

    def retract(self, ticket: Ticket) -> None:
        """The failure was the request's doing: forget it, and cancel an ejection it
        contributed to."""
        now = self.clock()
        with self._lock:
            if ticket.retracted:
                return
            ticket.retracted = True
            key = self._models.get(ticket.model, {}).get(ticket.node)
            if key is None:
                return
            key.pending.pop(ticket.id, None)
            if not ticket.counted:
                return
            key.failures -= 1
            key.window = deque(e for e in key.window if e[2] != ticket.id)
            if ticket.id in key.streak:
                key.streak.remove(ticket.id)
                key.consecutive = max(0, key.consecutive - 1)
            if ticket.id in key.ejected_by and key.ejected_until > now:
                key.ejected_until = 0.0
                key.ejected_by = set()
                key.ejections = max(0, key.ejections - 1)
                key.ejected_total -= 1
                key.probation = False
                self._event(now, "ejection-cancelled", ticket.node, ticket.model,
                            "the failure was the request's own")
                log.info("node %s re-admitted for %s: the failure that ejected it was the "
                         "request's own", ticket.node, ticket.model)

    # ------------------------------------------------------------------ queries
    def view(self, model: str) -> ModelView:
        """The ejected, held and limited nodes for ``model`` now."""
        now = self.clock()
        with self._lock:
            keys = self._models.get(model)
            if not keys:
                return EMPTY_VIEW
            ejected, held, limited = [], [], []
            for node, key in keys.items():
                self._readmit(node, model, key, now)
                if key.ejected_until > now:
                    ejected.append(node)
                    continue
                if key.pending and any(now - ts < self.hold_s for ts in key.pending.values()):
                    held.append(node)
                if key.probation or key.last_ok is False:
                    limited.append(node)
            if not (ejected or held or limited):
                return EMPTY_VIEW
            return ModelView(frozenset(ejected), frozenset(held), frozenset(limited))

    def is_ejected(self, node: str, model: str) -> bool:
        return node in self.view(model).ejected

    def ejected(self) -> dict[str, dict[str, float]]:
        """``{node: {model: until}}`` for every key ejected now (``until`` on the clock)."""
        now = self.clock()
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for model, keys in self._models.items():
                for node, key in keys.items():
                    self._readmit(node, model, key, now)
                    if key.ejected_until > now:
                        out.setdefault(node, {})[model] = key.ejected_until
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Every key's figures (for the admin API and the benchmarks)."""
        now = self.clock()
        rows = []
        with self._lock:
            for model, keys in sorted(self._models.items()):
                for node, key in sorted(keys.items()):
                    self._readmit(node, model, key, now)
                    rows.append({
                        "node": node, "model": model,
                        "ejected": key.ejected_until > now,
                        "ejected_until": key.ejected_until or None,
                        "probation": key.probation, "consecutive_failures": key.consecutive,
                        "successes": key.successes, "failures": key.failures,
                        "pending": len(key.pending), "ejections": key.ejected_total,
                    })
        return rows

    def events(self) -> list[dict[str, Any]]:
        """Recent ejections, re-admissions and cancelled ejections, oldest first."""
        with self._lock:
            return list(self._events)

    def event_counts(self) -> dict[tuple[str, str], int]:
        """``{(event, node): count}`` since start, for ``ejected``, ``readmitted`` and
        ``ejection-cancelled`` (the metrics' counters)."""
        with self._lock:
            return dict(self._counts)

    def forget_node(self, node: str) -> None:
        """The node left the cluster."""
        with self._lock:
            for keys in self._models.values():
                keys.pop(node, None)
            for pair in [p for p in self._counts if p[1] == node]:
                del self._counts[pair]

    # ------------------------------------------------------------------ internals
    def _key(self, node: str, model: str) -> _Key:
        keys = self._models.setdefault(model, {})
        key = keys.get(node)
        if key is None:
            key = keys[node] = _Key()
        return key

    @staticmethod
    def _peer_set(keys: dict[str, _Key], node: str, peers: Iterable[str] | None) -> set[str]:
        chosen = set(keys) if peers is None else set(peers)
        chosen.discard(node)
        return chosen

    def _push(self, key: _Key, now: float, ok: bool, ticket_id: int) -> None:
        window = key.window
        window.append((now, ok, ticket_id))
        while len(window) > self.rate_window or (window and now - window[0][0] > self.window_s):
            window.popleft()

    def _count(self, key: _Key, ticket: Ticket, keys: dict[str, _Key], peers: set[str],
               now: float) -> None:
        ticket.counted = True
        key.failures += 1
        key.consecutive += 1
        key.streak.append(ticket.id)
        self._push(key, now, False, ticket.id)
        if key.ejected_until > now:
            return  # a call placed before the ejection: nothing more to decide
        reason: str | None
        if key.probation:
            reason = "failed again after its re-admission"
        elif key.consecutive >= self.consecutive_failures:
            reason = f"{key.consecutive} failures in a row"
        else:
            reason = self._rate_outlier(key, keys, peers, now)
        if reason is None or not self._may_eject(keys, ticket.node, peers, now):
            return
        key.ejections = max(0, key.ejections - self._decay(key, now)) + 1
        length = min(self.max_ejection_s, self.base_ejection_s * key.ejections)
        key.ejected_until = now + length
        key.ejected_by = set(key.streak)
        key.ejected_total += 1
        key.probation = False
        self._event(now, "ejected", ticket.node, ticket.model, reason, length)
        log.warning("node %s ejected for %s for %.1f s: %s", ticket.node, ticket.model,
                    length, reason)

    def _decay(self, key: _Key, now: float) -> int:
        if not key.quiet_since or self.decay_s <= 0:
            return 0
        return int((now - key.quiet_since) // self.decay_s)

    def _rate_outlier(self, key: _Key, keys: dict[str, _Key], peers: set[str],
                      now: float) -> str | None:
        mine = [ok for ts, ok, _ in key.window if now - ts <= self.window_s]
        if len(mine) < self.rate_min_requests:
            return None
        rate = mine.count(False) / len(mine)
        if rate < self.failure_rate:
            return None
        theirs = [ok for p in peers if (other := keys.get(p)) is not None
                  for ts, ok, _ in other.window if now - ts <= self.window_s]
        if len(theirs) < self.rate_min_requests:
            return None
        their_rate = theirs.count(False) / len(theirs)
        if their_rate > rate / 2:
            return None
        return f"failure rate {rate:.0%} where its peers fail {their_rate:.0%}"

    def _may_eject(self, keys: dict[str, _Key], node: str, peers: set[str], now: float) -> bool:
        serving = peers | {node}
        if len(serving) < 2:
            return False  # the only node for the model: nothing better to send it to
        already = sum(1 for p in peers
                      if (other := keys.get(p)) is not None and other.ejected_until > now)
        allowed = max(1, int(len(serving) * self.max_ejected_fraction))
        return already + 1 <= allowed

    def _readmit(self, node: str, model: str, key: _Key, now: float) -> None:
        if key.ejected_until and now >= key.ejected_until:
            key.ejected_until = 0.0
            key.ejected_by = set()
            key.probation = True
            key.consecutive = 0
            key.streak.clear()
            key.window.clear()
            key.quiet_since = now
            self._event(now, "readmitted", node, model, "ejection over: on probation")
            log.info("node %s re-admitted for %s (on probation)", node, model)

    def _event(self, now: float, kind: str, node: str, model: str, detail: str,
               length: float | None = None) -> None:
        event = {"ts": now, "event": kind, "node": node, "model": model, "detail": detail}
        if length is not None:
            event["seconds"] = length
        self._events.append(event)
        self._counts[(kind, node)] += 1

"""The queue's RAM view of ``inference_queue``: entries, pending index, leases, counters.

Not thread-safe: :class:`~olol.queue.manager.QueueManager` holds its lock around
every call, and changes this view only after the store write it reflects.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

from olol.queue.index import PendingIndex
from olol.queue.records import ACTIVE, FINISHED, Entry
from olol.queue.stats import Finish, FinishLog
from olol.store.schema import QUEUE_STATUSES

log = logging.getLogger(__name__)


class QueueState:
    def __init__(self, ageing_s: float, finish_log_size: int):
        self.ageing_s = ageing_s
        self.finishes = FinishLog(finish_log_size)
        # on a shared store: this proxy's origin (records admitted elsewhere as sync
        # requests are foreign: counted, never claimed); None: one proxy, none foreign
        self.local_owner: str | None = None
        self.reset()

    def reset(self) -> None:
        self.entries: dict[str, Entry] = {}
        old = getattr(self, "index", None)  # a rebuilt index continues its version count
        self.index = PendingIndex(self.ageing_s, 0 if old is None else old.version + 1)
        self.processing: dict[str, Entry] = {}
        self.status_counts: Counter[str] = Counter()
        self.active_total = 0
        self.active_bytes = 0  # body bytes of pending + processing requests
        # finished sync records, oldest finish first (the queue keeps only so many)
        self.finished_sync: OrderedDict[str, Entry] = OrderedDict()
        self.active_by_model: Counter[str] = Counter()
        self.by_model_status: Counter[tuple[str, str]] = Counter()
        self.by_prio_status: Counter[tuple[int, str]] = Counter()
        self.finishes.clear()
        self.next_seq = 1

    def count(self, e: Entry, status: str, delta: int) -> None:
        _bump(self.status_counts, status, delta)
        if status in ACTIVE:
            self.active_total += delta
            self.active_bytes += delta * e.body_bytes
            _bump(self.active_by_model, e.model_key, delta)
            _bump(self.by_model_status, (e.model_key, status), delta)
            _bump(self.by_prio_status, (e.priority, status), delta)

    def apply(self, e: Entry, doc: dict, now: float) -> None:
        """Bring an entry in line with its record as just written.

        Ignored when RAM already holds a newer ``rev`` (two writers finished their
        store transactions in one order and reached this point in the other).
        """
        rev = doc.get("rev", 0)
        if rev <= e.rev:
            return
        old, new = e.status, doc["status"]
        self.index.remove(e)
        self.processing.pop(e.id, None)
        if old != new:
            self.count(e, old, -1)
            self.count(e, new, +1)
        e.status, e.rev = new, rev
        e.not_before = doc.get("not_before")
        e.lease_until = doc.get("lease_until")
        e.completed_ts = doc.get("completed_ts")
        e.claimed_by = doc.get("claimed_by")
        attempts = doc.get("attempts")
        if isinstance(attempts, int) and not isinstance(attempts, bool):
            e.attempts = attempts
        if new == "pending":
            self.index.add(e, now)
        elif new == "processing":
            self.processing[e.id] = e
        elif old not in FINISHED:
            e.body = None  # nothing can need it any more
            e.record = None
            if e.kind == "sync":
                self.finished_sync[e.id] = e
            finish = _finish_of(e, doc)
            if finish is not None:
                self.finishes.add(finish)

    def load(self, docs: Iterable[Any], now: float, seq_floor: int) -> None:
        """Replace everything with the view of ``docs`` (store Documents)."""
        self.reset()
        finishes = []
        finished_sync = []
        max_seq = 0
        for doc in sorted(docs, key=lambda d: (_int(d.get("seq")), d.doc_id)):
            if doc["id"] in self.entries:
                log.warning("inference_queue: duplicate id %s (doc %d) ignored",
                            doc["id"], doc.doc_id)
                continue
            e = Entry.from_doc(doc, doc.doc_id, seq=0, now=now)
            e.foreign = self.is_foreign(e)
            self.entries[e.id] = e
            self.count(e, e.status, +1)
            max_seq = max(max_seq, e.seq)
            if e.status == "pending":
                self.index.add(e, now)
            elif e.status == "processing":
                self.processing[e.id] = e
            else:
                if e.kind == "sync":
                    finished_sync.append(e)
                finish = _finish_of(e, doc)
                if finish is not None:
                    finishes.append(finish)
        for f in sorted(finishes, key=lambda f: f.ts):
            self.finishes.add(f)
        finished_sync.sort(key=lambda e: (e.completed_ts or e.enqueued_ts, e.seq))
        self.finished_sync.update((e.id, e) for e in finished_sync)
        self.next_seq = max(max_seq + 1, seq_floor, 1)

    def is_foreign(self, e: Entry) -> bool:
        return (self.local_owner is not None and e.kind == "sync"
                and e.owner != self.local_owner)

    def ingest(self, doc: Any, now: float) -> Entry:
        """Add the entry of a record another proxy wrote (shared store), unknown here."""
        e = Entry.from_doc(doc, doc.doc_id, seq=0, now=now)
        e.foreign = self.is_foreign(e)
        self.entries[e.id] = e
        self.count(e, e.status, +1)
        self.next_seq = max(self.next_seq, e.seq + 1)  # FIFO across proxies (Lamport)
        if e.status == "pending":
            self.index.add(e, now)
        elif e.status == "processing":
            self.processing[e.id] = e
        elif e.kind == "sync":
            self.finished_sync[e.id] = e
        return e

    def forget(self, e: Entry) -> None:
        self.finished_sync.pop(e.id, None)
        if self.entries.pop(e.id, None) is not None:
            self.index.remove(e)
            self.processing.pop(e.id, None)
            self.count(e, e.status, -1)

    def stats(self, now: float) -> dict[str, Any]:
        by_model: dict[str, dict[str, int]] = {}
        for (mkey, status), n in self.by_model_status.items():
            by_model.setdefault(mkey, {"pending": 0, "processing": 0})[status] = n
        by_prio: dict[int, dict[str, int]] = {}
        for (prio, status), n in self.by_prio_status.items():
            by_prio.setdefault(prio, {"pending": 0, "processing": 0})[status] = n
        oldest = self.index.oldest_enqueued_ts()
        out = {
            "depth": self.active_total,
            "pending": self.status_counts["pending"],
            "processing": self.status_counts["processing"],
            "ready": self.index.ready_count,
            "delayed": self.index.delayed_count,
            "by_status": {s: self.status_counts[s] for s in QUEUE_STATUSES},
            "by_model": dict(sorted(by_model.items())),
            # JSON object keys are strings; highest priority first.
            "by_priority": {str(p): v for p, v in sorted(by_prio.items(), reverse=True)},
            "oldest_pending_age_s": None if oldest is None else max(0.0, now - oldest),
        }
        out.update(self.finishes.summary(now))
        return out


def _finish_of(e: Entry, doc: Any) -> Finish | None:
    started, done = doc.get("started_ts"), doc.get("completed_ts")
    if not isinstance(started, (int, float)) or not isinstance(done, (int, float)):
        return None  # never dispatched: it finished in the queue
    return Finish(done, e.model_key, e.status, started - e.enqueued_ts, done - started)


def _bump(counter: Counter, key: Any, delta: int) -> None:
    value = counter[key] + delta
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

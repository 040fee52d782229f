"""Start-up repair and periodic upkeep of the queue (a collaborator of ``QueueManager``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from olol.interfaces import Store
from olol.queue.records import ACTIVE, FINISHED, LEASE_ERROR, RESTART_ERROR, TABLE
from olol.queue.state import QueueState
from olol.store.database import iso_utc

SEQ_FLOOR_KEY = "queue.next_seq"
CLEAN_CHUNK = 1_000
RECOVER_CHUNK = 500


class Transition(Protocol):
    """The queue's check-and-write of one record (``QueueManager._transition``)."""

    def __call__(self, request_id: str, allowed: Iterable[str],
                 make_patch: Callable[[dict, float], dict | None], usage: dict | None = None,
                 *, any_claim: bool = False) -> dict | None: ...


class QueueMaintenance:
    """Start-up repair and periodic upkeep of one queue: a collaborator of
    :class:`~olol.queue.manager.QueueManager`, which builds it with what it works on
    (the store, the RAM state and the lock that guards it, the clock) and the queue's
    own steps it calls back (rebuild the RAM indexes, check-and-write one record, wake
    waiting threads). The queue's tunables (lease, retention, attempts) are passed by
    the queue on each call, so run-time changes of them apply at once."""

    def __init__(self, db: Store, state: QueueState, cond: threading.Condition, *,
                 clock: Callable[[], float], rebuild: Callable[[], None],
                 transition: Transition, signal: Callable[[bool], None]) -> None:
        self.db = db
        self._s = state
        self._cond = cond  # its lock is the queue's lock
        self.clock = clock
        self._rebuild = rebuild
        self._transition = transition
        self._signal = signal

    # ------------------------------------------------------------------ start-up
    def recover(self, max_attempts: int | None) -> dict[str, int]:
        """What :meth:`QueueManager.recover` does; ``max_attempts``: claims after which
        a job that was processing fails instead of going back to pending."""
        now = self.clock()
        interrupted = requeued = failed = 0
        changes: list[tuple[int, dict]] = []
        for doc in self.db.all(TABLE):
            status, rev = doc.get("status"), rev_of(doc)
            if status in ACTIVE and doc.get("kind") != "job":
                interrupted += 1
                changes.append((doc.doc_id, finish_patch("interrupted", now, RESTART_ERROR)
                                | {"rev": rev + 1}))
            elif status == "processing" and _out_of_attempts(doc, max_attempts):
                failed += 1
                attempts = int(doc.get("attempts") or 0)
                patch = finish_patch("failed", now, f"{RESTART_ERROR} {attempts} times while "
                                     "this job was running; it is not run again")
                changes.append((doc.doc_id, patch | {"error_status": 500, "body": None,
                                                     "rev": rev + 1}))
            elif status == "processing":
                requeued += 1
                changes.append((doc.doc_id, pending_patch(None) | {"rev": rev + 1}))
        for i in range(0, len(changes), RECOVER_CHUNK):
            with self.db.transaction():
                for doc_id, patch in changes[i:i + RECOVER_CHUNK]:
                    self.db.update(TABLE, patch, doc_id)
        self._rebuild()
        with self._cond:
            self._signal(True)
            return {
                "interrupted": interrupted,
                "requeued": requeued,
                "failed": failed,
                "pending": len(self._s.index),
                "total": len(self._s.entries),
            }

    def extend_lease(self, request_id: str, lease: float) -> bool:
        """Push a processing request's lease to ``now + lease`` (long streams)."""
        positive("lease_s", lease)
        return self._transition(
            request_id, ("processing",), lambda doc, now: {"lease_until": now + lease}
        ) is not None

    def return_expired_leases(self) -> int:
        """Processing requests whose lease has passed: jobs -> pending (at-least-once),
        sync -> interrupted. Returns how many were changed."""
        now = self.clock()
        with self._cond:
            expired = [e.id for e in self._s.processing.values()
                       if e.lease_until is not None and e.lease_until <= now]

        def patch(doc: dict, now: float) -> dict | None:
            lease = doc.get("lease_until")
            if lease is not None and lease > now:
                return None  # renewed meanwhile
            if doc.get("kind") == "job":
                return pending_patch(None) | {"error": LEASE_ERROR}
            return finish_patch("interrupted", now, LEASE_ERROR)

        # any proxy's claim: on a shared store a lease that ran out is taken back by
        # whichever proxy sees it (its claimer, alive, would have renewed it)
        return sum(self._transition(rid, ("processing",), patch, any_claim=True) is not None
                   for rid in expired)


    # ------------------------------------------------------------------ maintenance
    def clean_old_requests(self, hours: float) -> int:
        """Remove finished records (completed/failed/interrupted/cancelled) that
        finished more than ``hours`` ago, in chunks. Pending and processing records are
        never removed."""
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
            raise ValueError("max_age_hours must be a non-negative number")
        cutoff = self.clock() - hours * 3600.0
        with self._cond:
            victims = [e for e in self._s.entries.values() if e.status in FINISHED
                       and e.doc_id >= 0
                       and (e.completed_ts if e.completed_ts is not None
                            else e.enqueued_ts) < cutoff]
        removed = 0
        for i in range(0, len(victims), CLEAN_CHUNK):
            chunk = victims[i:i + CLEAN_CHUNK]
            # Finished states are final, so these cannot have changed meanwhile.
            removed += len(self.db.remove(TABLE, [e.doc_id for e in chunk]))
            with self._cond:
                for e in chunk:
                    self._s.forget(e)
        if removed:
            # Keep seq monotonic across restarts even when the newest rows are gone.
            with self._cond:
                floor = self._s.next_seq
            self.db.upsert("config", {"key": SEQ_FLOOR_KEY, "value": floor},
                           {"key": SEQ_FLOOR_KEY})
        return removed


def _out_of_attempts(doc: dict, limit: int | None) -> bool:
    return limit is not None and int(doc.get("attempts") or 0) >= limit


def positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"QueueManager: {name} must be a positive number, got {value!r}")


def int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def rev_of(doc: Any) -> int:
    return int_or_zero(doc.get("rev"))


def finish_patch(status: str, now: float, error: str | None) -> dict:
    return {"status": status, "completed_at": iso_utc(now), "completed_ts": now,
            "lease_until": None, "error": error}


def pending_patch(not_before: float | None) -> dict:
    return {"status": "pending", "not_before": not_before, "lease_until": None,
            "server_assigned": None, "batch_id": None, "started_at": None,
            "started_ts": None, "claimed_by": None}

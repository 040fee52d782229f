"""Start-up repair and periodic upkeep of the queue (a part of ``QueueManager``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from olol.queue.records import ACTIVE, FINISHED, LEASE_ERROR, RESTART_ERROR, TABLE
from olol.queue.state import QueueState
from olol.store.database import iso_utc

SEQ_FLOOR_KEY = "queue.next_seq"
CLEAN_CHUNK = 1_000
RECOVER_CHUNK = 500


class QueueMaintenance:
    """Mixed into :class:`~olol.queue.manager.QueueManager`; uses its store, lock and
    RAM state, and its check-and-write ``_transition``."""

    db: Any
    clock: Callable[[], float]
    lease_s: float
    retention_hours: float
    _lock: threading.RLock
    _cond: threading.Condition
    _s: QueueState
    _rebuild: Callable[[], None]
    _transition: Callable[..., dict | None]
    _signal: Callable[..., None]

    # ------------------------------------------------------------------ start-up
    def recover(self) -> dict[str, int]:
        """Start-up repair: call once, before the front door and dispatchers run.

        Sync requests that were pending or processing had an HTTP caller that is
        gone: they become ``interrupted`` (never silently re-run); one whose
        admission never reached the disk (it does not wait for its journal sync) is
        simply absent. Jobs that were processing go back to ``pending``
        (at-least-once), unless they have used ``max_attempts`` claims: then they
        fail (a job that takes the proxy down is not run forever); pending jobs
        stay. Then the RAM indexes are rebuilt from the store.
        """
        now = self.clock()
        interrupted = requeued = failed = 0
        changes: list[tuple[int, dict]] = []
        for doc in self.db.all(TABLE):
            status, rev = doc.get("status"), rev_of(doc)
            if status in ACTIVE and doc.get("kind") != "job":
                interrupted += 1
                changes.append((doc.doc_id, finish_patch("interrupted", now, RESTART_ERROR)
                                | {"rev": rev + 1}))
            elif status == "processing" and self._out_of_attempts(doc):
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
            self._signal(everyone=True)
            return {
                "interrupted": interrupted,
                "requeued": requeued,
                "failed": failed,
                "pending": len(self._s.index),
                "total": len(self._s.entries),
            }

    def _out_of_attempts(self, doc: dict) -> bool:
        limit = getattr(self, "max_attempts", None)
        return limit is not None and int(doc.get("attempts") or 0) >= limit

    def extend_lease(self, request_id: str, lease_s: float | None = None) -> bool:
        """Push a processing request's lease to ``now + lease_s`` (long streams)."""
        lease = self.lease_s if lease_s is None else lease_s
        positive("lease_s", lease)
        return self._transition(
            request_id, ("processing",), lambda doc, now: {"lease_until": now + lease}
        ) is not None

    def return_expired_leases(self) -> int:
        """Processing requests whose lease has passed: jobs -> pending (at-least-once),
        sync -> interrupted. Returns how many were changed."""
        now = self.clock()
        with self._lock:
            expired = [e.id for e in self._s.processing.values()
                       if e.lease_until is not None and e.lease_until <= now]

        def patch(doc: dict, now: float) -> dict | None:
            lease = doc.get("lease_until")
            if lease is not None and lease > now:
                return None  # renewed meanwhile
            if doc.get("kind") == "job":
                return pending_patch(None) | {"error": LEASE_ERROR}
            return finish_patch("interrupted", now, LEASE_ERROR)

        return sum(self._transition(rid, ("processing",), patch) is not None for rid in expired)


    # ------------------------------------------------------------------ maintenance
    def clean_old_requests(self, max_age_hours: float | None = None) -> int:
        """Remove finished records (completed/failed/interrupted/cancelled) that
        finished more than ``max_age_hours`` ago (default: ``retention_hours``), in
        chunks. Pending and processing records are never removed."""
        hours = self.retention_hours if max_age_hours is None else max_age_hours
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
            raise ValueError("max_age_hours must be a non-negative number")
        cutoff = self.clock() - hours * 3600.0
        with self._lock:
            victims = [e for e in self._s.entries.values() if e.status in FINISHED
                       and e.doc_id >= 0
                       and (e.completed_ts if e.completed_ts is not None
                            else e.enqueued_ts) < cutoff]
        removed = 0
        for i in range(0, len(victims), CLEAN_CHUNK):
            chunk = victims[i:i + CLEAN_CHUNK]
            # Finished states are final, so these cannot have changed meanwhile.
            removed += len(self.db.remove(TABLE, [e.doc_id for e in chunk]))
            with self._lock:
                for e in chunk:
                    self._s.forget(e)
        if removed:
            # Keep seq monotonic across restarts even when the newest rows are gone.
            with self._lock:
                floor = self._s.next_seq
            self.db.upsert("config", {"key": SEQ_FLOOR_KEY, "value": floor},
                           {"key": SEQ_FLOOR_KEY})
        return removed


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
            "started_ts": None}

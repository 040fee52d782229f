"""``QueueManager``: the durable priority queue of inference requests (roadmap 4.2).

The store's ``inference_queue`` table is the truth; this object keeps RAM
indexes over it (pending order per model and global, ``id -> doc_id``, leases,
counters) so that the hot path never scans the table.

Concurrency: the queue's own lock guards only RAM and is never held across a
store write (whose fsync would serialise every thread behind it). Each write is
a store transaction that re-reads the record, checks its status and bumps its
``rev``; RAM is then updated under the lock, and an update older than what RAM
already holds is dropped. Claims first take their entries out of the pending
index under the lock, so no two callers can ever claim the same request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from olol.ids import new_id
from olol.queue.grouping import group_similar
from olol.queue.maintenance import (
    SEQ_FLOOR_KEY,
    QueueMaintenance,
    finish_patch,
    int_or_zero,
    pending_patch,
    positive,
    rev_of,
)
from olol.queue.records import (
    ACTIVE,
    FINISHED,
    TABLE,
    Entry,
    QueueFullError,
    build_record,
    model_key_of,
)
from olol.queue.state import QueueState
from olol.store.database import iso_utc
from olol.store.schema import QUEUE_STATUSES

if TYPE_CHECKING:
    from olol.interfaces import Store

MAX_BATCH = 1_000
MAX_DELAY_S = 86_400.0
#: Longer strings are no request id (ids are 32 hex digits): not looked up in the store.
MAX_ID_CHARS = 64

log = logging.getLogger(__name__)

Patch = Callable[[dict, float], dict | None]


class QueueManager:
    """Durable, thread-safe priority queue over ``db``'s ``inference_queue`` table.

    :param db: the :class:`~olol.store.DatabaseManager`.
    :param clock: returns the current time in seconds (injected for tests).
    :param max_depth: bound on pending + processing requests of all models.
    :param max_depth_per_model: the same bound for one model.
    :param lease_s: how long a claim stays valid without news from the dispatcher.
    :param ageing_s: a request waiting this long gains one priority level.
    :param retention_hours: default age of finished records :meth:`clean_old_requests` drops.
    :param max_queued_bytes: bound on the body bytes (as received) of pending +
        processing requests: the RAM the queue may hold on behalf of its callers.
    :param max_finished_sync: finished sync records kept (newest); older ones are
        removed as new ones finish. They are history only: nothing re-runs them.
    """

    def __init__(
        self,
        db: Store,
        *,
        clock: Callable[[], float] = time.time,
        max_depth: int = 10_000,
        max_depth_per_model: int = 2_000,
        lease_s: float = 600.0,
        ageing_s: float = 60.0,
        retention_hours: float = 24.0,
        finish_log_size: int = 5_000,
        max_attempts: int | None = None,
        max_queued_bytes: int = 1 << 30,
        max_finished_sync: int = 2_000,
        gone_after_s: float = 15.0,
    ):
        for name, value in (("max_depth", max_depth), ("max_depth_per_model", max_depth_per_model),
                            ("lease_s", lease_s), ("ageing_s", ageing_s),
                            ("retention_hours", retention_hours),
                            ("finish_log_size", finish_log_size),
                            ("max_queued_bytes", max_queued_bytes),
                            ("max_finished_sync", max_finished_sync)):
            positive(name, value)
        self.db = db
        self.clock = clock
        self.max_depth = int(max_depth)
        self.max_depth_per_model = int(max_depth_per_model)
        self.lease_s = float(lease_s)
        self.ageing_s = float(ageing_s)
        self.retention_hours = float(retention_hours)
        self.max_queued_bytes = int(max_queued_bytes)
        self.max_finished_sync = int(max_finished_sync)
        self._trimming = False  # one thread at a time trims finished sync records
        # a job claimed this many times is failed by recover() instead of run again
        self.max_attempts = None if max_attempts is None else max(1, int(max_attempts))
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._s = QueueState(self.ageing_s, int(finish_log_size))
        self._generation = 0  # bumped by events every waiting thread must see
        self._seen = threading.local()  # per thread: the generation it last returned at
        self._news = False  # an event happened that no thread has looked at since
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._finish_listeners: list[Callable[[dict], None]] = []
        # Several proxies on one shared store (PostgreSQL): each keeps this RAM view
        # and hears the others' writes through the store's change feed; claims lock
        # the rows, so no request is ever claimed twice. ``owner`` is this proxy's id
        # in the records it admits and claims.
        self.shared = bool(getattr(db, "shared", False))
        self.owner = str(getattr(db, "origin", None) or "local")
        #: how long another proxy must look gone before its work is taken back
        self.gone_after_s = float(gone_after_s)
        self._missing: dict[str, float] = {}  # proxy -> when first seen missing
        self._writer: Any = None  # writes final records of RAM-only requests, made lazily
        if self.shared:
            self._s.local_owner = self.owner
        self._upkeep = QueueMaintenance(db, self._s, self._cond, clock=clock,
                                        rebuild=self._rebuild, transition=self._transition,
                                        signal=self._signal)
        self._rebuild()
        if self.shared:
            db.watch(TABLE, self._on_change)

    def _rebuild(self) -> None:
        """Rebuild every RAM index from the store (the store is the truth)."""
        now = self.clock()
        docs = self.db.all(TABLE)
        floor = self.db.search_one("config", {"key": SEQ_FLOOR_KEY})
        floor_value = floor["value"] if floor and isinstance(floor["value"], int) else 1
        with self._lock:
            self._s.load(docs, now, floor_value)

    # ------------------------------------------------------------------ upkeep
    def recover(self) -> dict[str, int]:
        """Start-up repair: call once, before the front door and dispatchers run.

        Sync requests that were pending or processing had an HTTP caller that is
        gone: they become ``interrupted`` (never silently re-run); one whose
        admission never reached the disk (it does not wait for its journal sync) is
        simply absent. Jobs that were processing go back to ``pending``
        (at-least-once), unless they have used ``max_attempts`` claims: then they
        fail (a job that takes the proxy down is not run forever); pending jobs
        stay. Then the RAM indexes are rebuilt from the store.

        On a shared store the records of the proxies still alive are theirs: only
        those whose proxy is gone (this one's previous life included) are repaired,
        each under its row lock (:meth:`sweep_stopped_proxies`).
        """
        if not self.shared:
            return self._upkeep.recover(self.max_attempts)
        self._rebuild()
        swept = self.sweep_stopped_proxies()
        with self._cond:
            self._signal(True)
            return {**swept, "pending": len(self._s.index), "total": len(self._s.entries)}

    def extend_lease(self, request_id: str, lease_s: float | None = None) -> bool:
        """Push a processing request's lease to ``now + lease_s`` (default: the
        queue's ``lease_s``; long streams)."""
        return self._upkeep.extend_lease(request_id, self.lease_s if lease_s is None
                                         else lease_s)

    def return_expired_leases(self) -> int:
        """Processing requests whose lease has passed: jobs -> pending (at-least-once),
        sync -> interrupted. On a shared store, also what stopped proxies held
        (:meth:`sweep_stopped_proxies`). Returns how many were changed."""
        n = self._upkeep.return_expired_leases()
        if self.shared:
            n += sum(self.sweep_stopped_proxies().values())
        return n

    def sweep_stopped_proxies(self) -> dict[str, int]:
        """Shared store: repair what proxies that stopped held, as :meth:`recover` does
        after a restart: their claimed jobs go back to pending (or fail after
        ``max_attempts`` claims), and sync requests of theirs still active in the store
        (only an older olol wrote those: sync requests now live in their proxy's RAM)
        become ``interrupted``. A proxy is alive while its store session is
        (:meth:`PostgresStore.owners_alive`); one missing for ``gone_after_s`` in a row
        is taken for stopped."""
        out = {"interrupted": 0, "requeued": 0, "failed": 0}
        if not self.shared:
            return out
        with self._lock:
            held = [(e.id, self.responsible({"status": e.status, "kind": e.kind,
                                             "claimed_by": e.claimed_by, "owner": e.owner}))
                    for e in self._s.entries.values() if e.status in ACTIVE]
        owners = {who for _, who in held if who is not None and who != self.owner}
        if not owners:
            with self._lock:
                self._missing.clear()
            return out
        now = self.clock()
        seen_alive = set(self.db.owners_alive(owners))
        # A proxy looks gone while its store session reconnects (a database restart):
        # only one missing for ``gone_after_s`` in a row is taken for stopped.
        with self._lock:  # two jobs may sweep at once (queue-leases, registry-sync)
            for who in list(self._missing):
                if who in seen_alive or who not in owners:
                    del self._missing[who]
            for who in owners - seen_alive:
                self._missing.setdefault(who, now)
            alive = {self.owner, *seen_alive, *(who for who, since in self._missing.items()
                                               if now - since < self.gone_after_s)}
        limit = self.max_attempts
        now_error = "interrupted: the proxy that held this request stopped"
        kinds: dict[str, str] = {}

        def patch(doc: dict, now: float) -> dict | None:
            who = self.responsible(doc)
            if who is None or who in alive:
                return None  # taken over meanwhile
            if doc.get("kind") != "job":
                kinds[doc["id"]] = "interrupted"
                return finish_patch("interrupted", now, now_error)
            attempts = int_or_zero(doc.get("attempts"))
            if limit is not None and attempts >= limit:
                kinds[doc["id"]] = "failed"
                return finish_patch("failed", now, f"{now_error} {attempts} times while this "
                                    "job was running; it is not run again") | {
                                        "error_status": 500}
            kinds[doc["id"]] = "requeued"
            return pending_patch(None) | {"claimed_by": None}

        for rid, holder in held:
            if holder is not None and holder not in alive:
                self._transition(rid, ACTIVE, patch, any_claim=True)
        for kind in kinds.values():
            out[kind] += 1
        if out["requeued"]:
            log.warning("queue: %d jobs of stopped proxies returned to the queue",
                        out["requeued"])
        return out

    def clean_old_requests(self, max_age_hours: float | None = None) -> int:
        """Remove finished records (completed/failed/interrupted/cancelled) that
        finished more than ``max_age_hours`` ago (default: ``retention_hours``), in
        chunks. Pending and processing records are never removed."""
        return self._upkeep.clean_old_requests(self.retention_hours if max_age_hours is None
                                               else max_age_hours)

    # ------------------------------------------------------------------ admission
    def enqueue(self, request: dict, *, wake: bool = True) -> tuple[str, int]:
        """Admit a request.

        ``wake=False`` wakes no dispatcher thread: the caller means to claim the
        request itself (:meth:`is_next`) and must call ``notify(everyone=False)``
        if it does not.

        A job (``kind="job"``) is durable when this returns. A sync request is
        journaled but does not wait for the sync: it becomes durable with the next
        write that waits, and a crash before that loses it, which nobody notices
        (its caller's connection dies with the proxy).

        :returns: ``(id, position)``: position is the 1-based place in dispatch order
            among the claimable pending requests of all models at admission.
        :raises ValueError: the record is malformed or its id is already queued.
        :raises QueueFullError: ``max_depth`` or ``max_depth_per_model`` reached.
        """
        record = build_record(request, seq=0, now=0.0)
        record["owner"] = self.owner
        rid, model_key = record["id"], record["model_key"]
        sync = record["kind"] != "job"
        with self._lock:
            if rid in self._s.entries:
                raise ValueError(f"queue request: id {rid!r} is already in the queue")
            now = self.clock()  # read under the lock: admission time follows seq
            self._check_capacity(model_key, now, record["body_bytes"])
            record["enqueued_ts"] = now
            record["seq"] = self._s.next_seq
            self._s.next_seq += 1
            e = Entry(id=rid, doc_id=-1, kind=record["kind"], endpoint=record["endpoint"],
                      model_key=model_key, priority=record["priority"], seq=record["seq"],
                      enqueued_ts=now, status="pending", batch_key=record["batch_key"],
                      coalesce_key=record["coalesce_key"], body_bytes=record["body_bytes"],
                      owner=self.owner)
            if sync:
                # A sync request's body stays in RAM only: it is never re-run after a
                # restart, so the journal and the snapshot need not carry it.
                e.body = record.pop("body")
                if self.shared:
                    # Shared store: another proxy can never run it (its body and its
                    # caller are here), so it lives in RAM, and its record is written
                    # once, when it finishes (as history).
                    e.record = dict(record)
            self._s.entries[rid] = e  # reserves the id and the capacity
            self._s.count(e, "pending", +1)
        if e.record is not None:
            with self._cond:
                pos = self._s.index.add(e, now)
                if wake:
                    self._signal()
                return rid, (pos if pos is not None else len(self._s.index)) + 1
        try:
            # A sync request does not wait for its journal sync: its caller waits on
            # an open connection that dies with the proxy, and recovery marks it
            # interrupted anyway. If the proxy dies before the line is on disk the
            # record simply never existed; the journal survives only as a prefix, so
            # no later synced line (its claim, its completion, a job) can be on disk
            # without it. A job's id is handed back for fetching later: it waits.
            doc_id = self.db.insert(TABLE, record, wait=not sync)
        except BaseException:
            with self._lock:
                self._s.entries.pop(rid, None)
                self._s.count(e, "pending", -1)
            raise
        with self._cond:
            e.doc_id = doc_id
            if e.status == "pending" and e.rev == 0:
                pos = self._s.index.add(e, now)
                if wake:
                    self._signal()
            else:
                pos = None
            return rid, (pos if pos is not None else len(self._s.index)) + 1

    def _check_capacity(self, model_key: str, now: float, body_bytes: int = 0) -> None:
        held = self._s.active_bytes
        if held > 0 and held + body_bytes > self.max_queued_bytes:
            raise QueueFullError(
                self._s.finishes.retry_after(now, max(1, self.max_depth // 100)),
                f"the queue is full: its requests hold {held} bytes of bodies "
                f"(limit {self.max_queued_bytes})",
            )
        if self._s.active_total >= self.max_depth:
            raise QueueFullError(
                self._s.finishes.retry_after(now, max(1, self.max_depth // 100)),
                f"the queue is full: {self._s.active_total} requests waiting or running "
                f"(limit {self.max_depth})",
            )
        if self._s.active_by_model[model_key] >= self.max_depth_per_model:
            raise QueueFullError(
                self._s.finishes.retry_after(now, max(1, self.max_depth_per_model // 100),
                                           model_key),
                f"the queue for model {model_key!r} is full: "
                f"{self._s.active_by_model[model_key]} requests waiting or running "
                f"(limit {self.max_depth_per_model})",
            )

    # ------------------------------------------------------------------ claiming
    def dequeue(
        self,
        batch_size: int = 1,
        model: str | None = None,
        *,
        ids: Iterable[str] | None = None,
        server: str | None = None,
        batch_id: str | None = None,
        lease_s: float | None = None,
    ) -> list[dict]:
        """Claim pending requests atomically (one store transaction).

        Highest effective priority first, FIFO within a priority; ``model`` keeps one
        model's requests; ``ids`` claims exactly those that are still claimable (in
        the order given). Claimed records become ``processing`` with a lease,
        ``attempts + 1``, ``started_at``, ``server_assigned`` and ``batch_id``.
        A request is never handed to two callers.

        :returns: the claimed records (empty when nothing was claimable).
        """
        if ids is None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                            or not 1 <= batch_size <= MAX_BATCH):
            raise ValueError(f"batch_size must be an integer in 1..{MAX_BATCH}")
        lease = self.lease_s if lease_s is None else lease_s
        positive("lease_s", lease)
        model_key = model_key_of(model) if model else None
        now = self.clock()
        with self._lock:
            self._promote(now)
            if ids is not None:
                if isinstance(ids, str):
                    raise ValueError("ids must be a list of request ids, not a string")
                chosen = []
                for rid in dict.fromkeys(ids):
                    e = self._s.entries.get(rid)
                    if e is not None and self._s.index.is_ready(e) and (
                        model_key is None or e.model_key == model_key
                    ):
                        chosen.append(e)
            else:
                chosen = self._s.index.head(batch_size, model_key)
            for e in chosen:
                self._s.index.remove(e)  # reserved: no other caller can see them now
        if not chosen:
            return []
        bid = batch_id or new_id()
        claimed: list[dict] = []
        patch = {
            "status": "processing", "lease_until": now + lease,
            "started_at": iso_utc(now), "started_ts": now, "server_assigned": server,
            "batch_id": bid, "not_before": None, "claimed_by": self.owner,
        }
        mine = [e for e in chosen if e.record is not None]
        if mine:  # this proxy's own sync requests on a shared store: claimed in RAM
            claimed = self._claim_in_ram(mine, patch, now)
            chosen = [e for e in chosen if e.record is None]
            if not chosen:
                return claimed
        try:
            # One compare-and-set write: only rows still pending are claimed; on a shared
            # store a row another proxy holds right now is skipped, never waited for nor
            # claimed twice (row locks that skip locked rows).
            # A sync claim does not wait for its journal sync: if the proxy dies before
            # it is on disk, the record is still "pending" there, and recovery treats a
            # pending request exactly like a claimed one (-> interrupted). Saves one
            # fsync on every request's critical path. A job's claim waits: its attempt
            # must be counted before it runs, or a job that kills the proxy would be
            # re-run forever.
            docs = {d.doc_id: d for d in self.db.update_if(
                TABLE, [e.doc_id for e in chosen], patch, when={"status": ("pending",)},
                incr=("attempts", "rev"), skip_locked=True,
                wait=any(e.kind == "job" for e in chosen),
                # this proxy's own sync requests: nobody else can claim them, and they
                # count as active for the others either way; their finish is announced
                notify=any(e.kind == "job" for e in chosen))}
            for e in chosen:
                doc = docs.get(e.doc_id)
                if doc is not None:
                    doc = dict(doc)
                    if e.body is not None:
                        doc["body"] = e.body
                    claimed.append(doc)
        except BaseException:
            with self._lock:  # nothing was written: put the reservations back
                for e in chosen:
                    if e.status == "pending" and not self._s.index.is_ready(e):
                        self._s.index.add(e, now)
            raise
        missed = [e for e in chosen if e.doc_id not in docs]
        # On a shared store, read what another proxy made of the rows not claimed (its
        # notice may still be on its way): a stale head must not be retried forever.
        seen = ({d.doc_id: d for d in self.db.get_many(TABLE, [e.doc_id for e in missed])}
                if missed and self.shared else {})
        with self._cond:
            for doc in claimed:
                self._s.apply(self._s.entries[doc["id"]], doc, now)
            for e in missed:
                fresh = seen.get(e.doc_id)
                if fresh is not None and fresh.get("id") == e.id:
                    self._s.apply(e, dict(fresh), now)  # ignored unless newer than RAM
            for e in chosen:
                # Not claimed: changed meanwhile (its writer updates RAM), or held by
                # another proxy's transaction right now (its notice will tell): while
                # RAM still says pending it stays claimable here.
                if e.doc_id not in docs and e.status == "pending" \
                        and not self._s.index.is_ready(e):
                    self._s.index.add(e, now)
            if claimed and self._s.index.ready_count > 0:
                self._signal()  # more to claim: pass the wake-up on to another thread
        return claimed

    def _claim_in_ram(self, entries: list[Entry], patch: dict, now: float) -> list[dict]:
        """Claim requests that live in RAM (this proxy's sync requests, shared store)."""
        out = []
        with self._cond:
            for e in entries:
                doc = {**(e.record or {}), **patch, "attempts": e.attempts + 1,
                       "rev": e.rev + 1}
                e.record = doc
                self._s.apply(e, doc, now)
                out.append({**doc, "body": e.body} if e.body is not None else dict(doc))
            if self._s.index.ready_count > 0:
                self._signal()  # more to claim: pass the wake-up on to another thread
        return out

    def _change_in_ram(self, e: Entry, allowed: Iterable[str], make_patch: Patch,
                       usage: dict | None) -> dict | None:
        """:meth:`_transition` for a request that lives in RAM (this proxy's sync
        request on a shared store): RAM is its only truth until it finishes; then its
        final record is written, in the background, as history."""
        now = self.clock()
        with self._cond:
            if e.record is None or e.status not in allowed \
                    or self._s.entries.get(e.id) is not e:
                return None
            doc = {**e.record, "status": e.status}
            patch = make_patch(doc, now)
            if patch is None:
                return None
            old = e.status
            new = {**doc, **patch, "rev": e.rev + 1}
            final = new["status"] in FINISHED
            new.pop("body", None)
            e.record = None if final else new
            self._s.apply(e, new, now)
            if new["status"] == "pending" or (old == "processing"
                                              and self._s.index.ready_count > 0):
                self._signal()  # work to claim, or a node slot freed while work waits
            if final:
                if self._writer is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._writer = ThreadPoolExecutor(
                        1, thread_name_prefix="olol-queue-history")
                self._writer.submit(self._write_final, e, new)
        if final:
            self._tell_finished(new if usage is None else {**new, "usage": usage})
        return new

    def _write_final(self, e: Entry, record: dict) -> None:
        """Write the final record of a request that lived in RAM (in the background)."""
        try:
            doc_id = self.db.insert(TABLE, record, wait=False)
        except Exception:  # noqa: BLE001 - history only: the request itself is over
            log.exception("queue: writing the record of %s failed", e.id)
            return
        with self._lock:
            kept = self._s.entries.get(e.id) is e
            if kept:
                e.doc_id = doc_id
        if not kept:  # trimmed from RAM meanwhile: the row would be an orphan
            try:
                self.db.remove(TABLE, doc_id)
            except Exception:  # noqa: BLE001 - removed by a later clean-up anyway
                log.exception("queue: removing the record of %s failed", e.id)

    def close(self) -> None:
        """Write the final records still on their way (shared store), then stop the
        thread that writes them. Each write is bounded by the store's own timeouts."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=False)

    def is_next(self, request_id: str) -> bool:
        """True when the request is claimable and first in dispatch order."""
        with self._lock:
            e = self._s.entries.get(request_id)
            return e is not None and self._s.index.ready_position(e) == 0

    def peek(self, limit: int = 100, model: str | None = None) -> list[dict]:
        """Claimable pending requests in dispatch order, without claiming them."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        model_key = model_key_of(model) if model else None
        with self._lock:
            self._promote(self.clock())
            chosen = [(e.doc_id, e.body) for e in self._s.index.head(limit, model_key)]
        out = []
        for doc_id, body in chosen:
            doc = self.db.get(TABLE, doc_id)
            if doc is not None and doc.get("status") == "pending":
                out.append(_with_body(doc, body))
        return out

    def peek_summaries(self, limit: int = 100, model: str | None = None) -> list[dict]:
        """Like :meth:`peek` but from RAM only: the fields a scheduler places by,
        without the body (cheap enough to call on every scheduling pass)."""
        model_key = model_key_of(model) if model else None
        with self._lock:
            self._promote(self.clock())
            return [e.summary() for e in self._s.index.head(limit, model_key)]

    def batch_similar_requests(
        self, limit: int | None = None, model: str | None = None
    ) -> list[dict]:
        """Group claimable pending work that one node can serve without reloading.

        Groups follow dispatch order (by their best request) and share a
        ``batch_key`` (model + runner options). Within a group, ``ids`` lists
        requests with the same ``coalesce_key`` next to each other and
        ``coalesced`` maps each such key shared by 2+ requests to its ids (one
        inference may serve them all). ``embed_merge`` is true for a group of 2+
        ``/api/embed`` requests, which the dispatcher may merge into one call.
        ``endpoint`` is the group's endpoint, or ``"mixed"`` for generate + chat.
        """
        model_key = model_key_of(model) if model else None
        with self._lock:
            self._promote(self.clock())
            n = self._s.index.ready_count if limit is None else limit
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError("limit must be a non-negative integer or None")
            entries = self._s.index.head(n, model_key)
        # The fields grouping reads never change after admission: no lock needed.
        return group_similar(entries)

    # ------------------------------------------------------------------ transitions
    def _transition(self, request_id: str, allowed: Iterable[str], make_patch: Patch,
                    usage: dict | None = None, *, any_claim: bool = False) -> dict | None:
        """Check-and-write one record in a store transaction, then update RAM.

        On a shared store a processing record claimed by another proxy is left alone
        unless ``any_claim`` (cancel, and the sweep of dead proxies' claims): only the
        claimer finishes, requeues or extends what it runs."""
        with self._lock:
            e = self._s.entries.get(request_id) if isinstance(request_id, str) else None
            if e is None or (e.doc_id < 0 and e.record is None):
                return None
        if e.record is not None:
            return self._change_in_ram(e, allowed, make_patch, usage)
        now = self.clock()
        # A synchronous request's state changes need not wait for their sync: its
        # caller hears the outcome over its connection, and a crash before the line
        # is on disk leaves the record as recovery finds it (absent or interrupted,
        # never re-run). A job's state is read back later by id: it waits.
        seen: Any = None  # the record as found, when this write does not apply to it
        patch: dict | None = None
        with self.db.transaction(wait=e.kind == "job"):
            locked = self.db.lock(TABLE, [e.doc_id])  # held until the write commits
            doc = locked[0] if locked else None
            if doc is None or doc.get("id") != request_id:
                return None
            if doc.get("status") not in allowed or (
                self.shared and not any_claim and doc.get("status") == "processing"
                and doc.get("claimed_by") not in (None, self.owner)
            ):
                seen = doc
            else:
                patch = make_patch(doc, now)
                if patch is not None:
                    patch["rev"] = rev_of(doc) + 1
                    if patch.get("status") in FINISHED and doc.get("body") is not None:
                        patch["body"] = None  # a finished job's body: nothing can need it
                    self.db.update(TABLE, patch, e.doc_id)
        if patch is None:
            if seen is not None and self.shared:
                with self._cond:  # another proxy's write, perhaps not heard of yet
                    self._s.apply(e, dict(seen), now)
            return None
        new = dict(doc)
        new.update(patch)
        return self._written(e, doc.get("status"), new, now, usage)

    def _set(self, request_id: str, allowed: Iterable[str],
             fields: Callable[[Entry, float], dict], usage: dict | None = None, *,
             any_claim: bool = False) -> dict | None:
        """:meth:`_transition` for a change that does not depend on the stored record
        (``fields(entry, now)``): one compare-and-set write, one round trip on
        PostgreSQL. The same checks: status in ``allowed``; on a shared store, not
        another proxy's claim unless ``any_claim``."""
        with self._lock:
            e = self._s.entries.get(request_id) if isinstance(request_id, str) else None
            if e is None or (e.doc_id < 0 and e.record is None):
                return None
            old = e.status
        if e.record is not None:
            return self._change_in_ram(e, allowed, lambda doc, now: fields(e, now), usage)
        now = self.clock()
        patch = fields(e, now)
        if patch.get("status") in FINISHED and e.kind == "job":
            patch["body"] = None  # a finished job's body: nothing can need it
        when: dict[str, Iterable[Any]] = {"id": (request_id,), "status": tuple(allowed)}
        if self.shared and not any_claim:
            when["claimed_by"] = (None, self.owner)
        got = self.db.update_if(TABLE, [e.doc_id], patch, when=when, incr=("rev",),
                                wait=e.kind == "job")
        if not got:
            return None
        return self._written(e, old, dict(got[0]), now, usage)

    def _written(self, e: Entry, old: str | None, new: dict, now: float,
                 usage: dict | None) -> dict:
        """RAM, wake-ups, trimming and finish listeners after a record's write."""
        with self._cond:
            self._s.apply(e, new, now)
            if new["status"] == "pending" or (
                old == "processing" and self._s.index.ready_count > 0
            ):
                self._signal()  # work to claim, or a node slot freed while work waits
            trim = (len(self._s.finished_sync) > self._trim_at() and not self._trimming)
            if trim:
                self._trimming = True
        if trim:
            self._trim_finished_sync()
        if new["status"] in FINISHED and old not in FINISHED:
            self._tell_finished(new if usage is None else {**new, "usage": usage})
        return new

    def add_finish_listener(self, listener: Callable[[dict], None]) -> None:
        """Call ``listener(record)`` once per request that reaches a finished state,
        after the write, outside the queue's lock (metrics, request logs). The record is
        a copy without the body; it carries ``usage`` when the finisher passed one."""
        self._finish_listeners.append(listener)

    def _tell_finished(self, record: dict) -> None:
        if not self._finish_listeners:
            return
        view = {k: v for k, v in record.items() if k != "body"}
        for listener in list(self._finish_listeners):
            try:
                listener(view)
            except Exception:  # a listener must not fail the request
                log.exception("finish listener failed for %s", record.get("id"))

    def _trim_at(self) -> int:
        return self.max_finished_sync + max(50, self.max_finished_sync // 10)

    def _trim_finished_sync(self) -> None:
        """Remove the oldest finished sync records beyond ``max_finished_sync`` (in one
        store write, once every ``max_finished_sync // 10`` finishes or so)."""
        try:
            with self._lock:
                excess = len(self._s.finished_sync) - self.max_finished_sync
                it = iter(self._s.finished_sync.values())
                victims = [next(it) for _ in range(max(0, excess))]
            if victims:
                # Finished states are final: these records cannot change meanwhile.
                self.db.remove(TABLE, [e.doc_id for e in victims])
                with self._lock:
                    for e in victims:
                        self._s.forget(e)
        finally:
            with self._lock:
                self._trimming = False

    def update_request_status(
        self,
        request_id: str,
        status: str,
        result: dict | None = None,
        *,
        error: str | None = None,
        error_status: int | None = None,
        server: str | None = None,
        usage: dict | None = None,
    ) -> bool:
        """Finish a pending or processing request (``completed``, ``failed``,
        ``cancelled`` or ``interrupted``); stamps ``completed_at``. ``result`` is kept
        for jobs only. ``usage`` (time to first token, token counts...) is not stored:
        finish listeners receive it. Finished states are final: returns False for them,
        and for unknown ids."""
        if status not in FINISHED:
            raise ValueError(
                f"status must be one of {', '.join(sorted(FINISHED))}; got {status!r} "
                "(dequeue() claims, requeue() puts back)"
            )
        if result is not None and not isinstance(result, dict):
            raise ValueError("result must be a dict or None")

        def patch(e: Entry, now: float) -> dict:
            p = finish_patch(status, now, error)
            p["error_status"] = error_status
            if server is not None:
                p["server_assigned"] = server
            if e.kind == "job" and result is not None:
                p["result"] = result
            return p

        new = self._set(request_id, ACTIVE, patch, usage=usage)
        return new is not None

    def requeue(self, request_id: str, *, delay_s: float = 0.0, reason: str = "") -> bool:
        """Processing -> pending again (a node failed before answering). Keeps ``seq``,
        ``enqueued_ts`` (its age) and ``attempts``; not claimable for ``delay_s``."""
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not (
            0 <= delay_s <= MAX_DELAY_S
        ):
            raise ValueError(f"delay_s must be a number in 0..{MAX_DELAY_S:g}")
        return self._set(
            request_id, ("processing",),
            lambda e, now: pending_patch(now + delay_s if delay_s > 0 else None)
            | {"error": reason or None},
        ) is not None

    def cancel(self, request_id: str) -> bool:
        """Pending or processing -> cancelled. Listeners (the dispatcher) hear of it, so
        a request already running on a node is stopped there."""
        self._catch_up(request_id)
        done = self._set(
            request_id, ACTIVE, lambda e, now: finish_patch("cancelled", now, "cancelled"),
            any_claim=True,
        ) is not None
        if done:
            for listener in list(self._cancel_listeners):
                try:
                    listener(request_id)
                except Exception:  # a listener must not undo the cancellation
                    log.exception("cancel listener failed for %s", request_id)
        return done

    def add_cancel_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(request_id)`` after every successful :meth:`cancel`."""
        self._cancel_listeners.append(listener)

    def is_cancelled(self, request_id: str) -> bool:
        with self._lock:
            e = self._s.entries.get(request_id)
            return e is not None and e.status == "cancelled"

    # ------------------------------------------------------------------ reading
    def get(self, request_id: str) -> dict | None:
        self._catch_up(request_id)
        with self._lock:
            e = self._s.entries.get(request_id) if isinstance(request_id, str) else None
            if e is not None and e.record is not None:  # lives in RAM (shared store)
                return _with_body({**e.record, "status": e.status}, e.body)
            if e is None or e.doc_id < 0:
                return None
            doc_id, body = e.doc_id, e.body
        doc = self.db.get(TABLE, doc_id)
        return _with_body(doc, body) if doc is not None and doc.get("id") == request_id else None

    def list_jobs(self, status: str | None = None, limit: int = 100, *,
                  kind: str | None = "job") -> list[dict]:
        """Records of ``kind`` (None: all), optionally one status, newest first."""
        if status is not None and status not in QUEUE_STATUSES:
            raise ValueError(f"status must be one of {', '.join(QUEUE_STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        with self._lock:
            picked = [e for e in self._s.entries.values()
                      if (kind is None or e.kind == kind)
                      and (status is None or e.status == status) and e.doc_id >= 0]
            picked.sort(key=lambda e: e.seq, reverse=True)
            doc_ids = [e.doc_id for e in picked[:limit]]
        return [dict(d) for d in (self.db.get(TABLE, i) for i in doc_ids) if d is not None]

    def depth(self, model: str | None = None) -> int:
        """Pending + processing requests (of one model when given)."""
        with self._lock:
            if model is None:
                return self._s.active_total
            return self._s.active_by_model[model_key_of(model)]

    def get_queue_stats(self) -> dict[str, Any]:
        """Depth by status, model and priority; wait time (started - enqueued) and run
        time (completed - started) p50/p95 over recent completions; completions per
        minute over the last 5 minutes."""
        now = self.clock()
        with self._lock:
            self._promote(now)
            out = self._s.stats(now)
        out.update(max_depth=self.max_depth, max_depth_per_model=self.max_depth_per_model)
        return out

    def active_summary(self) -> list[tuple[str, int, str, int, float | None]]:
        """``(model_key, priority, status, count, oldest enqueued_ts)`` per group of
        pending and processing requests (the oldest only for pending ones): what the
        metrics read at scrape time. Walks the active requests only (bounded by
        ``max_depth``), under the lock."""
        groups: dict[tuple[str, int, str], list] = {}
        with self._lock:
            index = self._s.index
            pending = [*index._entries.values(), *index._delayed_entries.values()]
            for status, entries in (("pending", pending),
                                    ("processing", list(self._s.processing.values()))):
                for e in entries:
                    g = groups.get((e.model_key, e.priority, status))
                    if g is None:
                        groups[(e.model_key, e.priority, status)] = [1, e.enqueued_ts]
                    else:
                        g[0] += 1
                        g[1] = min(g[1], e.enqueued_ts)
        return [(m, p, s, n, first if s == "pending" else None)
                for (m, p, s), (n, first) in groups.items()]

    def waiting_here(self) -> list[str]:
        """Ids of the synchronous requests this proxy admitted that wait in the queue
        (pending): what a stopping proxy answers at once, as no other proxy can run
        them (their callers are connected to this one)."""
        with self._lock:
            return [e.id for e in self._s.entries.values()
                    if e.kind == "sync" and e.status == "pending" and not e.foreign]

    def active_bytes(self) -> int:
        """Body bytes held for pending and processing requests."""
        with self._lock:
            return self._s.active_bytes

    # ------------------------------------------------------------------ shared store
    def _on_change(self, table: str, doc_ids: list[int] | None, origin: str) -> None:
        """The store's change feed (shared store): another proxy wrote these records
        (``None``: maybe missed some; reload all). Runs on the store's listener
        thread; this proxy's own writes are in RAM already."""
        if origin == self.owner:
            return
        if doc_ids is None:
            self._resync()
            return
        docs = {d.doc_id: d for d in self.db.get_many(TABLE, doc_ids)}
        self._merge(docs, doc_ids)

    def _merge(self, docs: dict[int, Any], doc_ids: Iterable[int]) -> None:
        now = self.clock()
        cancelled: list[str] = []
        with self._cond:
            wake = False
            by_doc: dict[int, Entry] | None = None
            for doc_id in doc_ids:
                doc = docs.get(doc_id)
                if doc is None:  # removed (cleanup, trimming)
                    if by_doc is None:
                        by_doc = {e.doc_id: e for e in self._s.entries.values()}
                    gone = by_doc.get(doc_id)
                    if gone is not None and gone.status in FINISHED:
                        self._s.forget(gone)
                    continue
                rid = doc.get("id")
                e = self._s.entries.get(rid) if isinstance(rid, str) else None
                if e is None:
                    if doc.get("status") not in QUEUE_STATUSES:
                        continue
                    e = self._s.ingest(doc, now)
                    wake = wake or self._s.index.is_ready(e)
                    continue
                if e.doc_id < 0:
                    continue  # this proxy's own insert of that id is on its way
                old = e.status
                self._s.apply(e, doc, now)
                self._s.next_seq = max(self._s.next_seq, e.seq + 1)
                if e.status != old:
                    if e.status == "pending" or (old == "processing"
                                                 and self._s.index.ready_count > 0):
                        wake = True
                    if e.status == "cancelled" and old in ACTIVE:
                        cancelled.append(e.id)
            if wake:
                self._signal()
        for rid in cancelled:  # cancelled on another proxy: stop it here if it runs here
            for listener in list(self._cancel_listeners):
                try:
                    listener(rid)
                except Exception:
                    log.exception("cancel listener failed for %s", rid)

    def _catch_up(self, request_id: Any) -> None:
        """Shared store: a request this proxy has not heard of may have been admitted by
        another proxy a moment ago, its row not yet brought here by the change feed.
        Read that row now (one indexed query), so that a client that submits a job
        through one proxy and asks after it through another (both behind one load
        balancer) finds it. Nothing to do for a request RAM knows, or on TinyDB."""
        if not self.shared or not isinstance(request_id, str) or not (
                0 < len(request_id) <= MAX_ID_CHARS):
            return
        with self._lock:
            if request_id in self._s.entries:
                return
        doc = self.db.search_one(TABLE, {"id": request_id})
        if doc is not None:
            self._merge({doc.doc_id: doc}, [doc.doc_id])

    def _resync(self) -> None:
        """Bring RAM in line with the whole table (after the change feed had a gap),
        keeping what only RAM holds (the bodies of this proxy's sync requests)."""
        docs = {d.doc_id: d for d in self.db.all(TABLE)}
        with self._lock:
            known = [e.doc_id for e in self._s.entries.values() if e.doc_id >= 0]
        self._merge(docs, list(dict.fromkeys([*docs, *known])))

    def responsible(self, record: Any) -> str | None:
        """The proxy whose life a record's progress depends on: the claimer of a
        processing record, the admitting proxy of a pending sync request (its caller
        is connected there); None for what any proxy may take."""
        if record.get("status") == "processing":
            return record.get("claimed_by") or record.get("owner")
        if record.get("status") == "pending" and record.get("kind") != "job":
            return record.get("owner")
        return None

    # ------------------------------------------------------------------ waking
    def _signal(self, everyone: bool = False) -> None:
        """Something a dispatcher may act on happened (caller holds the lock).

        One event (a request enqueued, a slot freed) wakes one thread: a thread
        that claims work wakes the next while more is claimable (:meth:`dequeue`),
        so a burst still spreads over the pool, but one event never makes every
        idle thread scan the queue. ``everyone`` (new nodes, due requests,
        shutdown) wakes them all."""
        if everyone:
            self._generation += 1
            self._cond.notify_all()
        else:
            self._news = True
            self._cond.notify()

    def _promote(self, now: float) -> None:
        if self._s.index.promote(now):
            self._signal(everyone=True)

    def wait_for_work(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds until something happened that a dispatcher
        may act on: a request was enqueued or requeued, a delayed one became due, a
        dispatched one finished (a node slot freed), or :meth:`notify` was called.

        Returns at once if such an event happened since this thread's previous call
        (so none is lost between looking at the queue and sleeping), or, on a thread's
        first call, if work is claimable. Work that exists but could not be placed
        does not wake anyone again, so dispatcher threads never spin on it.

        :returns: whether claimable work exists on return.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            0 <= timeout < math.inf
        ):
            raise ValueError("timeout must be a finite non-negative number of seconds")
        with self._cond:
            now = self.clock()
            self._promote(now)
            seen = getattr(self._seen, "generation", None)
            if seen is None:
                changed = self._s.index.ready_count > 0
            else:
                changed = seen != self._generation or self._news
            if not changed:
                wait = timeout
                due = self._s.index.next_due()
                if due is not None:
                    wait = max(0.0, min(wait, due - now))
                self._cond.wait(wait)
                self._promote(self.clock())
            self._news = False  # this thread looks at the queue after every event so far
            self._seen.generation = self._generation
            return self._s.index.ready_count > 0

    def notify(self, everyone: bool = True) -> None:
        """Wake every thread in :meth:`wait_for_work` (new nodes, shutdown, ...), or
        one thread (``everyone=False``: a node slot was freed, or a request was
        left unclaimed) when some request is claimable; with nothing to claim
        there is nothing to wake for (the next enqueue wakes a thread itself)."""
        with self._cond:
            if everyone or self._s.index.ready_count > 0:
                self._signal(everyone=everyone)

    def pending_window(self, limit: int, since: int | None = None,
                       known: dict[str, Any] | frozenset[str] = frozenset()
                       ) -> tuple[int, list[str], dict[str, dict]] | None:
        """The head of the dispatch order, for a scheduler that keeps its own copy of it.

        Returns None when the claimable requests are as they were at version
        ``since`` (nothing was added, claimed, cancelled, requeued or became due
        since); else ``(version, ids, summaries)``: the ids of the first ``limit``
        claimable requests in dispatch order, and the :meth:`peek_summaries` fields
        of those whose id is not in ``known``. Ageing never changes the order (see
        :meth:`~olol.queue.records.Entry.order_key`), so time alone changes nothing.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        with self._lock:
            self._promote(self.clock())
            index = self._s.index
            if since is not None and index.version == since:
                return None
            entries = index.head(limit)
            return (index.version, [e.id for e in entries],
                    {e.id: e.summary() for e in entries if e.id not in known})


__all__ = ["QueueFullError", "QueueManager"]


def _with_body(doc: Any, body: dict | None) -> dict:
    """A copy of a stored record with the body the queue holds in RAM put back."""
    out = dict(doc)
    if body is not None:
        out["body"] = body
    return out

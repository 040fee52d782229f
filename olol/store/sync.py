"""``SyncManager`` (roadmap 2.2): the one RAM view of the cluster's store tables.

The proxy builds one ``SyncManager`` over ``servers`` and ``models`` at start-up and
passes it to the :class:`~olol.cluster.ClusterManager` (membership, read by the
scheduler through the cluster), the :class:`~olol.registry.ModelRegistry` (where every
model lives) and the health monitor (the nodes' ``servers`` rows): they read these
tables from its RAM view and write through it, instead of each keeping its own copy.
Every write goes to the store first (durable when it returns), then to RAM;
``force_sync`` re-derives RAM from the store and reports what it corrected.
The store always wins a disagreement.

Lock order: a table's lock, then the store's lock. :meth:`SyncManager.transaction`
takes the tables' locks before opening the store's transaction, so code holding a
``db.transaction()`` must not call into the manager for a table it has not locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import orjson

from olol.store.database import DatabaseManager, Where, get_db

log = logging.getLogger(__name__)


def _copy(doc: dict) -> dict:
    return orjson.loads(orjson.dumps(doc))


class SyncManager:
    def __init__(self, db: DatabaseManager | None = None, tables: Iterable[str] | None = None):
        self.db = db if db is not None else get_db()
        self._tables = list(tables) if tables is not None else None
        self._ram_cache: dict[str, dict[int, dict]] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._following = False

    def follow(self, listener: Callable[[str], None] | None = None) -> bool:
        """On a shared store (several proxies), take the other proxies' writes to the
        managed tables into RAM as the store's change feed reports them, then call
        ``listener(table)``. Returns whether it follows."""
        if not getattr(self.db, "shared", False):
            return False
        if listener is not None:
            self._listeners.append(listener)
        if self._following:
            return True
        self._following = True
        for table in self._table_names():
            self.db.watch(table, self._on_change)
        return True

    def _on_change(self, table: str, doc_ids: list[int] | None, origin: str) -> None:
        if origin == getattr(self.db, "origin", None):
            return  # this process's own writes went through here already
        if doc_ids is None:
            self.force_sync(table)
        else:
            with self._lock(table):
                self._refresh(table, doc_ids)
        for listener in list(self._listeners):
            try:
                listener(table)
            except Exception:  # a listener must not stop the feed
                log.exception("listener of %s changes failed", table)

    def _lock(self, table: str) -> threading.RLock:
        with self._locks_guard:
            lock = self._locks.get(table)
            if lock is None:
                lock = self._locks[table] = threading.RLock()
            return lock

    def _table_names(self) -> list[str]:
        return self._tables if self._tables is not None else self.db.tables()

    def load_initial_state(self) -> dict[str, int]:
        """Load every managed table from the store into RAM; returns row counts."""
        counts = {}
        for table in self._table_names():
            with self._lock(table):
                self._ram_cache[table] = {doc.doc_id: dict(doc) for doc in self.db.all(table)}
                counts[table] = len(self._ram_cache[table])
        return counts

    def write_and_sync(self, table: str, data: Mapping[str, Any], doc_id: int | None = None) -> int:
        """Insert ``data`` (or update document ``doc_id`` with it): store first, then RAM."""
        with self._lock(table):
            if doc_id is None:
                doc_id = self.db.insert(table, data)
            elif not self.db.update(table, data, doc_id):
                raise KeyError(f"table {table!r} has no document {doc_id}")
            fresh = self.db.get(table, doc_id)
            cache = self._ram_cache.setdefault(table, {})
            if fresh is None:  # removed concurrently by someone bypassing us
                cache.pop(doc_id, None)
            else:
                cache[doc_id] = dict(fresh)
            return doc_id

    def remove_and_sync(self, table: str, doc_id: int) -> bool:
        with self._lock(table):
            removed = bool(self.db.remove(table, doc_id))
            self._ram_cache.setdefault(table, {}).pop(doc_id, None)
            return removed

    # -- writes by condition (store first, then RAM) -----------------------------------

    def _refresh(self, table: str, ids: Iterable[int]) -> None:
        # Caller holds the table's lock: RAM takes the store's rows of ``ids``.
        cache = self._cached(table)
        for doc_id in ids:
            fresh = self.db.get(table, doc_id)
            if fresh is None:
                cache.pop(doc_id, None)
            else:
                cache[doc_id] = dict(fresh)

    def _cached(self, table: str) -> dict[int, dict]:
        # Caller holds the table's lock.
        rows = self._ram_cache.get(table)
        if rows is None:
            rows = self._ram_cache[table] = {d.doc_id: dict(d) for d in self.db.all(table)}
        return rows

    def update_and_sync(self, table: str, fields: Mapping[str, Any], where: Where) -> list[int]:
        """Set ``fields`` on the documents matching ``where``; their ids."""
        with self._lock(table):
            ids = self.db.update(table, fields, where)
            self._refresh(table, ids)
            return ids

    def upsert_and_sync(self, table: str, data: Mapping[str, Any], where: Where) -> list[int]:
        """Update the documents matching ``where`` with ``data``, or insert ``data``."""
        with self._lock(table):
            ids = self.db.upsert(table, data, where)
            self._refresh(table, ids)
            return ids

    def remove_where_and_sync(self, table: str, where: Where) -> list[int]:
        """Remove the documents matching ``where``; their ids."""
        with self._lock(table):
            ids = self.db.remove(table, where)
            cache = self._cached(table)
            for doc_id in ids:
                cache.pop(doc_id, None)
            return ids

    @contextmanager
    def transaction(self, tables: Iterable[str]) -> Iterator[SyncManager]:
        """Group writes to ``tables`` (through this manager) and any other store writes
        into one store transaction: all or none. The tables' locks are taken first (in
        name order), then the store's; an exception rolls the store back and RAM is
        re-derived from it."""
        names = sorted(set(tables))
        with ExitStack() as stack:
            for name in names:
                stack.enter_context(self._lock(name))
            try:
                with self.db.transaction():
                    yield self
            except BaseException:
                for name in names:
                    self._ram_cache[name] = {d.doc_id: dict(d) for d in self.db.all(name)}
                raise

    # -- reads ---------------------------------------------------------------------------

    def read_one(self, table: str, query: Callable[[Mapping], bool] | Mapping) -> dict | None:
        """A copy of the first RAM row of ``table`` matching ``query`` (None: none)."""
        rows = self.read_from_ram(table, query)
        return rows[0] if rows else None

    def read_from_ram(
        self, table: str, query: Callable[[Mapping], bool] | Mapping | None = None
    ) -> list[dict]:
        """Copies of the RAM rows of ``table`` (matching ``query`` when given)."""
        with self._lock(table):
            rows = self._cached(table)
            if query is None:
                match: Callable[[Mapping], bool] = lambda doc: True  # noqa: E731
            elif isinstance(query, Mapping):
                items = list(query.items())
                match = lambda doc: all(doc.get(k) == v for k, v in items)  # noqa: E731
            else:
                match = query
            return [{**_copy(doc), "doc_id": i} for i, doc in rows.items() if match(doc)]

    def force_sync(self, table: str | None = None) -> dict[str, dict[str, int]]:
        """Re-derive RAM from the store; per table, how many rows were added, removed, changed."""
        report = {}
        for name in [table] if table is not None else self._table_names():
            with self._lock(name):
                truth = {doc.doc_id: dict(doc) for doc in self.db.all(name)}
                ram = self._ram_cache.get(name, {})
                added = sum(1 for i in truth if i not in ram)
                removed = sum(1 for i in ram if i not in truth)
                changed = sum(1 for i in truth if i in ram and ram[i] != truth[i])
                self._ram_cache[name] = truth
                report[name] = {"added": added, "removed": removed, "changed": changed}
                if added or removed or changed:
                    log.info("RAM view of %s corrected from the store: %s", name, report[name])
        return report

"""``SyncManager`` (roadmap 2.2): RAM views of store tables, the store first.

Components that read a table often (the scheduler reading ``servers``, the
registry reading ``models``) keep a RAM view instead of querying the store.
Every write goes to the store first (durable when it returns), then to RAM;
``force_sync`` re-derives RAM from the store and reports what it corrected.
The store always wins a disagreement.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from olol.store.database import DatabaseManager, get_db


class SyncManager:
    def __init__(self, db: DatabaseManager | None = None, tables: Iterable[str] | None = None):
        self.db = db if db is not None else get_db()
        self._tables = list(tables) if tables is not None else None
        self._ram_cache: dict[str, dict[int, dict]] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

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

    def read_from_ram(
        self, table: str, query: Callable[[Mapping], bool] | Mapping | None = None
    ) -> list[dict]:
        """Copies of the RAM rows of ``table`` (matching ``query`` when given)."""
        with self._lock(table):
            if table not in self._ram_cache:
                self._ram_cache[table] = {doc.doc_id: dict(doc) for doc in self.db.all(table)}
            rows = self._ram_cache[table]
            if query is None:
                match: Callable[[Mapping], bool] = lambda doc: True  # noqa: E731
            elif isinstance(query, Mapping):
                items = list(query.items())
                match = lambda doc: all(doc.get(k) == v for k, v in items)  # noqa: E731
            else:
                match = query
            return [
                {**copy.deepcopy(doc), "doc_id": i} for i, doc in rows.items() if match(doc)
            ]

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
        return report

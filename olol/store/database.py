"""``DatabaseManager``: the store every olol component writes through.

TinyDB is the query engine (``tinydb.Query`` conditions are evaluated on the
stored documents) and its JSON file is the snapshot format; durability comes
from the write-ahead journal in :mod:`olol.store.journal`. Documents live in
RAM as ``{table: {doc_id: dict}}``. A stored document is never mutated in place
(every write stores a new dict), so a checkpoint can copy the tables' dicts
under the lock and serialise them outside it. Reads return deep copies.

Two implementations behind one interface: ``DatabaseManager(data_dir)`` is the
durable store; ``DatabaseManager.memory()`` keeps everything in RAM (tests).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from tinydb.table import Document

from olol.store import journal as jr
from olol.store.schema import (
    DEFAULT_SCHEMAS,
    SCHEMA_VERSION,
    SchemaError,
    TableSchema,
    UnknownTableError,
)

log = logging.getLogger(__name__)

Where = int | Iterable[int] | Callable[[Mapping], bool] | Mapping[str, Any]
Fields = Mapping[str, Any] | Callable[[dict], None]

_dumps = orjson.dumps
_loads = orjson.loads


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def _copy(doc: dict) -> dict:
    return _loads(_dumps(doc))


def encode_doc(schema: TableSchema, doc: Any) -> bytes:
    """``doc`` validated against ``schema`` and encoded as JSON (SchemaError otherwise)."""
    schema.validate(doc)
    try:
        return _dumps(doc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        for key, value in doc.items():
            try:
                _dumps(value)
            except (TypeError, orjson.JSONEncodeError):
                raise SchemaError(
                    f"table {schema.name!r}: field {key!r} is not a JSON value ({exc})"
                ) from None
        raise SchemaError(f"table {schema.name!r}: document is not JSON ({exc})") from None


def encode_new_docs(schema: TableSchema, docs: list, now: str) -> list[bytes]:
    """Documents to insert, stamped (``created_at`` unless given, ``updated_at``),
    validated and encoded; SchemaError names the table (and the field)."""
    encoded = []
    for doc in docs:
        if not isinstance(doc, Mapping):
            raise SchemaError(
                f"table {schema.name!r}: a document must be a mapping, got {type(doc).__name__}"
            )
        doc = dict(doc)
        doc.setdefault("created_at", now)
        doc["updated_at"] = now
        encoded.append(encode_doc(schema, doc))
    return encoded


def encode_fields(table: str, fields: Mapping) -> bytes:
    """The fields of an update, encoded as a JSON object (SchemaError when not JSON)."""
    try:
        return _dumps(dict(fields))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise SchemaError(f"table {table!r}: update fields are not JSON ({exc})") from None


class StoreClosedError(jr.StoreError):
    """The store was closed; nothing more is accepted."""


class StoreUnavailableError(jr.StoreError):
    """The store's database server cannot be reached (refused, timed out, connection
    lost mid-call); the call's writes were not applied. The front door answers 503."""


#: ``callback(table, doc_ids, origin)`` of :meth:`DatabaseManager.watch`: ``doc_ids``
#: None means "reload the whole table".
WatchCallback = Callable[[str, "list[int] | None", str], None]


def schema_of(schemas: Mapping[str, TableSchema], table: Any) -> TableSchema:
    """The schema of ``table`` among a store's ``schemas``.

    :raises UnknownTableError: not a string, or not one of them.
    """
    if not isinstance(table, str):
        raise UnknownTableError(f"table name must be a string, got {type(table).__name__}")
    schema = schemas.get(table)
    if schema is None:
        raise UnknownTableError(f"unknown table {table!r}; tables: {', '.join(sorted(schemas))}")
    return schema


class DatabaseManager:
    """Thread-safe CRUD over the olol tables, durable when given a folder."""

    #: who made a change, in :meth:`watch` callbacks (one process: always this one)
    origin = "local"
    shared = False  # one process owns the data folder: no other proxy writes here

    def __init__(
        self,
        data_dir: str | os.PathLike | None,
        *,
        clock: Callable[[], float] = time.time,
        schemas: Mapping[str, TableSchema] | None = None,
        checkpoint_bytes: int = 8 << 20,
        checkpoint_interval_s: float = 600.0,
        background_checkpoints: bool = True,
        flush_interval_s: float = 0.2,
        sync: Callable[[int], None] | None = None,
    ):
        self.clock = clock
        self.schemas: dict[str, TableSchema] = dict(DEFAULT_SCHEMAS)
        if schemas:
            self.schemas.update(schemas)
        self._lock = threading.RLock()
        self._tables: dict[str, dict[int, dict]] = {}
        self._next_ids: dict[str, int] = {}
        self._txn: list[bytes] | None = None
        self._undo: list[tuple] = []
        self._watchers: dict[str, list[WatchCallback]] = {}
        self._txn_changes: dict[str, set[int] | None] = {}  # for the watchers, per table
        self._closed = False
        self._journal: jr.Journal | None = None
        self._dirlock: jr.DirLock | None = None
        self._ckpt_lock = threading.Lock()
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_interval_s = checkpoint_interval_s
        self._snapshot_bytes = 0
        self._last_checkpoint = time.monotonic()
        self.checkpoint_timings = jr.Timings()  # duration of each checkpoint (metrics)
        self._stop = threading.Event()
        self._ckpt_thread: threading.Thread | None = None
        self._flush_thread: threading.Thread | None = None
        self._flush_interval_s = flush_interval_s
        self.recovery: jr.Recovered | None = None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        if self.data_dir is not None:
            self._open_durable(sync)
            if background_checkpoints:
                self._ckpt_thread = threading.Thread(
                    target=self._checkpoint_loop, name="olol-store-checkpoint", daemon=True
                )
                self._ckpt_thread.start()
                # Writes that do not wait for their sync would otherwise sit in RAM
                # until some write waits: with only sync requests, without bound.
                self._flush_thread = threading.Thread(
                    target=self._flush_loop, name="olol-store-flush", daemon=True
                )
                self._flush_thread.start()
        self._ensure_schema_version()

    @classmethod
    def memory(cls, *, clock: Callable[[], float] = time.time, **kw: Any) -> DatabaseManager:
        return cls(None, clock=clock, **kw)

    @property
    def durable(self) -> bool:
        return self.data_dir is not None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran, or after a failed journal write (which refuses
        every later write until olol is restarted)."""
        j = self._journal
        return self._closed or (j is not None and j._error is not None)

    # ------------------------------------------------------------------ opening
    def _open_durable(self, sync: Callable[[int], None] | None) -> None:
        assert self.data_dir is not None
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise jr.StoreError(f"{self.data_dir} exists and is not a folder")
        # Prompts pass through the store: the folder and its files are the owner's only.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dirlock = jr.DirLock(self.data_dir)
        self._dirlock.acquire()
        try:
            tmp = self.data_dir / (jr.SNAPSHOT + ".tmp")
            if tmp.exists():
                log.info("removing an unfinished checkpoint %s", tmp)
                tmp.unlink()
            rec = jr.recover(self.data_dir)
            self.recovery = rec
            self._tables, self._next_ids = rec.tables, rec.next_ids
            snap = self.data_dir / jr.SNAPSHOT
            self._snapshot_bytes = snap.stat().st_size if snap.exists() else 0
            kw = {"sync": sync} if sync else {}
            self._journal = jr.Journal(self.data_dir, rec.generation + 1, **kw)
            if rec.replayed:
                log.info(
                    "store %s: replayed %d journal records (%d torn bytes dropped)",
                    self.data_dir, rec.replayed, rec.dropped_bytes,
                )
            if rec.replayed > 100_000:
                self.checkpoint()
        except BaseException:
            self._dirlock.release()
            raise

    def _ensure_schema_version(self) -> None:
        row = self.search_one("config", {"key": "schema_version"})
        if row is None:
            self.insert("config", {"key": "schema_version", "value": SCHEMA_VERSION})
        elif not isinstance(row["value"], int) or row["value"] > SCHEMA_VERSION:
            where = self.data_dir or "memory"
            self.close()
            raise jr.StoreError(
                f"store {where} has schema version {row['value']!r}; "
                f"this olol understands up to {SCHEMA_VERSION}"
            )

    def register_table(self, schema: TableSchema) -> None:
        """Add a table (for components with tables of their own)."""
        with self._lock:
            self.schemas[schema.name] = schema

    # ------------------------------------------------------------------ helpers
    def _schema(self, table: str) -> TableSchema:
        return schema_of(self.schemas, table)

    def _rows(self, table: str) -> dict[int, dict]:
        self._schema(table)
        return self._tables.setdefault(table, {})

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    @staticmethod
    def _matcher(where: Any) -> Callable[[Mapping], bool]:
        if isinstance(where, Mapping):
            items = list(where.items())
            return lambda doc: all(k in doc and doc[k] == v for k, v in items)
        if callable(where):
            return where
        raise TypeError(f"expected a query, a callable or a mapping, got {type(where).__name__}")

    def _select(self, rows: dict[int, dict], where: Where) -> list[int]:
        if isinstance(where, bool):
            raise TypeError("expected a document id, ids or a query, got bool")
        if isinstance(where, int):
            return [where] if where in rows else []
        if isinstance(where, (Mapping,)) or callable(where):
            match = self._matcher(where)
            return [i for i, d in rows.items() if match(d)]
        if isinstance(where, Iterable) and not isinstance(where, (str, bytes)):
            ids = []
            for i in where:
                if isinstance(i, bool) or not isinstance(i, int):
                    raise TypeError(f"document ids must be integers, got {i!r}")
                if i in rows:
                    ids.append(i)
            return ids
        raise TypeError(f"expected a document id, ids or a query, got {type(where).__name__}")

    _encode_doc = staticmethod(encode_doc)

    # ------------------------------------------------------------------ commit
    def _commit(self, ops: list[bytes], undo: list[tuple]) -> int:
        """Called under the lock after applying to RAM: journal the change.

        Returns the sequence number to wait for (0 inside a transaction or in
        memory); the caller waits with :meth:`_wait` after releasing the lock.
        """
        if self._txn is not None:
            self._txn.extend(ops)
            self._undo.extend(undo)
            return 0
        return self._append(ops, undo)

    def _wait(self, seq: int) -> None:
        if seq:
            self._journal.wait(seq)  # type: ignore[union-attr]

    def _append(self, ops: list[bytes], undo: list[tuple]) -> int:
        if not ops or self._journal is None:
            return 0
        line = jr.frame(b'{"x":[' + b",".join(ops) + b"]}")
        try:
            return self._journal.append(line)
        except BaseException:
            self._rollback(undo)
            raise

    def _rollback(self, undo: list[tuple]) -> None:
        for entry in reversed(undo):
            kind, table = entry[0], entry[1]
            rows = self._tables.setdefault(table, {})
            if kind == "row":
                _, _, doc_id, old = entry
                if old is None:
                    rows.pop(doc_id, None)
                else:
                    rows[doc_id] = old
            elif kind == "table":
                self._tables[table] = entry[2]
            elif kind == "next":
                self._next_ids[table] = entry[2]

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[DatabaseManager]:
        """Group writes: all or none become durable, with one journal line.

        The calling thread holds the store's lock for the whole block; keep it short.
        An exception inside the block rolls every change back.

        ``wait=False`` returns once the line is queued for the journal, before its
        sync: the next write that waits (or a checkpoint, or close) makes it durable,
        and a crash before that loses it together with every later unsynced write
        (lines reach the file in order and every sync covers all earlier lines, so
        what survives is always a prefix of the journal: no waited write is ever on
        disk without every line queued before it). For changes whose loss recovery
        handles anyway; the change is visible to readers at once.
        """
        with self._lock:
            self._check_open()
            if self._txn is not None:  # nested: part of the outer transaction
                yield self
                return
            self._txn, self._undo, self._txn_changes = [], [], {}
            try:
                yield self
            except BaseException:
                self._rollback(self._undo)
                self._txn, self._undo, self._txn_changes = None, [], {}
                raise
            ops, undo, changes = self._txn, self._undo, self._txn_changes
            self._txn, self._undo, self._txn_changes = None, [], {}
            seq = self._append(ops, undo)
        if wait:
            self._wait(seq)
        self._announce(changes)

    # ------------------------------------------------------------------ writes
    def insert(self, table: str, doc: Mapping[str, Any], *, wait: bool = True) -> int:
        return self.insert_many(table, [doc], wait=wait)[0]

    def insert_many(
        self, table: str, docs: Iterable[Mapping[str, Any]], *, wait: bool = True
    ) -> list[int]:
        """Insert documents; returns their ids, once durable.

        ``wait=False`` returns once the line is queued for the journal, before its
        sync, with the same contract as ``transaction(wait=False)``: visible at once,
        durable with the next write that waits (or a checkpoint, or close), lost in a
        crash before that together with every later unsynced write. Inside a
        transaction the transaction decides.
        """
        schema = self._schema(table)
        encoded = encode_new_docs(schema, list(docs), iso_utc(self.clock()))
        with self._lock:
            self._check_open()
            rows = self._rows(table)
            first = self._next_ids.get(table, 1)
            undo: list[tuple] = [("next", table, first)]
            ops, ids = [], []
            for i, raw in enumerate(encoded):
                doc_id = first + i
                rows[doc_id] = _loads(raw)
                undo.append(("row", table, doc_id, None))
                ops.append(_dumps(["p", table, doc_id])[:-1] + b"," + raw + b"]")
                ids.append(doc_id)
            self._next_ids[table] = first + len(encoded)
            seq = self._commit(ops, undo)
            changed = self._changed(table, ids)
        if wait:
            self._wait(seq)
        self._announce(changed)
        return ids

    def update(self, table: str, fields: Fields, where: Where) -> list[int]:
        """Set ``fields`` (a mapping, or a callable that edits a copy) on matching docs."""
        schema = self._schema(table)
        if isinstance(fields, Mapping):
            patch: dict | None = _loads(self._encode_fields(table, fields))
            fn = None
        elif callable(fields):
            patch, fn = None, fields
        else:
            raise TypeError("fields must be a mapping or a callable")
        with self._lock:
            self._check_open()
            rows = self._rows(table)
            ids = self._select(rows, where)
            now = iso_utc(self.clock())
            ops, undo = [], []
            try:
                for doc_id in ids:
                    old = rows[doc_id]
                    if patch is not None:
                        new = dict(old)
                        new.update(patch)
                    else:
                        new = _copy(old)
                        fn(new)  # type: ignore[misc]
                    new["updated_at"] = now
                    raw = self._encode_doc(schema, new)
                    undo.append(("row", table, doc_id, old))
                    rows[doc_id] = _loads(raw) if fn else new
                    ops.append(_dumps(["p", table, doc_id])[:-1] + b"," + raw + b"]")
            except BaseException:
                self._rollback(undo)
                raise
            seq = self._commit(ops, undo)
            changed = self._changed(table, ids)
        self._wait(seq)
        self._announce(changed)
        return ids

    def _encode_fields(self, table: str, fields: Mapping) -> bytes:
        return encode_fields(table, fields)

    def upsert(self, table: str, doc: Mapping[str, Any], where: Where) -> list[int]:
        """Update matching docs with ``doc``'s fields, or insert ``doc`` if none match."""
        with self._lock:
            ids = self._select(self._rows(table), where)
            if ids:
                return self.update(table, doc, ids)
            return [self.insert(table, doc)]

    def remove(self, table: str, where: Where) -> list[int]:
        with self._lock:
            self._check_open()
            rows = self._rows(table)
            ids = self._select(rows, where)
            ops, undo = [], []
            for doc_id in ids:
                undo.append(("row", table, doc_id, rows.pop(doc_id)))
                ops.append(_dumps(["d", table, doc_id]))
            seq = self._commit(ops, undo)
            changed = self._changed(table, ids)
        self._wait(seq)
        self._announce(changed)
        return ids

    def truncate(self, table: str) -> None:
        with self._lock:
            self._check_open()
            rows = self._rows(table)
            undo = [("table", table, rows)]
            self._tables[table] = {}
            seq = self._commit([_dumps(["c", table])], undo)
            changed = self._changed(table, None)
        self._wait(seq)
        self._announce(changed)

    def owners_alive(self, origins: Iterable[str]) -> set[str]:
        """Which of these writers are alive: only this process writes here."""
        return {o for o in origins if o == self.origin}

    def exclusive(self, name: str) -> None:
        """Inside a transaction: hold ``name`` until it ends (here the transaction
        holds the store's lock already: nothing to do)."""
        with self._lock:
            if self._txn is None:
                raise RuntimeError("exclusive() must be called inside store.transaction()")

    # ------------------------------------------------------------------ compare and set
    def update_if(self, table: str, doc_ids: Iterable[int], fields: Mapping[str, Any], *,
                  when: Mapping[str, Iterable[Any]], incr: Iterable[str] = (),
                  skip_locked: bool = False, wait: bool = True,
                  notify: bool = True) -> list[Document]:
        """Set ``fields`` on those of ``doc_ids`` whose every ``when`` field holds one of
        its allowed values (a missing field counts as None), adding 1 to each ``incr``
        field (a missing or non-integer one counts as 0), as one atomic step. Returns the
        updated documents (as written, in id order). ``skip_locked``: rows another
        transaction holds are left alone (PostgreSQL; never the case here). ``notify``:
        whether other processes hear of the change (PostgreSQL; there are none here)."""
        rules = [(k, list(v)) for k, v in when.items()]
        bumps = list(incr)
        out: list[Document] = []
        with self.transaction(wait=wait):
            for doc in self.lock(table, doc_ids):
                if not all(doc.get(k) in allowed for k, allowed in rules):
                    continue
                patch = dict(fields)
                for name in bumps:
                    value = doc.get(name)
                    patch[name] = (value if isinstance(value, int)
                                   and not isinstance(value, bool) else 0) + 1
                self.update(table, patch, doc.doc_id)
                new = dict(doc)
                new.update(patch)
                out.append(Document(new, doc.doc_id))
        return out

    # ------------------------------------------------------------------ locks, watchers
    def lock(self, table: str, doc_ids: Iterable[int], *,
             skip_locked: bool = False) -> list[Document]:
        """Inside a transaction: the current documents of ``doc_ids`` that exist (in id
        order), held until the transaction ends. Here the transaction already holds the store's lock
        (writers are serialised), so nothing is ever skipped; on PostgreSQL the rows are
        locked (``FOR UPDATE [SKIP LOCKED]``). Outside a transaction: RuntimeError."""
        with self._lock:
            self._check_open()
            if self._txn is None:
                raise RuntimeError("lock() must be called inside store.transaction()")
            rows = self._rows(table)
            ids = self._select(rows, list(doc_ids))
            return [Document(_copy(rows[i]), i) for i in sorted(set(ids))]

    def watch(self, table: str, callback: WatchCallback) -> None:
        """Call ``callback(table, doc_ids, origin)`` after each commit that changed rows
        of ``table`` (``doc_ids`` None: the table was truncated; ``origin`` is
        :attr:`origin`). Callbacks run in the writing thread, after the commit; one
        that raises is logged and the others still run."""
        self._schema(table)
        with self._lock:
            self._watchers.setdefault(table, []).append(callback)

    def _changed(self, table: str, ids: list[int] | None) -> tuple | None:
        """Under the lock, after a write: what to announce once it is committed (None
        when nobody watches, or inside a transaction, which announces at its end)."""
        if not self._watchers.get(table):
            return None
        if self._txn is None:
            return ((table, None if ids is None else list(ids)),)
        known = self._txn_changes.get(table, set())
        if ids is None or known is None:
            self._txn_changes[table] = None
        else:
            known.update(ids)
            self._txn_changes[table] = known
        return None

    def _announce(self, changes: Any) -> None:
        if not changes:
            return
        items = changes.items() if isinstance(changes, dict) else changes
        for table, ids in items:
            if ids is not None:
                ids = sorted(ids)
                if not ids:
                    continue
            for callback in list(self._watchers.get(table, ())):
                try:
                    callback(table, ids, self.origin)
                except Exception:  # noqa: BLE001 - the write is committed; others still run
                    log.exception("store watcher of %s failed", table)

    # ------------------------------------------------------------------ reads
    def get(self, table: str, doc_id: int) -> Document | None:
        with self._lock:
            doc = self._rows(table).get(doc_id)
            return None if doc is None else Document(_copy(doc), doc_id)

    def get_many(self, table: str, doc_ids: Iterable[int]) -> list[Document]:
        """The records of those ids that exist (one read for many)."""
        with self._lock:
            rows = self._rows(table)
            return [Document(_copy(rows[i]), i) for i in dict.fromkeys(doc_ids) if i in rows]

    def search(self, table: str, cond: Callable[[Mapping], bool] | Mapping) -> list[Document]:
        match = self._matcher(cond)
        with self._lock:
            rows = self._rows(table)
            hits = [(i, d) for i, d in rows.items() if match(d)]
            return [Document(_copy(d), i) for i, d in hits]

    def search_one(self, table: str, cond: Callable[[Mapping], bool] | Mapping) -> Document | None:
        match = self._matcher(cond)
        with self._lock:
            for i, d in self._rows(table).items():
                if match(d):
                    return Document(_copy(d), i)
        return None

    def all(self, table: str) -> list[Document]:
        with self._lock:
            return [Document(_copy(d), i) for i, d in self._rows(table).items()]

    def count(self, table: str, cond: Callable[[Mapping], bool] | Mapping | None = None) -> int:
        with self._lock:
            rows = self._rows(table)
            if cond is None:
                return len(rows)
            match = self._matcher(cond)
            return sum(1 for d in rows.values() if match(d))

    def tables(self) -> list[str]:
        with self._lock:
            return sorted(set(self.schemas) | set(self._tables))

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> dict[str, Any]:
        """Write a snapshot atomically and drop the journals it covers."""
        if self._journal is None or self.data_dir is None:
            return {"checkpointed": False}
        with self._ckpt_lock:
            t0 = time.perf_counter()
            with self._lock:
                if self._closed and self._journal._fd < 0:
                    return {"checkpointed": False}
                tables = {name: dict(rows) for name, rows in self._tables.items()}
                next_ids = dict(self._next_ids)
                gen = self._journal.rotate()
            blocked = time.perf_counter() - t0
            tables[jr.META_TABLE] = {
                1: {"generation": gen, "next_ids": next_ids, "schema_version": SCHEMA_VERSION}
            }
            payload = orjson.dumps(tables, option=orjson.OPT_NON_STR_KEYS)
            jr.write_snapshot(self.data_dir, payload)
            for old_gen, path in jr.list_journals(self.data_dir):
                if old_gen < gen:
                    path.unlink(missing_ok=True)
            jr.fsync_dir(self.data_dir)
            self._snapshot_bytes = len(payload)
            self._last_checkpoint = time.monotonic()
            total = time.perf_counter() - t0
            self.checkpoint_timings.observe(total)
            return {
                "checkpointed": True,
                "generation": gen,
                "rows": sum(len(r) for r in tables.values()) - 1,
                "bytes": len(payload),
                "writers_blocked_s": blocked,
                "total_s": total,
            }

    def _checkpoint_due(self) -> bool:
        j = self._journal
        if j is None or j.bytes_written == 0:
            return False
        if j.bytes_written >= max(self._checkpoint_bytes, self._snapshot_bytes):
            return True
        return time.monotonic() - self._last_checkpoint >= self._checkpoint_interval_s

    def _flush_loop(self) -> None:
        """Write out what nobody waited for: every ``flush_interval_s``, or at once when
        the buffer passes ``journal.KICK_BYTES``."""
        j = self._journal
        assert j is not None
        while not self._stop.is_set():
            j.kick.wait(timeout=self._flush_interval_s)
            j.kick.clear()
            try:
                j.flush_pending()
            except Exception:  # the journal latches the error; every writer now sees it
                log.exception("store journal flush failed")
                self._stop.wait(timeout=1.0)

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(timeout=1.0):
            try:
                if self._checkpoint_due():
                    self.checkpoint()
            except Exception:  # logged, retried on the next tick
                log.exception("store checkpoint failed")

    def stats(self) -> dict[str, Any]:
        j = self._journal
        with self._lock:
            out: dict[str, Any] = {
                "backend": "tinydb" if self.durable else "memory",
                "durable": self.durable,
                "data_dir": str(self.data_dir) if self.data_dir else None,
                "rows": {t: len(r) for t, r in self._tables.items()},
            }
        if j is not None:
            out.update(
                journal_generation=j.generation,
                journal_bytes=j.bytes_written,
                journal_syncs=j.syncs,
                journal_records=j.records,
                snapshot_bytes=self._snapshot_bytes,
            )
        return out

    @property
    def sync_timings(self) -> jr.Timings | None:
        """The journal's group-commit (write + fsync) durations; None in memory."""
        j = self._journal
        return j.sync_timings if j is not None else None

    # ------------------------------------------------------------------ close
    def close(self, *, checkpoint: bool = True) -> None:
        """Flush, checkpoint (unless told not to) and release the folder. Safe twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._journal is not None:
            self._journal.kick.set()
        for thread in (self._flush_thread, self._ckpt_thread):
            if thread is not None:
                thread.join(timeout=30)
        try:
            if self._journal is not None:
                try:
                    self._journal.flush()
                    if checkpoint:
                        self.checkpoint()
                finally:
                    self._journal.close()
        finally:
            if self._dirlock is not None:
                self._dirlock.release()

    def __enter__(self) -> DatabaseManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------- default
_default: DatabaseManager | None = None
_default_lock = threading.Lock()


def default_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-dir`` if given, else ``OLOL_DATA_DIR``, else ``$XDG_DATA_HOME/olol``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("OLOL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(xdg) / "olol"


def configure_db(db: DatabaseManager) -> DatabaseManager:
    """Install the process default that ``get_db()`` returns (called once at start-up)."""
    global _default
    with _default_lock:
        _default = db
    return db


def get_db() -> DatabaseManager:
    """The configured default store; opens the default folder on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = DatabaseManager(default_data_dir())
        return _default


def configured_db() -> DatabaseManager | None:
    """The default installed with :func:`configure_db`, if any (never opens one)."""
    with _default_lock:
        return _default


def reset_default_db() -> None:
    """Forget the process default (it is not closed); for tests and shutdown."""
    global _default
    with _default_lock:
        _default = None

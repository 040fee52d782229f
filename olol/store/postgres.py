"""``PostgresStore``: the olol tables in PostgreSQL, for several proxies on one database.

The same contract as :class:`olol.store.DatabaseManager` (see :class:`olol.interfaces.Store`)
on psycopg 3 and its connection pool, imported when a store is built, so olol imports
without them.

Layout: one table per olol table, ``olol_<name> (doc_id bigint identity primary key,
doc jsonb)`` with a GIN index (``jsonb_path_ops``) on ``doc``, and ``olol_meta (key,
value jsonb)`` holding ``schema_version``. The tables are created, and migrated, on start
under a transaction-level advisory lock, so proxies starting together do not race; a
database written by a newer olol is refused.

Queries: an id or ids select on ``doc_id``; a mapping's scalar fields are pushed down as
``doc @> {...}`` (JSON equality; fields whose value is an object or a list, which must
match exactly, not by containment, are checked in Python on the rows the rest
selected); a callable is evaluated in Python on every row. An update that runs Python
(a callable ``fields`` or ``where``) locks the rows it reads (``FOR UPDATE``).

Transactions: :meth:`PostgresStore.transaction` holds one pooled connection for the
calling thread; every store call that thread makes inside the block runs on it. Outside a
block each write is a short transaction of its own and each read one autocommit statement.

Changes: every write records the ids it touched; just before the commit, the store sends
``pg_notify('olol_changes', 'origin|table|id,id,...')`` (``*`` for "the whole table"), and
after it calls this process's own watchers. One thread, ``olol-store-listen``, on a
connection of its own, delivers the other processes' notices to the watchers.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from tinydb.table import Document

from olol.store import journal as jr
from olol.store.database import (
    StoreClosedError,
    StoreUnavailableError,
    WatchCallback,
    encode_doc,
    encode_fields,
    encode_new_docs,
    iso_utc,
    schema_of,
)
from olol.store.schema import (
    DEFAULT_SCHEMAS,
    SCHEMA_VERSION,
    SchemaError,
    TableSchema,
)

log = logging.getLogger(__name__)

CHANNEL = "olol_changes"
META_TABLE = "olol_meta"
TABLE_PREFIX = "olol_"
#: a notice's payload stays below this (PostgreSQL refuses 8,000 bytes and more)
MAX_NOTICE_BYTES = 7000
#: ``origin`` of the "reload the whole table" calls made after the listener reconnects
RELOAD_ORIGIN = "*"
INSTALL_HINT = "pip install 'olol[postgresql]'"

# advisory lock keys: schema creation and migration; upserts that found nothing
_SCHEMA_LOCK = 0x6F6C6F6C5F736368
_UPSERT_LOCK = 0x6F6C6F6D
# Tables written on every request whose readers go by doc id (the queue keeps its own
# RAM indexes): a GIN index over the whole document would cost more on each write
# (about 0.3 ms of the server's time per claim) than it saves the rare field query.
UNINDEXED_TABLES = frozenset({"inference_queue"})
_PRESENCE_LOCK = 0x6F6C6F70  # (this, hashtext(origin)): held while a process is alive
_EXCLUSIVE_LOCK = 0x6F6C6F78  # (this, hashtext(name)): exclusive()
_LISTEN_POLL_S = 0.25  # how often the listener looks at its stop flag
MAX_NOTICE_BATCH = 2_000  # notices handed to the watchers in one go, at most
_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")
# a \u0000 escape that is not itself an escaped backslash followed by "u0000"
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

#: ``MIGRATIONS[v](conn)`` brings a database at schema version ``v`` to ``v + 1``
MIGRATIONS: dict[int, Callable[[Any], None]] = {}


def _driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg.sql
        import psycopg_pool
    except ImportError as exc:
        raise jr.StoreError(
            f"the PostgreSQL store needs psycopg 3 and psycopg_pool: {INSTALL_HINT}"
        ) from exc
    return psycopg, psycopg_pool


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN (URL or ``key=value`` form), never its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a malformed DSN is reported when connecting
        return "postgresql (malformed DSN)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = params.get("dbname")
    return f"{host}:{port}" + (f"/{dbname}" if dbname else "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_text(table: str, raw: bytes) -> None:
    if b"\\u0000" in raw and _NUL.search(raw):
        raise SchemaError(f"table {table!r}: text must not contain NUL characters (\\u0000); "
                          "PostgreSQL cannot store them")


def _pushable(value: Any) -> bool:
    """A value ``doc @> {...}`` compares by JSON equality as Python's ``==`` does."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return _INT8_MIN <= value <= _INT8_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    return False


@dataclass
class _Plan:
    """Which rows a ``where`` selects: ``sql`` (with ``params``) narrows them in the
    database, ``match`` (when not None) filters the rows in Python, ``ids`` (when not
    None) gives the order of the answer (ids as the caller listed them)."""

    sql: str = "TRUE"
    params: tuple = ()
    match: Callable[[Mapping], bool] | None = None
    ids: list[int] | None = None


@dataclass
class _Tx:
    conn: Any
    changes: dict[str, set[int] | None] = field(default_factory=dict)


def _ids(where: Iterable) -> list[int]:
    out = []
    for i in where:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"document ids must be integers, got {i!r}")
        out.append(i)
    return list(dict.fromkeys(out))


def _match_items(items: list[tuple[Any, Any]]) -> Callable[[Mapping], bool]:
    return lambda doc: all(k in doc and doc[k] == v for k, v in items)


def _cond_plan(cond: Any) -> _Plan:
    """The plan of a search condition: a mapping or a callable (as DatabaseManager)."""
    if isinstance(cond, Mapping):
        pushed, rest = {}, []
        for key, value in cond.items():
            if isinstance(key, str) and _pushable(value):
                pushed[key] = value
            else:
                rest.append((key, value))
        plan = _Plan(match=_match_items(rest) if rest else None)
        if pushed:
            plan.sql, plan.params = "doc @> %s::jsonb", (orjson.dumps(pushed).decode(),)
        return plan
    if callable(cond):
        return _Plan(match=cond)
    raise TypeError(f"expected a query, a callable or a mapping, got {type(cond).__name__}")


def _where_plan(where: Any) -> _Plan:
    if isinstance(where, bool):
        raise TypeError("expected a document id, ids or a query, got bool")
    if isinstance(where, int):
        if not _INT8_MIN <= where <= _INT8_MAX:
            return _Plan(sql="FALSE", ids=[])
        return _Plan(sql="doc_id = %s", params=(where,), ids=[where])
    if isinstance(where, Mapping) or callable(where):
        return _cond_plan(where)
    if isinstance(where, Iterable) and not isinstance(where, (str, bytes)):
        ids = [i for i in _ids(where) if _INT8_MIN <= i <= _INT8_MAX]
        return _Plan(sql="doc_id = ANY(%s)", params=(ids,), ids=ids)
    raise TypeError(f"expected a document id, ids or a query, got {type(where).__name__}")


def _validate_patch(schema: TableSchema, patch: dict) -> SchemaError | None:
    """What validating a stored (valid) document with ``patch`` applied would raise: only
    the fields the patch sets can fail."""
    sub = TableSchema(schema.name, {k: f for k, f in schema.fields.items() if k in patch})
    try:
        sub.validate(patch)
    except SchemaError as exc:
        return exc
    return None


class PostgresStore:
    """The olol tables in one PostgreSQL database (see the module's docstring).

    :param dsn: a libpq connection string or ``postgresql://`` URL.
    :param clock: seconds since the epoch, for the ``created_at``/``updated_at`` stamps.
    :param schemas: tables beyond (or replacing) the default ones.
    :param min_size: connections the pool keeps open; ``max_size``: most it opens.
    :param connect_timeout: seconds to connect, and to wait for a pooled connection,
        before a call raises :class:`StoreUnavailableError`.
    :param origin: this process's name in change notices (default: random hex).
    :param max_waiting: callers that may wait for a pooled connection (beyond: refused).
    """

    data_dir = None  # no folder: request statistics keep no log of their own here
    shared = True  # several proxies may use one database at once

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], float] = time.time,
        schemas: Mapping[str, TableSchema] | None = None,
        min_size: int = 2,
        max_size: int = 16,
        connect_timeout: float = 5.0,
        origin: str | None = None,
        max_waiting: int = 1024,
    ) -> None:
        psycopg, psycopg_pool = _driver()
        # The pool logs each failed connection attempt over several lines; the store
        # reports the outage itself (StoreUnavailableError, the listener's warnings).
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self._psycopg, self._pool_mod = psycopg, psycopg_pool
        self.clock = clock
        self.origin = origin or secrets.token_hex(8)
        if "|" in self.origin or not self.origin.isprintable() or self.origin == RELOAD_ORIGIN:
            raise ValueError(f"origin must be printable, without '|', not {RELOAD_ORIGIN!r}")
        self.schemas: dict[str, TableSchema] = dict(DEFAULT_SCHEMAS)
        if schemas:
            self.schemas.update(schemas)
        for name in self.schemas:
            self._check_name(name)
        self.where = describe_dsn(dsn)
        self._dsn = dsn
        self._connect_timeout = float(connect_timeout)
        self._lock = threading.Lock()  # watchers, the listener's state, closing
        self._local = threading.local()  # .tx: the calling thread's transaction
        self._watchers: dict[str, list[WatchCallback]] = {}
        self._created: set[str] = set()
        self._closed = False
        self._stop = threading.Event()
        self._listen_thread: threading.Thread | None = None
        self._listen_ready = threading.Event()
        self._listen_connected = False
        self._listen_late = False  # watch() stopped waiting for the first LISTEN
        self._listens = 0  # LISTENs established so far
        self._last_connect_error: BaseException | None = None
        store = self

        class _Connection(psycopg.Connection):  # type: ignore[name-defined]
            """Remembers why the last connection attempt failed (for error messages)."""

            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = super().connect(*args, **kwargs)
                except psycopg.Error as exc:
                    store._last_connect_error = exc
                    raise
                store._last_connect_error = None
                return conn

        self._conn_kwargs = {
            "connect_timeout": max(2, math.ceil(self._connect_timeout)),
            "application_name": f"olol-{self.origin}"[:63],
        }
        self._pool = psycopg_pool.ConnectionPool(
            dsn,
            connection_class=_Connection,
            kwargs={**self._conn_kwargs, "autocommit": True},
            min_size=min_size,
            max_size=max(min_size, max_size),
            open=False,
            configure=self._configure,
            name="olol-store",
            timeout=self._connect_timeout,
            max_waiting=max_waiting,
            # a connection that cannot be made is retried with a growing delay until
            # this passes; then the next caller starts afresh: keeps the wait after an
            # outage short instead of growing with the outage
            reconnect_timeout=max(10.0, 2 * self._connect_timeout),
        )
        try:
            try:
                self._pool.open(wait=True, timeout=self._connect_timeout)
            except psycopg.Error as exc:
                raise self._map_error(exc, None) from exc
            self._setup()
        except BaseException:
            self._closed = True
            self._pool.close(timeout=1.0)
            raise

    # ------------------------------------------------------------------ connections
    @staticmethod
    def _configure(conn: Any) -> None:
        from psycopg.types.json import set_json_dumps, set_json_loads

        set_json_dumps(orjson.dumps, conn)
        set_json_loads(orjson.loads, conn)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _map_error(self, exc: BaseException, conn: Any) -> jr.StoreError:
        """The store's error for a driver error: unavailable when the server cannot be
        reached or the connection is lost; a plain StoreError otherwise."""
        if self._closed:
            return StoreClosedError("the store is closed")
        where = f"PostgreSQL at {self.where}"
        pool = self._pool_mod
        if isinstance(exc, pool.TooManyRequests):
            return StoreUnavailableError(f"{where}: too many callers waiting for a "
                                         f"connection ({_one_line(exc)})")
        if isinstance(exc, pool.PoolTimeout):
            cause = self._last_connect_error
            detail = (f"cannot connect: {_one_line(cause)}" if cause is not None
                      else f"no free connection within {self._connect_timeout:g} s")
            return StoreUnavailableError(f"{where} is unavailable: {detail}")
        if isinstance(exc, pool.PoolClosed):
            return StoreClosedError("the store is closed")
        broken = conn is None or conn.closed or conn.broken
        if broken and isinstance(exc, (self._psycopg.OperationalError,
                                       self._psycopg.InterfaceError)):
            return StoreUnavailableError(f"{where} is unavailable: {_one_line(exc)}")
        return jr.StoreError(f"{where}: {_one_line(exc)}")

    @contextmanager
    def _errors(self, conn: Any) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            raise self._map_error(exc, conn) from exc

    def _getconn(self) -> Any:
        self._check_open()
        try:
            return self._pool.getconn()
        except self._psycopg.Error as exc:
            raise self._map_error(exc, None) from exc

    def _putconn(self, conn: Any) -> None:
        with suppress(Exception):  # a broken connection is dropped by the pool
            self._pool.putconn(conn)

    def _stale(self, exc: BaseException, conn: Any) -> bool:
        """True when a pooled connection failed at its first statement because it was
        already dead (the server restarted while it sat idle): the call may be retried
        on another one, after the pool has checked its idle connections."""
        if not (conn.closed or conn.broken) or not isinstance(
                exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)):
            return False
        with suppress(Exception):
            self._pool.check()
        return True

    @contextmanager
    def _pooled(self) -> Iterator[Any]:
        """A pooled connection (for the schema's set-up and upkeep)."""
        conn = self._getconn()
        try:
            yield conn
        finally:
            self._putconn(conn)

    def _query(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(conn)`` for a read: on the thread's transaction's connection, or as one
        autocommit statement on a pooled one (retried once on a stale connection)."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            self._check_open()
            with self._errors(tx.conn):
                return fn(tx.conn)
        for attempt in (0, 1):
            conn = self._getconn()
            try:
                return fn(conn)
            except self._psycopg.Error as exc:
                if attempt == 0 and self._stale(exc, conn):
                    continue
                raise self._map_error(exc, conn) from exc
            finally:
                self._putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _write(self, *, wait: bool = True) -> Iterator[_Tx]:
        """The transaction for a write: the thread's, or one of its own."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            self._check_open()
            with self._errors(tx.conn):
                yield tx
            return
        with self.transaction(wait=wait):
            yield self._local.tx

    def _begin(self, wait: bool) -> Any:
        """A pooled connection in a new transaction (retried once on a stale one)."""
        begin = "BEGIN" if wait else "BEGIN; SET LOCAL synchronous_commit TO OFF"
        for attempt in (0, 1):
            conn = self._getconn()
            try:
                conn.execute(begin)
                return conn
            except self._psycopg.Error as exc:
                self._putconn(conn)
                if attempt == 0 and self._stale(exc, conn):
                    continue
                raise self._map_error(exc, conn) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[PostgresStore]:
        """Group calls: every store call this thread makes inside the block runs in one
        database transaction (it sees its own writes), committed at the end, rolled back
        by an exception. A nested block joins the outer one.

        ``wait=False`` commits without waiting for the WAL flush (``synchronous_commit
        off``): visible to everyone at once; a crash of the database server within a
        fraction of a second may lose it (never half of it).
        """
        self._check_open()
        if getattr(self._local, "tx", None) is not None:
            yield self
            return
        conn = self._begin(wait)
        tx = _Tx(conn)
        self._local.tx = tx
        try:
            try:
                yield self
            except BaseException:
                if not (conn.closed or conn.broken):
                    with suppress(Exception):
                        conn.execute("ROLLBACK")
                raise
            with self._errors(conn):  # the notices and the commit: one round trip
                conn.execute(self._commit_sql(tx.changes))
        finally:
            self._local.tx = None
            self._putconn(conn)
        self._announce(tx.changes)

    # ------------------------------------------------------------------ schema
    def _check_name(self, name: Any) -> None:
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise ValueError(f"table name {name!r}: PostgreSQL tables need letters, digits "
                             "and underscores, at most 50")

    @staticmethod
    def _t(table: str) -> str:
        return f'"{TABLE_PREFIX}{table}"'

    def _create(self, conn: Any, table: str) -> None:
        t = self._t(table)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (doc_id bigint GENERATED BY DEFAULT "
                     "AS IDENTITY PRIMARY KEY, doc jsonb NOT NULL)")
        if table not in UNINDEXED_TABLES:
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{TABLE_PREFIX}{table}_doc" ON {t} '
                         "USING gin (doc jsonb_path_ops)")
        self._created.add(table)

    def _setup(self) -> None:
        """Create the tables, or migrate them, under the schema lock; refuse a database
        written by a newer olol."""
        with self._pooled() as conn, self._errors(conn), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                         "(key text PRIMARY KEY, value jsonb)")
            row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'"
                               ).fetchone()
            version = row[0] if row else None
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                        or version > SCHEMA_VERSION):
                raise jr.StoreError(
                    f"store postgresql {self.where} has schema version {version!r}; "
                    f"this olol understands up to {SCHEMA_VERSION}"
                )
            while version is not None and version < SCHEMA_VERSION:
                log.info("store %s: migrating schema %d -> %d", self.where, version, version + 1)
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('schema_version', "
                         "%s::jsonb) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                         (str(SCHEMA_VERSION),))
            for name in self.schemas:
                self._create(conn, name)

    def schema_version(self) -> int | None:
        """The schema version recorded in the database."""
        row = self._query(lambda conn: conn.execute(
            f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchone())
        return None if row is None else row[0]

    def register_table(self, schema: TableSchema) -> None:
        """Add a table (for components with tables of their own), created if missing."""
        self._check_name(schema.name)
        with self._lock:
            self.schemas[schema.name] = schema
            if schema.name in self._created:
                return
        with self._pooled() as conn, self._errors(conn), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self._create(conn, schema.name)

    def _schema(self, table: str) -> TableSchema:
        return schema_of(self.schemas, table)

    def tables(self) -> list[str]:
        return sorted(self.schemas)

    # ------------------------------------------------------------------ selection
    def _rows(self, conn: Any, table: str, plan: _Plan, *, lock: bool = False,
              limit: int | None = None) -> list[tuple[int, dict]]:
        sql = f"SELECT doc_id, doc FROM {self._t(table)} WHERE {plan.sql} ORDER BY doc_id"
        if limit is not None and plan.match is None:
            sql += f" LIMIT {int(limit)}"
        if lock:
            sql += " FOR UPDATE"
        rows = conn.execute(sql, plan.params).fetchall()
        if plan.match is not None:
            rows = [r for r in rows if plan.match(r[1])]
        return self._ordered(plan, rows, key=lambda r: r[0])

    @staticmethod
    def _ordered(plan: _Plan, items: list, key: Callable[[Any], int] = lambda i: i) -> list:
        """``items`` in the order of the caller's ids (a query's: by id)."""
        if plan.ids is None:
            return sorted(items, key=key)
        by_id = {key(i): i for i in items}
        return [by_id[i] for i in plan.ids if i in by_id]

    # ------------------------------------------------------------------ writes
    def _note(self, tx: _Tx, table: str, ids: list[int] | None) -> None:
        known = tx.changes.get(table, set())
        if ids is None or known is None:
            tx.changes[table] = None
        elif ids:
            known.update(ids)
            tx.changes[table] = known

    def insert(self, table: str, doc: Mapping[str, Any], *, wait: bool = True) -> int:
        return self.insert_many(table, [doc], wait=wait)[0]

    def insert_many(self, table: str, docs: Iterable[Mapping[str, Any]], *,
                    wait: bool = True) -> list[int]:
        """Insert documents; returns their ids (increasing), once committed.

        ``wait=False`` commits without waiting for the WAL flush (see
        :meth:`transaction`); inside a transaction the transaction decides.
        """
        schema = self._schema(table)
        encoded = encode_new_docs(schema, list(docs), iso_utc(self.clock()))
        for raw in encoded:
            _check_text(table, raw)
        self._check_open()
        if not encoded:
            return []
        insert = (f"INSERT INTO {self._t(table)} (doc) SELECT v::jsonb FROM "
                  "unnest(%s::text[]) WITH ORDINALITY AS u(v, n) ORDER BY n RETURNING doc_id")
        values = [raw.decode() for raw in encoded]
        if getattr(self._local, "tx", None) is None and len(values) <= 100:
            # one statement, one round trip: the rows, their change notice, the commit
            lazy = "" if wait else ", set_config('synchronous_commit', 'off', true)"
            sql = (f"WITH i AS ({insert}), n AS (SELECT pg_notify('{CHANNEL}', %s::text || "
                   "string_agg(doc_id::text, ',' ORDER BY doc_id)) FROM i) "
                   f"SELECT i.doc_id, (SELECT count(*) FROM n){lazy} FROM i")
            rows = self._autocommit(sql, [values, f"{self.origin}|{table}|"])
            ids = sorted(r[0] for r in rows)
            self._announce({table: set(ids)})
            return ids
        with self._write(wait=wait) as tx:
            rows = tx.conn.execute(insert, (values,)).fetchall()
            ids = sorted(r[0] for r in rows)
            self._note(tx, table, ids)
        return ids

    def _autocommit(self, sql: str, args: list) -> list:
        """One statement as its own transaction on a pooled connection (callers make
        sure no transaction of this thread is open); its rows."""
        return self._query(lambda conn: conn.execute(sql, args).fetchall())

    def update(self, table: str, fields: Any, where: Any) -> list[int]:
        """Set ``fields`` (a mapping, or a callable that edits a copy) on matching docs."""
        schema = self._schema(table)
        if isinstance(fields, Mapping):
            raw = encode_fields(table, fields)
            _check_text(table, raw)
            patch: dict | None = orjson.loads(raw)
            fn = None
        elif callable(fields):
            patch, fn = None, fields
        else:
            raise TypeError("fields must be a mapping or a callable")
        plan = _where_plan(where)
        with self._write() as tx:
            conn = tx.conn
            now = iso_utc(self.clock())
            if patch is not None and plan.match is None:
                error = _validate_patch(schema, patch)
                if error is not None:  # as DatabaseManager: only when a row would change
                    if self._rows(conn, table, plan, limit=1):
                        raise error
                    return []
                full = orjson.dumps({**patch, "updated_at": now}).decode()
                rows = conn.execute(
                    f"UPDATE {self._t(table)} SET doc = doc || %s::jsonb WHERE {plan.sql} "
                    "RETURNING doc_id", (full, *plan.params)).fetchall()
                ids = self._ordered(plan, [r[0] for r in rows])
            else:
                ids, docs = [], []
                for doc_id, old in self._rows(conn, table, plan, lock=True):
                    if patch is not None:
                        new = dict(old)
                        new.update(patch)
                    else:
                        new = old  # decoded for this call: the caller's function edits it
                        fn(new)  # type: ignore[misc]
                    new["updated_at"] = now
                    raw = encode_doc(schema, new)
                    _check_text(table, raw)
                    ids.append(doc_id)
                    docs.append(raw.decode())
                if ids:
                    conn.execute(
                        f"UPDATE {self._t(table)} AS t SET doc = v.d::jsonb FROM "
                        "unnest(%s::bigint[], %s::text[]) AS v(id, d) WHERE t.doc_id = v.id",
                        (ids, docs))
            self._note(tx, table, ids)
        return ids

    def upsert(self, table: str, doc: Mapping[str, Any], where: Any) -> list[int]:
        """Update matching docs with ``doc``'s fields, or insert ``doc`` if none match
        (two processes upserting the same record at once insert it once)."""
        self._schema(table)
        plan = _where_plan(where)
        with self._write() as tx:
            found = self._rows(tx.conn, table, plan, lock=True)
            if not found:  # serialise the inserters of this table, then look again
                tx.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                (_UPSERT_LOCK, table))
                found = self._rows(tx.conn, table, plan, lock=True)
            if found:
                return self.update(table, doc, [r[0] for r in found])
            return [self.insert(table, doc)]

    def remove(self, table: str, where: Any) -> list[int]:
        self._schema(table)
        plan = _where_plan(where)
        with self._write() as tx:
            if plan.match is None:
                rows = tx.conn.execute(f"DELETE FROM {self._t(table)} WHERE {plan.sql} "
                                       "RETURNING doc_id", plan.params).fetchall()
                ids = self._ordered(plan, [r[0] for r in rows])
            else:
                ids = [r[0] for r in self._rows(tx.conn, table, plan, lock=True)]
                if ids:
                    tx.conn.execute(f"DELETE FROM {self._t(table)} WHERE doc_id = ANY(%s)",
                                    (ids,))
            self._note(tx, table, ids)
        return ids

    def truncate(self, table: str) -> None:
        """Remove every row (ids are not reused); watchers get ``doc_ids=None``."""
        self._schema(table)
        with self._write() as tx:
            tx.conn.execute(f"DELETE FROM {self._t(table)}")
            self._note(tx, table, None)

    # ------------------------------------------------------------------ reads
    def get(self, table: str, doc_id: int) -> Document | None:
        self._schema(table)
        if not isinstance(doc_id, int) or not _INT8_MIN <= doc_id <= _INT8_MAX:
            return None
        row = self._query(lambda conn: conn.execute(
            f"SELECT doc FROM {self._t(table)} WHERE doc_id = %s", (int(doc_id),)).fetchone())
        return None if row is None else Document(row[0], int(doc_id))

    def search(self, table: str, cond: Callable[[Mapping], bool] | Mapping) -> list[Document]:
        self._schema(table)
        plan = _cond_plan(cond)
        rows = self._query(lambda conn: self._rows(conn, table, plan))
        return [Document(d, i) for i, d in rows]

    def search_one(self, table: str, cond: Callable[[Mapping], bool] | Mapping
                   ) -> Document | None:
        self._schema(table)
        plan = _cond_plan(cond)
        rows = self._query(lambda conn: self._rows(conn, table, plan, limit=1))
        return Document(rows[0][1], rows[0][0]) if rows else None

    def all(self, table: str) -> list[Document]:
        return self.search(table, {})

    def count(self, table: str, cond: Callable[[Mapping], bool] | Mapping | None = None) -> int:
        self._schema(table)
        plan = _Plan() if cond is None else _cond_plan(cond)
        if plan.match is None:
            row = self._query(lambda conn: conn.execute(
                f"SELECT count(*) FROM {self._t(table)} WHERE {plan.sql}", plan.params
            ).fetchone())
            return int(row[0])
        return len(self._query(lambda conn: self._rows(conn, table, plan)))

    def get_many(self, table: str, doc_ids: Iterable[int]) -> list[Document]:
        """The documents of those ids that exist, in id order (one query)."""
        self._schema(table)
        ids = [i for i in _ids(doc_ids) if _INT8_MIN <= i <= _INT8_MAX]
        if not ids:
            return []
        rows = self._query(lambda conn: conn.execute(
            f"SELECT doc_id, doc FROM {self._t(table)} WHERE doc_id = ANY(%s) "
            "ORDER BY doc_id", (ids,)).fetchall())
        return [Document(d, i) for i, d in rows]

    # ------------------------------------------------------------------ compare and set
    def update_if(self, table: str, doc_ids: Iterable[int], fields: Mapping[str, Any], *,
                  when: Mapping[str, Iterable[Any]], incr: Iterable[str] = (),
                  skip_locked: bool = False, wait: bool = True,
                  notify: bool = True) -> list[Document]:
        """As :meth:`DatabaseManager.update_if`, in one statement (one round trip outside
        a transaction: the row locks, the check, the write, the change notice and the
        commit). With ``skip_locked``, rows another transaction holds are left alone.
        ``notify=False`` (outside a transaction): other processes are not told of this
        change (they learn the row's state with its next change); for writes only this
        process acts on."""
        schema = self._schema(table)
        raw = encode_fields(table, fields)
        _check_text(table, raw)
        patch = orjson.loads(raw)
        error = _validate_patch(schema, patch)
        if error is not None:
            raise error
        ids = sorted({i for i in _ids(doc_ids) if _INT8_MIN <= i <= _INT8_MAX})
        if not ids:
            return []
        t = self._t(table)
        conds, params = [], []
        for key, allowed in when.items():
            conds.append("COALESCE(doc -> %s::text, 'null'::jsonb) = ANY(%s::jsonb[])")
            params += [str(key), [orjson.dumps(v).decode() for v in allowed]]
        bump = ""
        for name in incr:
            bump += (" || jsonb_build_object(%s::text, CASE WHEN jsonb_typeof(doc -> %s::text) "
                     "= 'number' AND (doc ->> %s::text)::numeric = floor((doc ->> %s::text)"
                     "::numeric) THEN (doc ->> %s::text)::numeric::bigint ELSE 0 END + 1)")
            params += [str(name)] * 5
        full = orjson.dumps({**patch, "updated_at": iso_utc(self.clock())}).decode()
        update = (f"UPDATE {t} SET doc = doc || %s::jsonb{bump} WHERE doc_id IN "
                  f"(SELECT doc_id FROM {t} WHERE doc_id = ANY(%s) ORDER BY doc_id FOR UPDATE"
                  f"{' SKIP LOCKED' if skip_locked else ''})"
                  + "".join(f" AND {c}" for c in conds) + " RETURNING doc_id, doc")
        args = [full, *params[len(conds) * 2:], ids, *params[:len(conds) * 2]]
        tx = getattr(self._local, "tx", None)
        if tx is not None or len(ids) > 500:  # in a transaction, or notices to split
            with self._write(wait=wait) as wtx:
                with self._errors(wtx.conn):
                    rows = wtx.conn.execute(update, args).fetchall()
                self._note(wtx, table, [r[0] for r in rows])
            return [Document(d, i) for i, d in sorted(rows)]
        lazy = "" if wait else ", set_config('synchronous_commit', 'off', true)"
        if notify:
            sql = (f"WITH u AS ({update}), n AS (SELECT pg_notify('{CHANNEL}', %s::text || "
                   "string_agg(doc_id::text, ',' ORDER BY doc_id)) FROM u HAVING count(*) > 0) "
                   f"SELECT u.doc_id, u.doc, (SELECT count(*) FROM n){lazy} FROM u")
            rows = self._autocommit(sql, [*args, f"{self.origin}|{table}|"])
        else:
            rows = self._autocommit(f"WITH u AS ({update}) SELECT u.doc_id, u.doc{lazy} FROM u",
                                    args)
        done = sorted((r[0], r[1]) for r in rows)
        if done:
            self._announce({table: {i for i, _ in done}})
        return [Document(d, i) for i, d in done]

    # ------------------------------------------------------------------ locks
    def lock(self, table: str, doc_ids: Iterable[int], *,
             skip_locked: bool = False) -> list[Document]:
        """Inside a transaction: the current documents of ``doc_ids`` that exist (in id
        order), locked (``FOR UPDATE``) until the transaction ends. With ``skip_locked``,
        rows another transaction holds are left out instead of waited for. Outside a
        transaction: RuntimeError."""
        self._schema(table)
        self._check_open()
        tx = getattr(self._local, "tx", None)
        if tx is None:
            raise RuntimeError("lock() must be called inside store.transaction()")
        ids = [i for i in _ids(doc_ids) if _INT8_MIN <= i <= _INT8_MAX]
        sql = (f"SELECT doc_id, doc FROM {self._t(table)} WHERE doc_id = ANY(%s) "
               "ORDER BY doc_id FOR UPDATE" + (" SKIP LOCKED" if skip_locked else ""))
        with self._errors(tx.conn):
            rows = tx.conn.execute(sql, (ids,)).fetchall()
        return [Document(d, i) for i, d in rows]

    def exclusive(self, name: str) -> None:
        """Inside a transaction: wait until no other transaction (of any process) holds
        ``name``, then hold it until this one ends (one roll-up at a time, say)."""
        tx = getattr(self._local, "tx", None)
        if tx is None:
            raise RuntimeError("exclusive() must be called inside store.transaction()")
        with self._errors(tx.conn):
            tx.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                            (_EXCLUSIVE_LOCK, str(name)))

    def owners_alive(self, origins: Iterable[str]) -> set[str]:
        """Which of these processes (their :attr:`origin`) are alive now: those whose
        session holds its presence lock (taken by the change listener, so a process
        that watches nothing counts as gone; this process always counts as alive)."""
        names = sorted({str(o) for o in origins})
        if not names:
            return set()
        alive = {o for o in names if o == self.origin}
        rows = self._query(lambda conn: conn.execute(
            "SELECT o FROM unnest(%s::text[]) AS o WHERE EXISTS (SELECT 1 FROM pg_locks l "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
            "AND l.classid = %s::bigint::oid "
            "AND l.objid = (hashtext(o)::bigint & 4294967295)::oid)",
            (names, _PRESENCE_LOCK)).fetchall())
        return alive | {r[0] for r in rows}

    # ------------------------------------------------------------------ change notices
    def _commit_sql(self, changes: dict[str, set[int] | None]) -> Any:
        """``pg_notify`` of each change notice, then ``COMMIT``: one simple query."""
        sql = self._psycopg.sql
        payloads = []
        for table, ids in changes.items():
            head = f"{self.origin}|{table}|"
            if ids is None:
                payloads.append(head + "*")
                continue
            chunk: list[str] = []
            size = len(head)
            for i in sorted(ids):
                text = str(i)
                if chunk and size + len(text) + 1 > MAX_NOTICE_BYTES:
                    payloads.append(head + ",".join(chunk))
                    chunk, size = [], len(head)
                chunk.append(text)
                size += len(text) + 1
            if chunk:
                payloads.append(head + ",".join(chunk))
        if not payloads:
            return "COMMIT"
        notify = sql.SQL("SELECT pg_notify({}, {})")
        return sql.SQL("; ").join(
            [notify.format(sql.Literal(CHANNEL), sql.Literal(p)) for p in payloads]
            + [sql.SQL("COMMIT")])

    def _announce(self, changes: dict[str, set[int] | None]) -> None:
        for table, ids in changes.items():
            self._call_watchers(table, None if ids is None else sorted(ids), self.origin)

    def _call_watchers(self, table: str, ids: list[int] | None, origin: str) -> None:
        with self._lock:
            callbacks = list(self._watchers.get(table, ()))
        for callback in callbacks:
            try:
                callback(table, ids, origin)
            except StoreClosedError:
                return  # closed meanwhile (the proxy is stopping): nobody needs the news
            except Exception:  # noqa: BLE001 - the change is committed; others still run
                log.exception("store watcher of %s failed", table)

    def watch(self, table: str, callback: WatchCallback) -> None:
        """Call ``callback(table, doc_ids, origin)`` after every commit, by any process on
        this database, that changed rows of ``table``. This process's own changes are
        delivered in the writing thread after the commit (``origin`` is
        :attr:`origin`); other processes' in the ``olol-store-listen`` thread. ``doc_ids``
        None means "reload the whole table": after a truncate, and after the listener
        reconnects (notices may have been missed; ``origin`` is ``"*"`` then)."""
        self._schema(table)
        self._check_open()
        with self._lock:
            self._watchers.setdefault(table, []).append(callback)
            start = self._listen_thread is None
            if start:
                self._listen_thread = threading.Thread(
                    target=self._listen_loop, name="olol-store-listen", daemon=True)
                self._listen_thread.start()
        if start and not self._listen_ready.wait(self._connect_timeout):
            with self._lock:
                if not self._listen_ready.is_set():
                    self._listen_late = True  # its first LISTEN asks for a reload

    def _listen_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._psycopg.connect(self._dsn, autocommit=True, keepalives=1,
                                             keepalives_idle=10, keepalives_interval=5,
                                             keepalives_count=3, **self._conn_kwargs)
                conn.execute(f"LISTEN {CHANNEL}")
                # presence: held by this session while the process lives (owners_alive);
                # the server probes this session's socket, so a host that vanished
                # without closing it loses its presence within about 25 s
                conn.execute("SET tcp_keepalives_idle = 10")
                conn.execute("SET tcp_keepalives_interval = 5")
                conn.execute("SET tcp_keepalives_count = 3")
                conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                             (_PRESENCE_LOCK, self.origin))
                with self._lock:
                    reload = self._listens > 0 or self._listen_late
                    self._listens += 1
                    self._listen_connected = True
                    self._listen_ready.set()
                    tables = list(self._watchers)
                backoff = 0.1
                if reload:
                    for table in tables:
                        self._call_watchers(table, None, RELOAD_ORIGIN)
                while not self._stop.is_set():
                    batch = [n.payload for n in conn.notifies(timeout=_LISTEN_POLL_S,
                                                                stop_after=1)]
                    if batch:  # and what else has come meanwhile: one call per table
                        batch += [n.payload for n in conn.notifies(
                            timeout=0.0, stop_after=MAX_NOTICE_BATCH)]
                        self._receive_many(batch)
            except self._psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("store listener on %s: %s; reconnecting in %.1f s",
                                self.where, _one_line(exc), backoff)
            except Exception:  # noqa: BLE001 - a bug must not end the notices for good
                log.exception("store listener on %s failed; reconnecting", self.where)
            finally:
                self._listen_connected = False
                if conn is not None:
                    with suppress(Exception):
                        conn.close()
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)

    def _receive_many(self, payloads: list[str]) -> None:
        """Notices received together: one watcher call per origin and table, with the
        ids of all of them (None when any of them asked for a reload)."""
        grouped: dict[tuple[str, str], set[int] | None] = {}
        for payload in payloads:
            try:
                origin, table, rest = payload.split("|", 2)
                ids = None if rest == "*" else {int(i) for i in rest.split(",")}
            except ValueError:
                log.warning("store listener: malformed notice %r", payload[:200])
                continue
            if origin == self.origin:  # own changes were announced after their commit
                continue
            key = (origin, table)
            if key in grouped:
                known = grouped[key]
                grouped[key] = None if known is None or ids is None else known | ids
            else:
                grouped[key] = ids
        for (origin, table), got in grouped.items():
            self._call_watchers(table, None if got is None else sorted(got), origin)

    # ------------------------------------------------------------------ upkeep
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def durable(self) -> bool:
        return True

    @property
    def sync_timings(self) -> None:
        """The TinyDB store's fsync timings; PostgreSQL keeps its own (None here)."""
        return None

    def checkpoint(self) -> dict[str, Any]:
        """Nothing to do: PostgreSQL checkpoints itself."""
        return {"checkpointed": False, "reason": "postgresql checkpoints itself"}

    def stats(self) -> dict[str, Any]:
        """Backend, pool and listener figures, and rows per table (PostgreSQL's
        estimate, ``n_live_tup``; None while the database is unreachable)."""
        pool = self._pool.get_stats()
        size = pool.get("pool_size", 0)
        out: dict[str, Any] = {
            "backend": "postgresql",
            "durable": True,
            "data_dir": None,
            "database": self.where,
            "origin": self.origin,
            "pool_size": size,
            "pool_available": pool.get("pool_available", 0),
            "pool_in_use": size - pool.get("pool_available", 0),
            "requests_waiting": pool.get("requests_waiting", 0),
            "listen_connected": self._listen_connected,
            "rows": None,
        }
        if self._closed:
            return out
        try:
            rows = self._query(lambda conn: conn.execute(
                "SELECT relname, n_live_tup FROM pg_stat_user_tables "
                "WHERE relname LIKE 'olol\\_%'").fetchall())
        except jr.StoreError:
            return out
        known = {f"{TABLE_PREFIX}{t}": t for t in self.schemas}
        out["rows"] = {known[name]: int(n) for name, n in rows if name in known}
        return out

    def close(self, *, checkpoint: bool = True) -> None:
        """Stop the listener and close the pool. Safe twice; later calls raise
        :class:`StoreClosedError`. (``checkpoint`` is accepted for DatabaseManager's
        signature and ignored.)"""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._listen_thread
        if thread is not None:
            thread.join(timeout=self._connect_timeout + 5.0)
        self._pool.close(timeout=5.0)

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

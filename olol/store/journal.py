"""Write-ahead journal with group commit, atomic checkpoints and recovery.

Files in a data folder:

``LOCK``
    held with ``flock`` by the one process that owns the folder; holds its pid.
``db.json``
    the snapshot: a plain TinyDB file (``{table: {"<id>": document}}``) that stock
    ``TinyDB("db.json")`` opens. One extra table, ``__olol_meta__``, records the
    journal generation the snapshot covers and each table's next document id.
``journal.<generation>.jsonl``
    append-only records written after that snapshot. One line is one atomic
    operation: ``<crc32 as 8 hex digits> <json>\\n`` where the JSON is
    ``{"x": [op, ...]}`` and each op carries the *full* new state of one document
    (``["p", table, id, doc]`` put, ``["d", table, id]`` delete, ``["c", table]``
    clear). Full states make replay idempotent, so every crash point is safe.

Durability: a write returns only after the line holding it is on disk
(``fdatasync``). Writers that wait at the same moment share one sync: the first
waiter becomes the leader, writes everything buffered and syncs; the others
find their record durable when it is done (leader/follower group commit, no
timer window).

A writer may also choose not to wait (``wait=False`` in the store): its line is
buffered in order and reaches the file with the next flush, which any waiting
writer, a rotation (checkpoint) or close performs. Lines are written only by a
flush, in the order they were appended, and every flush syncs what it wrote, so
the durable journal is always a prefix of the appended lines: a line that
survives a crash implies that every line appended before it survived too, and a
lost unsynced line implies every later line is lost as well.

Recovery = load the snapshot, replay the journals of its generation and later
in order. A torn or corrupt last line (a crash mid-write) is cut off; anything
that is not a tail is a hard error, and a snapshot that does not parse makes
the store refuse to open rather than start empty.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

SNAPSHOT = "db.json"
LOCKFILE = "LOCK"
META_TABLE = "__olol_meta__"
_JOURNAL_RE = re.compile(r"^journal\.(\d+)\.jsonl$")


class StoreError(RuntimeError):
    """Base class of the store's own failures."""


class StoreLockedError(StoreError):
    """Another process (or another opener in this one) owns the data folder."""


class StoreCorruptError(StoreError):
    """A file of the store cannot be trusted; the store refuses to open."""


class StoreIOError(StoreError):
    """Writing the journal failed; the store accepts no more writes."""


class Timings:
    """Durations (seconds) counted in fixed buckets, with their sum: what an fsync or a
    checkpoint took, for the metrics collector to read at scrape time
    (:mod:`olol.metrics`). One bisect per event; the caller serialises :meth:`observe`
    (the journal holds its I/O lock), readers take a :meth:`snapshot` without a lock."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
              5.0, 10.0, 30.0)

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """``(counts per bucket, the last one above every bound; sum of seconds)``."""
        return list(self._counts), self._sum


def journal_name(gen: int) -> str:
    return f"journal.{gen:08d}.jsonl"


def frame(payload: bytes) -> bytes:
    """One journal line: the payload's CRC-32 as 8 hex digits, a space, the payload."""
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_line(line: bytes) -> list | None:
    """The ops of one complete line, or None when it is torn or corrupt."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        ops = orjson.loads(payload)["x"]
    except (ValueError, KeyError, TypeError):
        return None
    return ops if isinstance(ops, list) else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


@dataclass
class Recovered:
    tables: dict[str, dict[int, dict]] = field(default_factory=dict)
    next_ids: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    replayed: int = 0
    dropped_bytes: int = 0
    generation: int = 0


def apply_ops(tables: dict[str, dict[int, dict]], ops: list, next_ids: dict[str, int]) -> None:
    for op in ops:
        if (not isinstance(op, list) or len(op) < 2 or not isinstance(op[1], str)
                or (op[0] == "p" and (len(op) < 4 or not isinstance(op[3], dict)))):
            raise StoreCorruptError(f"malformed journal operation {str(op)[:80]!r}")
        kind, table = op[0], op[1]
        rows = tables.setdefault(table, {})
        if kind == "p":
            doc_id = int(op[2])
            rows[doc_id] = op[3]
            if doc_id >= next_ids.get(table, 1):
                next_ids[table] = doc_id + 1
        elif kind == "d":
            rows.pop(int(op[2]), None)
        elif kind == "c":
            rows.clear()
        else:
            raise StoreCorruptError(f"unknown journal operation {kind!r}")


def read_snapshot(path: Path) -> tuple[dict[str, dict[int, dict]], dict]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, {}
    except OSError as exc:
        raise StoreCorruptError(f"cannot read snapshot {path}: {exc}") from exc
    if not raw.strip():
        return {}, {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreCorruptError(
            f"snapshot {path} does not parse ({exc}); refusing to open. "
            "Restore it from a backup or move it away to start empty."
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise StoreCorruptError(
            f"{path} is not an olol/TinyDB database (expected an object of tables); "
            "refusing to open"
        )
    meta_rows = data.pop(META_TABLE, {})
    meta: Any = next(iter(meta_rows.values()), {}) if meta_rows else {}
    if not isinstance(meta, dict):
        raise StoreCorruptError(f"{path}: {META_TABLE} is not an object; refusing to open")
    try:
        meta["generation"] = int(meta.get("generation", 0))
        meta["next_ids"] = {str(k): int(v) for k, v in dict(meta.get("next_ids") or {}).items()}
    except (TypeError, ValueError) as exc:
        raise StoreCorruptError(f"{path}: {META_TABLE} is damaged ({exc}); refusing to open") from exc
    tables: dict[str, dict[int, dict]] = {}
    for name, rows in data.items():
        try:
            tables[name] = {int(k): v for k, v in rows.items()}
        except ValueError as exc:
            raise StoreCorruptError(f"{path}: table {name!r} has a non-numeric id") from exc
        bad = next((k for k, v in tables[name].items() if not isinstance(v, dict)), None)
        if bad is not None:
            raise StoreCorruptError(
                f"{path}: document {bad} of table {name!r} is not an object; refusing to open"
            )
    return tables, meta


def scan_journal(path: Path) -> tuple[list[list], int, int]:
    """Read one journal: (ops per good line, offset of the good prefix, file size).

    Raises StoreCorruptError when a bad line is followed by good ones (damage
    that is not a torn tail).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreCorruptError(f"cannot read journal {path}: {exc}; refusing to open") from exc
    records: list[list] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos : end + 1]
        ops = decode_line(line)
        if ops is None:
            rest = data[pos + len(line) :]
            for later in rest.splitlines(keepends=True):
                if decode_line(later) is not None:
                    raise StoreCorruptError(
                        f"journal {path} is damaged at byte {pos} with valid records after it; "
                        "refusing to open"
                    )
            break
        records.append(ops)
        pos += len(line)
    return records, pos, len(data)


def list_journals(data_dir: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        entries = list(data_dir.iterdir())
    except OSError as exc:
        raise StoreError(f"cannot list data folder {data_dir}: {exc}") from exc
    for entry in entries:
        m = _JOURNAL_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found)


def recover(data_dir: Path, *, repair: bool = True) -> Recovered:
    """Snapshot + journal replay. With ``repair`` a torn tail is cut off on disk."""
    if not data_dir.is_dir():
        raise StoreError(f"{data_dir}: no such data folder")
    tables, meta = read_snapshot(data_dir / SNAPSHOT)
    next_ids = {k: int(v) for k, v in dict(meta.get("next_ids", {})).items()}
    for name, rows in tables.items():
        if rows:
            next_ids[name] = max(next_ids.get(name, 1), max(rows) + 1)
    out = Recovered(tables=tables, next_ids=next_ids, meta=meta)
    base_gen = int(meta.get("generation", 0))
    out.generation = base_gen
    journals = [(g, p) for g, p in list_journals(data_dir) if g >= base_gen]
    for index, (gen, path) in enumerate(journals):
        records, good, size = scan_journal(path)
        if good < size:
            if index != len(journals) - 1:
                raise StoreCorruptError(
                    f"journal {path} is torn but a newer journal exists; refusing to open"
                )
            out.dropped_bytes += size - good
            log.warning("journal %s: dropping a torn tail of %d bytes", path, size - good)
            if repair:
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
        for ops in records:
            apply_ops(out.tables, ops, out.next_ids)
        out.replayed += len(records)
        out.generation = gen
    return out


class DirLock:
    """Exclusive ownership of a data folder through ``flock`` on its LOCK file."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCKFILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise StoreLockedError(
                f"data folder {self.path.parent} is in use by another olol process "
                f"(pid {owner}); stop it or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


#: Buffered bytes past which the store's flusher is woken at once.
KICK_BYTES = 1 << 20


class Journal:
    """The append side: buffered records, group commit, generation rotation."""

    def __init__(self, data_dir: Path, generation: int, *, sync: Callable[[int], None] = _sync):
        self.data_dir = data_dir
        self.generation = generation
        self._sync = sync
        self._fd = self._open(generation)
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._buf_lock = threading.Lock()
        # set when the buffer passes KICK_BYTES: the store's flusher writes it out now
        self.kick = threading.Event()
        self._io_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._seq = 0
        self._durable = 0
        self._flushing = False
        self._error: BaseException | None = None
        self.bytes_written = 0
        self.syncs = 0
        self.records = 0
        self.sync_timings = Timings()  # write + fsync of each group commit

    def _open(self, gen: int) -> int:
        path = self.data_dir / journal_name(gen)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if not existed:
            fsync_dir(self.data_dir)
        return fd

    def _check(self) -> None:
        if self._error is not None:
            raise StoreIOError(f"the journal failed earlier ({self._error}); restart olol")

    def append(self, line: bytes) -> int:
        """Buffer one record; call under the store's write lock to keep order.

        Returns its sequence number; :meth:`wait` on it to make it durable, or leave
        it for the next flush (which writes every buffered record, in order).
        """
        with self._buf_lock:
            self._check()
            self._buf.append(line)
            self._buf_bytes += len(line)
            self._seq += 1
            if self._buf_bytes >= KICK_BYTES:
                self.kick.set()
            return self._seq

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended and not yet written (records nobody waited for)."""
        return self._buf_bytes

    def flush_pending(self) -> None:
        """Make every record appended so far durable (joining a group commit in
        progress rather than starting a second one)."""
        with self._buf_lock:
            seq = self._seq
        if seq > self._durable:
            self.wait(seq)

    def wait(self, seq: int) -> None:
        """Return once record ``seq`` is on disk; may do the write itself."""
        while True:
            with self._cond:
                while self._durable < seq and self._flushing and self._error is None:
                    self._cond.wait(timeout=1.0)
                if self._error is not None:
                    self._check()
                if self._durable >= seq:
                    return
                self._flushing = True
            try:
                with self._io_lock:
                    self._flush_locked()
            finally:
                with self._cond:
                    self._flushing = False
                    self._cond.notify_all()

    def _flush_locked(self) -> None:
        """Write and sync everything buffered. Caller holds ``_io_lock``."""
        with self._buf_lock:
            batch, self._buf = self._buf, []
            self._buf_bytes = 0
            upto = self._seq
        if batch:
            data = b"".join(batch)
            try:
                t0 = time.perf_counter()
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                self._sync(self._fd)
                self.sync_timings.observe(time.perf_counter() - t0)
            except BaseException as exc:  # latch: never retry a failed sync
                self._error = exc
                with self._cond:
                    self._cond.notify_all()
                raise StoreIOError(f"journal write failed: {exc}") from exc
            self.bytes_written += len(data)
            self.syncs += 1
            self.records += len(batch)
        with self._cond:
            if upto > self._durable:
                self._durable = upto
            self._cond.notify_all()

    def flush(self) -> None:
        with self._io_lock:
            self._flush_locked()

    def rotate(self) -> int:
        """Flush, then direct new records to the next generation. Returns it.

        Call under the store's write lock so no record lands in between.
        """
        with self._io_lock:
            self._flush_locked()
            new_gen = self.generation + 1
            new_fd = self._open(new_gen)
            os.close(self._fd)
            self._fd, self.generation = new_fd, new_gen
            self.bytes_written = 0
            return new_gen

    def close(self) -> None:
        with self._io_lock:
            try:
                if self._error is None:
                    self._flush_locked()
            finally:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1


def write_atomic(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` atomically and durably: temp file (0600),
    fsync, rename, fsync of the folder."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_snapshot(data_dir: Path, payload: bytes) -> None:
    """Atomically replace db.json."""
    write_atomic(data_dir / SNAPSHOT, payload)

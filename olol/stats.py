"""``RequestStats``: per-request counters, rolled up into ``request_stats`` rows.

The dispatcher calls :meth:`RequestStats.record` for every finished request.
:meth:`RequestStats.roll_up` (a maintenance job) adds what was counted since the
last roll-up into one ``hourly`` row per hour and one ``daily`` row per UTC day.
Counts are bucketed by the hour the request finished in, so a roll-up that runs
after a boundary still credits the right period, and rows accumulate across
restarts.

Durability (the store is durable when it has a data folder): every recorded
request is also appended as one small line to an unrolled-counts log in the data
folder, ``request_stats.<generation>.log``, with one ``write`` and no sync. A
written line is in the OS page cache when ``record`` returns, so it survives the
proxy being killed (only a power loss can take the unsynced tail). The counts in
RAM always equal what the log files not yet rolled up hold.

Exactly once: a roll-up first switches new lines to a fresh generation, then, in
one store transaction (one journal line, synced), adds the counts to the rows
*and* sets the ``config`` row ``request_stats_cursor`` to that generation:
"every log below it is in the rows". Files below the cursor are deleted
afterwards, and ignored (deleted) at start-up if a crash left them. A crash
before the transaction is on disk leaves the cursor and the files as they were,
so the next process counts those lines; a crash after it finds them below the
cursor. The next process never appends to an old file (a torn tail stays a tail
and is skipped by its CRC); it reads the files at or above the cursor into RAM
and rolls them up with its own counts.

Bound: when the unrolled files pass ``max_log_bytes`` (roll-ups not running), the
counts in RAM (at most ``MAX_PENDING_HOURS`` buckets) are written as a summary,
``request_stats.<generation>.sum``, that replaces every file below it: written to
a temporary name, synced, renamed, then the older files are deleted. At start-up
the newest summary at or above the cursor wins over the files below it.

Without a data folder (``DatabaseManager.memory()``) the counts are kept in RAM
only, as the store itself is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from olol.store.database import iso_utc
from olol.store.journal import write_atomic

log = logging.getLogger(__name__)

JOB_ID = "olol-stats-rollup"
ENDPOINTS = ("generate", "chat", "embed", "embeddings")
# Bound on distinct unrolled hours kept in RAM (a roll-up normally runs every minute).
MAX_PENDING_HOURS = 24 * 7
#: The ``config`` row whose value is the first log generation not yet rolled up.
CURSOR_KEY = "request_stats_cursor"
#: Unrolled log bytes that trigger a compaction into a summary file.
MAX_LOG_BYTES = 16 << 20
LOG_PREFIX = "request_stats."
_FILE_RE = re.compile(r"^request_stats\.(\d+)\.(log|sum)$")
_STORE_DIR: Any = object()  # default of ``log_dir``: the store's data folder


@dataclass
class _Counts:
    total: int = 0
    failed: int = 0
    generate: int = 0
    chat: int = 0
    embedding: int = 0
    latency_sum_ms: float = 0.0

    def add(self, endpoint: str, latency_ms: float, ok: bool) -> None:
        self.total += 1
        self.failed += 0 if ok else 1
        if endpoint == "generate":
            self.generate += 1
        elif endpoint == "chat":
            self.chat += 1
        elif endpoint in ("embed", "embeddings"):
            self.embedding += 1
        self.latency_sum_ms += latency_ms

    def merge(self, other: _Counts) -> None:
        self.total += other.total
        self.failed += other.failed
        self.generate += other.generate
        self.chat += other.chat
        self.embedding += other.embedding
        self.latency_sum_ms += other.latency_sum_ms

    def fields(self) -> list:
        return [self.total, self.failed, self.generate, self.chat, self.embedding,
                self.latency_sum_ms]


def hour_start(ts: float) -> float:
    return ts - ts % 3600.0


def day_start(ts: float) -> float:
    return ts - ts % 86400.0


# ---------------------------------------------------------------------- log lines
def encode_line(hour: float, counts: list) -> bytes:
    """One log line: ``<crc32 hex> [hour, total, failed, generate, chat, embedding,
    latency_sum_ms]``; a recorded request is a line with total 1."""
    payload = orjson.dumps([hour, *counts])
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_line(line: bytes) -> tuple[float, _Counts] | None:
    """The hour and counts of one line, or None when it is torn or damaged."""
    if len(line) < 11 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        hour, total, failed, gen, chat, emb, lat = orjson.loads(payload)
        return float(hour), _Counts(int(total), int(failed), int(gen), int(chat), int(emb),
                                    float(lat))
    except (ValueError, TypeError):
        return None


def read_log(path: Path) -> tuple[list[tuple[float, _Counts]], int]:
    """The good lines of one file and the number of bad ones (a torn tail, damage)."""
    out: list[tuple[float, _Counts]] = []
    bad = 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for index, line in enumerate(lines):
        entry = decode_line(line)
        if entry is None:
            bad += 1
            if index < len(lines) - 1:
                log.warning("%s: skipping a damaged line %d", path, index + 1)
        else:
            out.append(entry)
    return out, bad


def list_files(folder: Path) -> list[tuple[int, str, Path]]:
    """``(generation, "log" | "sum", path)`` of the stats files in ``folder``, oldest first."""
    found = []
    for entry in folder.iterdir():
        m = _FILE_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry))
    return sorted(found)


class RequestStats:
    """Request counters and their roll-up into the ``request_stats`` table.

    :param db: the store.
    :param clock: seconds since the epoch; decides each request's period.
    :param log_dir: folder of the unrolled-counts log; by default the store's data
        folder (none for an in-memory store); None keeps counts in RAM only.
    :param max_log_bytes: unrolled log size that triggers a compaction.
    """

    def __init__(self, db: Any, clock: Callable[[], float] = time.time, *,
                 log_dir: Any = _STORE_DIR, max_log_bytes: int = MAX_LOG_BYTES) -> None:
        self.db = db
        self.clock = clock
        if log_dir is _STORE_DIR:
            log_dir = getattr(db, "data_dir", None)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.max_log_bytes = max(1, int(max_log_bytes))
        self._lock = threading.Lock()
        self._rollup_lock = threading.Lock()
        self._pending: dict[float, _Counts] = {}
        self._totals: dict[str, _Counts] = {}
        self._fd = -1
        self._gen = 0  # the generation new lines go to
        self._cursor = 0  # generations below it are in the rows (as last committed)
        self._log_bytes = 0  # bytes of the files at or above the cursor
        self._compact_at = self.max_log_bytes
        self._rolling = False  # a roll-up holds counts taken out of _pending
        self._write_failed = False
        #: counts read back from an earlier process's files at start-up
        self.recovered = _Counts()
        if self.log_dir is not None:
            self._recover()

    # ------------------------------------------------------------------ start-up
    def _read_cursor(self) -> int:
        row = self.db.search_one("config", {"key": CURSOR_KEY})
        value = row.get("value") if row is not None else 0
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def _recover(self) -> None:
        assert self.log_dir is not None
        folder = self.log_dir
        for tmp in folder.glob(LOG_PREFIX + "*.tmp"):
            tmp.unlink(missing_ok=True)
        cursor = self._read_cursor()
        files = list_files(folder)
        base = max((g for g, kind, _ in files if kind == "sum" and g >= cursor), default=cursor)
        bad = 0
        for gen, _kind, path in files:
            if gen < base:  # rolled up already, or replaced by the summary
                path.unlink(missing_ok=True)
                continue
            try:
                entries, torn = read_log(path)
                self._log_bytes += path.stat().st_size
            except OSError as exc:  # counts only: do not keep the proxy from starting
                log.error("request stats: cannot read %s (%s); its counts are skipped",
                          path, exc)
                continue
            bad += torn
            for hour, counts in entries:
                self._bucket(hour).merge(counts)
                self.recovered.merge(counts)
        self._cursor = cursor
        self._gen = max([cursor] + [g + 1 for g, _, _ in files])
        self._compact_at = self._log_bytes + self.max_log_bytes
        if self.recovered.total or bad:
            log.info("request stats: %d requests counted before the restart are not rolled up "
                     "yet (%d torn or damaged lines skipped)", self.recovered.total, bad)

    # ------------------------------------------------------------------ recording
    def _bucket(self, hour: float) -> _Counts:
        """The pending counts of ``hour`` (caller holds the lock or owns the object)."""
        counts = self._pending.get(hour)
        if counts is None:
            if len(self._pending) >= MAX_PENDING_HOURS:
                # Roll-ups have not run for a week: fold the oldest hour into the next
                # rather than grow without bound.
                oldest = min(self._pending)
                spill = self._pending.pop(oldest)
                self._pending.setdefault(min(self._pending, default=hour),
                                         _Counts()).merge(spill)
            counts = self._pending[hour] = _Counts()
        return counts

    def record(self, endpoint: str, latency_ms: float, ok: bool) -> None:
        """Count one finished request: RAM, plus one unsynced line in the log (a
        ``write`` to the page cache, which survives the process being killed)."""
        latency = max(0.0, float(latency_ms or 0.0))
        hour = hour_start(self.clock())
        line = None
        if self.log_dir is not None:
            line = encode_line(hour, [
                1, 0 if ok else 1, 1 if endpoint == "generate" else 0,
                1 if endpoint == "chat" else 0,
                1 if endpoint in ("embed", "embeddings") else 0, latency,
            ])
        with self._lock:
            self._bucket(hour).add(endpoint, latency, ok)
            self._totals.setdefault(endpoint, _Counts()).add(endpoint, latency, ok)
            if line is not None:
                self._write(line)

    def _write(self, line: bytes) -> None:
        """Append under the lock, so a rotation splits RAM and files at the same line."""
        try:
            if self._fd < 0:
                self._fd = self._open(self._gen)
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            # The count is in RAM and rolled up as usual; only a crash before that loses it.
            if not self._write_failed:
                log.error("request stats: cannot write the unrolled log (%s); counts are kept "
                          "in RAM until the next roll-up", exc)
            self._write_failed = True
            return
        self._write_failed = False
        self._log_bytes += len(line)
        if self._log_bytes >= self._compact_at and not self._rolling:
            self._compact()

    def _open(self, gen: int) -> int:
        assert self.log_dir is not None
        path = self.log_dir / f"{LOG_PREFIX}{gen:08d}.log"
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _compact(self) -> None:
        """Replace every unrolled file by one summary of the RAM counts (under the lock)."""
        assert self.log_dir is not None
        gen = self._gen + 1
        path = self.log_dir / f"{LOG_PREFIX}{gen:08d}.sum"
        payload = b"".join(encode_line(h, c.fields()) for h, c in sorted(self._pending.items()))
        try:
            write_atomic(path, payload)
        except OSError as exc:
            log.error("request stats: compacting the unrolled log failed: %s", exc)
            self._compact_at = self._log_bytes + self.max_log_bytes
            return
        self._close_fd()
        self._gen = gen + 1
        self._remove_below(gen)
        self._log_bytes = len(payload)
        self._compact_at = self._log_bytes + self.max_log_bytes

    def _remove_below(self, gen: int) -> None:
        assert self.log_dir is not None
        for g, _kind, path in list_files(self.log_dir):
            if g < gen:
                path.unlink(missing_ok=True)

    def totals(self) -> dict[str, dict]:
        """Counts since this process started, per endpoint (for /metrics and status)."""
        with self._lock:
            return {
                ep: {"requests": c.total, "failed": c.failed,
                     "average_latency_ms": c.latency_sum_ms / c.total if c.total else None}
                for ep, c in self._totals.items()
            }

    # ------------------------------------------------------------------ roll-up
    def roll_up(self) -> int:
        """Add everything counted since the last roll-up into the hourly and daily rows
        (one row per period, updated in place), together with the cursor that marks
        the log files consumed, in one transaction. Returns the number of rows written.
        On a store error the counts are kept for the next roll-up."""
        with self._rollup_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                durable = self.log_dir is not None
                if not pending and not (durable and self._gen > self._cursor):
                    return 0
                if durable:  # new lines go to a file the cursor will not cover
                    self._close_fd()
                    self._gen += 1
                    cursor = self._gen
                    taken_bytes, self._log_bytes = self._log_bytes, 0
                    self._compact_at = self.max_log_bytes
                self._rolling = True
            per_period: dict[tuple[str, float], _Counts] = {}
            for hour, counts in pending.items():
                per_period.setdefault(("hourly", hour), _Counts()).merge(counts)
                per_period.setdefault(("daily", day_start(hour)), _Counts()).merge(counts)
            try:
                with self.db.transaction():
                    for (period, start), counts in sorted(per_period.items()):
                        self._add_to_row(period, iso_utc(start), counts)
                    if durable:
                        where = {"key": CURSOR_KEY}
                        self.db.upsert("config", {"key": CURSOR_KEY, "value": cursor}, where)
            except BaseException:
                with self._lock:
                    for hour, counts in pending.items():
                        self._bucket(hour).merge(counts)
                    if durable:
                        self._log_bytes += taken_bytes
                        self._compact_at = self._log_bytes + self.max_log_bytes
                    self._rolling = False
                raise
            with self._lock:
                self._rolling = False
                if durable:
                    self._cursor = cursor
            if durable:
                try:
                    self._remove_below(cursor)
                except OSError as exc:  # ignored at the next start-up anyway
                    log.warning("request stats: removing rolled-up log files failed: %s", exc)
            return len(per_period)

    def _add_to_row(self, period: str, stamp: str, delta: _Counts) -> None:
        where = {"period": period, "timestamp": stamp}
        row = self.db.search_one("request_stats", where) or {}
        old_total = int(row.get("total_requests") or 0)
        # The exact sum is kept beside the (rounded) average so repeated roll-ups don't
        # accumulate rounding error; rows written by others may lack it.
        old_sum = row.get("latency_sum_ms")
        if old_sum is None:
            old_avg = row.get("average_latency_ms")
            old_sum = float(old_avg) * old_total if old_avg is not None else 0.0
        latency_sum = float(old_sum) + delta.latency_sum_ms
        total = old_total + delta.total
        self.db.upsert("request_stats", {
            "timestamp": stamp,
            "period": period,
            "total_requests": total,
            "generate_requests": int(row.get("generate_requests") or 0) + delta.generate,
            "chat_requests": int(row.get("chat_requests") or 0) + delta.chat,
            "embedding_requests": int(row.get("embedding_requests") or 0) + delta.embedding,
            "failed_requests": int(row.get("failed_requests") or 0) + delta.failed,
            "average_latency_ms": round(latency_sum / total, 3) if total else None,
            "latency_sum_ms": latency_sum,
        }, where)

    def history(self, period: str = "hourly", limit: int = 48) -> list[dict]:
        """The newest ``limit`` rows of a period, oldest first."""
        rows = sorted(self.db.search("request_stats", {"period": period}),
                      key=lambda r: r["timestamp"])
        return [dict(r) for r in rows[-max(0, int(limit)):]] if limit else []

    def run_once(self) -> int:
        """The scheduled job: a roll-up that logs instead of raising."""
        try:
            return self.roll_up()
        except Exception:
            log.exception("request stats roll-up failed")
            return 0

    def add_job(self, scheduler: Any, interval_s: float = 60.0) -> None:
        """Register the roll-up on an APScheduler 3 scheduler (the proxy's shared one)."""
        scheduler.add_job(self.run_once, "interval", seconds=interval_s, id=JOB_ID, name=JOB_ID,
                          max_instances=1, coalesce=True,
                          misfire_grace_time=max(1, int(interval_s)), replace_existing=True)

    def close(self) -> None:
        """Close the log file (what it holds stays for the next roll-up or start-up);
        a later :meth:`record` opens it again."""
        with self._lock, contextlib.suppress(OSError):
            self._close_fd()

    def __del__(self) -> None:  # a caller that forgets close(): do not leak the fd
        with contextlib.suppress(Exception):
            self._close_fd()


def utc_hour(ts: float) -> datetime:
    """The UTC hour containing ``ts`` (convenience for callers and tests)."""
    return datetime.fromtimestamp(hour_start(ts), UTC)

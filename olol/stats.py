"""``RequestStats``: per-request statistics, rolled up into ``request_stats`` rows.

What is counted: every request that reaches a final state (the queue's finish
listener, :meth:`RequestStats.request_finished`, turns the finished record into a
:class:`Finished`), and every request the queue refused at admission
(:meth:`RequestStats.rejected`). Each is credited to one *series*: its model, the
node that served it (none when it never ran) and the API key it came with (none
when keys are off). A series holds the number of requests (per endpoint), the
errors by kind (:data:`ERROR_KINDS`), the tokens in and out, the summed duration,
and two fixed-bucket histograms, of the queue wait and of the time to first token,
from which percentiles are computed when read (histograms add up, so percentiles
of a day or a week are those of all its requests, not an average of averages).

:meth:`RequestStats.roll_up` (the ``stats-rollup`` maintenance job) adds what was
counted since the last roll-up into one row per period (``hourly``, ``daily`` and
``weekly``: the ISO week, Monday 00:00 UTC), period start and series. Counts are
bucketed by the hour the request finished in, so a roll-up that runs after a
boundary still credits the right period, and rows accumulate across restarts.
Rows older than each period's retention (``retention_days``, run-time settings)
are removed by the same job (:meth:`prune`), and hidden from readers at once.

Bounds: a period start holds at most ``max_series`` named series; a new series past
them is counted in the ``(other)`` series (model, node and key all ``(other)``), in RAM and
in the rows alike, so arbitrary model names cannot grow the table. Names longer
than :data:`MAX_NAME_CHARS` are cut.

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
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from olol.store.database import iso_utc
from olol.store.journal import write_atomic

if TYPE_CHECKING:
    from olol.interfaces import Store

log = logging.getLogger(__name__)

JOB_ID = "olol-stats-rollup"
ENDPOINTS = ("generate", "chat", "embed", "embeddings")
PERIODS = ("hourly", "daily", "weekly")
DIMENSIONS = ("model", "node", "key")
#: What a request that did not complete counts as (``other``: a caller that gave no kind).
ERROR_KINDS = ("bad_request", "rejected", "overloaded", "timeout", "node_error", "cancelled",
               "interrupted", "other")
#: Default retention of each period's rows, in days.
DEFAULT_RETENTION_DAYS = {"hourly": 14.0, "daily": 366.0, "weekly": 1830.0}
#: Default bound on the series of one period start (past it: the ``(other)`` series).
DEFAULT_MAX_SERIES = 1000
OTHER = "(other)"
OTHER_SERIES = (OTHER, OTHER, OTHER)
MAX_NAME_CHARS = 200
# Bound on distinct unrolled hours kept in RAM (a roll-up normally runs every minute).
MAX_PENDING_HOURS = 24 * 7
#: Bound on the series held in RAM over all unrolled hours.
MAX_PENDING_SERIES = 20_000
#: The ``config`` row whose value is the first log generation not yet rolled up.
CURSOR_KEY = "request_stats_cursor"
#: Unrolled log bytes that trigger a compaction into a summary file.
MAX_LOG_BYTES = 16 << 20
#: Seconds between two prunes of old rows (a changed retention prunes at the next run).
PRUNE_INTERVAL_S = 600.0
LOG_PREFIX = "request_stats."
_FILE_RE = re.compile(r"^request_stats\.(\d+)\.(log|sum)$")
_STORE_DIR: Any = object()  # default of ``log_dir``: the store's data folder
_PERIOD_S = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}

Series = tuple[str | None, str | None, str | None]  # (model, node, key id)


# ---------------------------------------------------------------------- histograms
#: Buckets per doubling: bucket ``i >= 1`` holds values in [2^((i-1)/4), 2^(i/4)) ms,
#: bucket 0 values under 1 ms; a percentile read from it is within about 9 %.
BUCKETS_PER_DOUBLING = 4
MAX_BUCKET = 100  # 2^24.75 ms, about 8 hours: longer values land in the last bucket


def bucket_of(ms: float) -> int:
    """The histogram bucket of a duration in milliseconds."""
    if not ms >= 1.0:  # also NaN
        return 0
    return min(MAX_BUCKET, 1 + int(math.floor(BUCKETS_PER_DOUBLING * math.log2(ms))))


def bucket_value(index: int) -> float:
    """The value a bucket stands for: the geometric middle of its bounds."""
    if index <= 0:
        return 0.5
    return 2.0 ** ((index - 0.5) / BUCKETS_PER_DOUBLING)


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, in ms (None when it is empty)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return round(bucket_value(index), 1)
    return round(bucket_value(max(hist)), 1)  # pragma: no cover - rank <= total


def summary(hist: Mapping[int, int]) -> dict[str, float | None]:
    return {"p50": percentile(hist, 0.5), "p90": percentile(hist, 0.9),
            "p99": percentile(hist, 0.99)}


def _merge_hist(into: dict[int, int], other: Mapping[int, int]) -> None:
    for index, n in other.items():
        into[index] = into.get(index, 0) + n


def _hist_from_json(raw: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            try:
                index, n = int(k), int(v)
            except (TypeError, ValueError):
                continue
            if 0 <= index <= MAX_BUCKET and n > 0:
                out[index] = out.get(index, 0) + n
    return out


def _hist_to_json(hist: Mapping[int, int]) -> dict[str, int]:
    return {str(k): hist[k] for k in sorted(hist)}


# ---------------------------------------------------------------------- one request
@dataclass(frozen=True)
class Finished:
    """One request's outcome, as :meth:`RequestStats.add` counts it.

    :param error: the error kind (one of :data:`ERROR_KINDS`), None when it completed.
    :param queue_ms: enqueue to the start of its (last) run.
    :param ttft_ms: enqueue to its first token reaching the client.
    :param duration_ms: enqueue to its end.
    """

    endpoint: str
    model: str | None = None
    node: str | None = None
    key: str | None = None
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def error_kind(status: str | None, error_status: Any = None) -> str | None:
    """The error kind of a finished request (None: it completed)."""
    if status == "completed":
        return None
    if status == "cancelled":
        return "cancelled"
    if status == "interrupted":
        return "interrupted"
    code = error_status if isinstance(error_status, int) and not isinstance(
        error_status, bool) else None
    if code == 499:
        return "cancelled"
    if code in (408, 504):
        return "timeout"
    if code in (429, 503):
        return "overloaded"
    if code is not None and 400 <= code < 500:
        return "bad_request"
    return "node_error"


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and \
        value > 0 else 0


def _span_ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start) * 1000.0


def finished_from_record(record: Mapping[str, Any]) -> Finished:
    """The :class:`Finished` of a queue record in a final state (with the ``usage``
    its finisher passed, as finish listeners receive it)."""
    usage = record.get("usage") or {}
    enq = _num(record.get("enqueued_ts"))
    model = record.get("model_key") or record.get("model")
    node = usage.get("node") or record.get("server_assigned")
    return Finished(
        endpoint=str(record.get("endpoint") or ""),
        model=model if isinstance(model, str) else None,
        node=node if isinstance(node, str) else None,
        key=record.get("key_id") if isinstance(record.get("key_id"), str) else None,
        error=error_kind(record.get("status"), record.get("error_status")),
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        queue_ms=_span_ms(enq, _num(record.get("started_ts"))),
        ttft_ms=_span_ms(enq, _num(usage.get("first_token_ts"))),
        duration_ms=_span_ms(enq, _num(record.get("completed_ts"))),
    )


def _name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text[:MAX_NAME_CHARS]


# ---------------------------------------------------------------------- counts
class _Counts:
    """The counts of one series over some time (a RAM bucket, or a row's content)."""

    __slots__ = ("total", "failed", "generate", "chat", "embedding", "errors", "tokens_in",
                 "tokens_out", "latency_sum_ms", "latency_n", "queue", "ttft")

    def __init__(self) -> None:
        self.total = 0
        self.failed = 0
        self.generate = 0
        self.chat = 0
        self.embedding = 0
        self.errors: dict[str, int] = {}
        self.tokens_in = 0
        self.tokens_out = 0
        self.latency_sum_ms = 0.0
        self.latency_n = 0
        self.queue: dict[int, int] = {}
        self.ttft: dict[int, int] = {}

    def add(self, f: Finished) -> None:
        self.total += 1
        if f.error is not None:
            self.failed += 1
            self.errors[f.error] = self.errors.get(f.error, 0) + 1
        if f.endpoint == "generate":
            self.generate += 1
        elif f.endpoint == "chat":
            self.chat += 1
        elif f.endpoint in ("embed", "embeddings"):
            self.embedding += 1
        self.tokens_in += f.tokens_in
        self.tokens_out += f.tokens_out
        if f.duration_ms is not None:
            self.latency_sum_ms += f.duration_ms
            self.latency_n += 1
        if f.queue_ms is not None:
            index = bucket_of(f.queue_ms)
            self.queue[index] = self.queue.get(index, 0) + 1
        if f.ttft_ms is not None:
            index = bucket_of(f.ttft_ms)
            self.ttft[index] = self.ttft.get(index, 0) + 1

    def merge(self, other: _Counts) -> None:
        self.total += other.total
        self.failed += other.failed
        self.generate += other.generate
        self.chat += other.chat
        self.embedding += other.embedding
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.latency_sum_ms += other.latency_sum_ms
        self.latency_n += other.latency_n
        _merge_hist(self.queue, other.queue)
        _merge_hist(self.ttft, other.ttft)

    # the shape of a summary line and of a row's counting fields
    def to_json(self) -> dict[str, Any]:
        return {
            "total_requests": self.total, "failed_requests": self.failed,
            "generate_requests": self.generate, "chat_requests": self.chat,
            "embedding_requests": self.embedding, "errors": dict(sorted(self.errors.items())),
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "latency_sum_ms": self.latency_sum_ms, "latency_n": self.latency_n,
            "average_latency_ms": (round(self.latency_sum_ms / self.latency_n, 3)
                                   if self.latency_n else None),
            "queue_ms_hist": _hist_to_json(self.queue), "ttft_ms_hist": _hist_to_json(self.ttft),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Counts:
        """The counts of a row or summary line (rows written before issue 16 lack most
        fields: their latency sum is rebuilt from the average)."""
        c = cls()
        c.total = _count(raw.get("total_requests"))
        c.failed = _count(raw.get("failed_requests"))
        c.generate = _count(raw.get("generate_requests"))
        c.chat = _count(raw.get("chat_requests"))
        c.embedding = _count(raw.get("embedding_requests"))
        errors = raw.get("errors")
        if isinstance(errors, dict):
            c.errors = {str(k): _count(v) for k, v in errors.items() if _count(v)}
        elif c.failed:
            c.errors = {"other": c.failed}
        c.tokens_in = _count(raw.get("tokens_in"))
        c.tokens_out = _count(raw.get("tokens_out"))
        n = raw.get("latency_n")
        c.latency_n = _count(n) if n is not None else c.total
        total_ms = _num(raw.get("latency_sum_ms"))
        if total_ms is None:
            avg = _num(raw.get("average_latency_ms"))
            total_ms = avg * c.latency_n if avg is not None else 0.0
        c.latency_sum_ms = total_ms
        c.queue = _hist_from_json(raw.get("queue_ms_hist"))
        c.ttft = _hist_from_json(raw.get("ttft_ms_hist"))
        return c

    def view(self) -> dict[str, Any]:
        """What a reader sees: counts, and percentiles computed from the histograms."""
        return {
            "requests": self.total, "errors": self.failed,
            "errors_by_kind": dict(sorted(self.errors.items())),
            "by_endpoint": {"generate": self.generate, "chat": self.chat,
                            "embedding": self.embedding},
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "average_latency_ms": (round(self.latency_sum_ms / self.latency_n, 1)
                                   if self.latency_n else None),
            "queue_ms": summary(self.queue), "ttft_ms": summary(self.ttft),
        }


def hour_start(ts: float) -> float:
    return ts - ts % 3600.0


def day_start(ts: float) -> float:
    return ts - ts % 86400.0


def week_start(ts: float) -> float:
    """Monday 00:00 UTC of the ISO week holding ``ts`` (1970-01-01 was a Thursday)."""
    day = day_start(ts)
    weekday = (int(day // 86400.0) + 3) % 7  # Monday = 0
    return day - weekday * 86400.0


def period_start(period: str, ts: float) -> float:
    return {"hourly": hour_start, "daily": day_start, "weekly": week_start}[period](ts)


def _sort_key(series: Series) -> tuple[str, str, str]:
    return tuple(s or "" for s in series)  # type: ignore[return-value]


# ---------------------------------------------------------------------- log lines
def _frame(payload: bytes) -> bytes:
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def encode_request(hour: float, series: Series, f: Finished) -> bytes:
    """The line of one recorded request: ``<crc32 hex> ["r", hour, endpoint, model,
    node, key, error, tokens in, tokens out, queue ms, ttft ms, duration ms]``."""
    return _frame(orjson.dumps(["r", hour, f.endpoint, *series, f.error, f.tokens_in,
                                f.tokens_out, f.queue_ms, f.ttft_ms, f.duration_ms]))


def encode_summary(hour: float, series: Series, counts: _Counts) -> bytes:
    """A summary line: ``<crc32 hex> ["s", hour, model, node, key, {counts}]``."""
    return _frame(orjson.dumps(["s", hour, *series, counts.to_json()]))


def _str_or_none(value: Any) -> str | None:
    return _name(value) if isinstance(value, str) else None


def decode_line(line: bytes) -> tuple[float, Series, _Counts] | None:
    """The hour, series and counts of one line, or None when it is torn or damaged.
    Lines of the earlier format (``[hour, total, failed, generate, chat, embedding,
    latency_sum_ms]``) are read as counts of no series."""
    if len(line) < 11 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        data = orjson.loads(payload)
        if not isinstance(data, list) or not data:
            return None
        tag = data[0]
        if tag == "r":
            _, hour, endpoint, model, node, key, err, tin, tout, q, t, d = data
            f = Finished(str(endpoint), _str_or_none(model), _str_or_none(node),
                         _str_or_none(key), err if err in ERROR_KINDS else (
                             None if err is None else "other"),
                         _count(tin), _count(tout), _num(q), _num(t), _num(d))
            c = _Counts()
            c.add(f)
            return float(hour), (f.model, f.node, f.key), c
        if tag == "s":
            _, hour, model, node, key, raw = data
            if not isinstance(raw, dict):
                return None
            series = (_str_or_none(model), _str_or_none(node), _str_or_none(key))
            return float(hour), series, _Counts.from_json(raw)
        hour, total, failed, gen, chat, emb, lat = data  # the earlier format
        c = _Counts.from_json({"total_requests": total, "failed_requests": failed,
                               "generate_requests": gen, "chat_requests": chat,
                               "embedding_requests": emb, "latency_sum_ms": lat})
        return float(hour), (None, None, None), c
    except (ValueError, TypeError):
        return None


def read_log(path: Path) -> tuple[list[tuple[float, Series, _Counts]], int]:
    """The good lines of one file and the number of bad ones (a torn tail, damage)."""
    out: list[tuple[float, Series, _Counts]] = []
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


# ---------------------------------------------------------------------- reading
class QueryError(ValueError):
    """A bad statistics query; the message says which parameter and why."""


#: How far back a query looks when it names no ``since``.
DEFAULT_SINCE_S = {"hourly": 2 * 86400.0, "daily": 31 * 86400.0, "weekly": 12 * 7 * 86400.0}
MAX_LIMIT = 10_000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([hdw])$")
_UNIT_S = {"h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float) -> float:
    """``7d``, ``24h``, ``2w`` (before now), or an ISO date or date-time (UTC unless
    it names its zone). :raises QueryError:"""
    text = text.strip()
    m = _RELATIVE.match(text.lower())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"since must be like 7d, 24h, 2w or an ISO date (2025-04-28), "
                         f"got {text[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_query(args: Mapping[str, str], now: float) -> dict[str, Any]:
    """The arguments of :meth:`RequestStats.query` from URL parameters ``period``,
    ``by`` (comma-separated dimensions, or ``total``), ``since``, ``until`` and
    ``limit``. :raises QueryError: an unknown parameter or a bad value."""
    unknown = sorted(set(args) - {"period", "by", "since", "until", "limit"})
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r}; known: period, by, since, "
                         "until, limit")
    period = args.get("period", "daily")
    if period not in PERIODS:
        raise QueryError(f"period must be one of {', '.join(PERIODS)}, got {period[:40]!r}")
    by_text = args.get("by", "model")
    by: list[str] = []
    if by_text not in ("", "total"):
        for part in by_text.split(","):
            part = part.strip()
            if part not in DIMENSIONS:
                raise QueryError(f"by must be total or a comma-separated list of "
                                 f"{', '.join(DIMENSIONS)}, got {part[:40]!r}")
            if part not in by:
                by.append(part)
    since = parse_since(args["since"], now) if "since" in args else \
        now - DEFAULT_SINCE_S[period]
    until = parse_since(args["until"], now) if "until" in args else None
    try:
        limit = int(args.get("limit", "1000"))
    except ValueError:
        raise QueryError("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
    return {"period": period, "by": tuple(by), "since": since, "until": until, "limit": limit}


def start_label(period: str, start: float) -> str:
    """A period start for people: ``2025-04-28 14:00``, ``2025-04-28``, ``2025-W18``."""
    when = datetime.fromtimestamp(start, UTC)
    if period == "hourly":
        return when.strftime("%Y-%m-%d %H:00")
    if period == "daily":
        return when.strftime("%Y-%m-%d")
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


# ---------------------------------------------------------------------- the counter
class RequestStats:
    """Request statistics and their roll-up into the ``request_stats`` table.

    :param db: the store.
    :param clock: seconds since the epoch; decides each request's period.
    :param log_dir: folder of the unrolled-counts log; by default the store's data
        folder (none for an in-memory store); None keeps counts in RAM only.
    :param max_log_bytes: unrolled log size that triggers a compaction.
    :param retention_days: per period, how long rows are kept (a live setting: the
        dict may be changed in place; the next prune and read use the new value).
    :param max_series: most series one period start holds (past it: ``(other)``).
    """

    def __init__(self, db: Store, clock: Callable[[], float] = time.time, *,
                 log_dir: Any = _STORE_DIR, max_log_bytes: int = MAX_LOG_BYTES,
                 retention_days: Mapping[str, float] | None = None,
                 max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.db = db
        self.clock = clock
        if log_dir is _STORE_DIR:
            log_dir = getattr(db, "data_dir", None)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.max_log_bytes = max(1, int(max_log_bytes))
        self.retention_days: dict[str, float] = {**DEFAULT_RETENTION_DAYS,
                                                 **(retention_days or {})}
        self.max_series = max(1, int(max_series))
        self._lock = threading.Lock()
        self._rollup_lock = threading.Lock()
        self._pending: dict[float, dict[Series, _Counts]] = {}
        self._totals: dict[str, _Counts] = {}
        self._fd = -1
        self._gen = 0  # the generation new lines go to
        self._cursor = 0  # generations below it are in the rows (as last committed)
        self._log_bytes = 0  # bytes of the files at or above the cursor
        self._compact_at = self.max_log_bytes
        self._rolling = False  # a roll-up holds counts taken out of _pending
        self._write_failed = False
        self._last_prune: float | None = None
        self._pruned_with: dict[str, float] = {}
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
            for hour, series, counts in entries:
                self._slot(hour, series)[1].merge(counts)
                self.recovered.merge(counts)
        self._cursor = cursor
        self._gen = max([cursor] + [g + 1 for g, _, _ in files])
        self._compact_at = self._log_bytes + self.max_log_bytes
        if self.recovered.total or bad:
            log.info("request stats: %d requests counted before the restart are not rolled up "
                     "yet (%d torn or damaged lines skipped)", self.recovered.total, bad)

    # ------------------------------------------------------------------ recording
    def _hour(self, hour: float) -> dict[Series, _Counts]:
        """The pending series of ``hour`` (caller holds the lock or owns the object)."""
        series = self._pending.get(hour)
        if series is None:
            if len(self._pending) >= MAX_PENDING_HOURS:
                # Roll-ups have not run for a week: fold the oldest hour into the next
                # rather than grow without bound.
                oldest = min(self._pending)
                spill = self._pending.pop(oldest)
                target = min(self._pending, default=hour)
                series = self._pending.setdefault(target, {})
                for s, counts in spill.items():
                    self._slot_in(series, s).merge(counts)
                if target == hour:
                    return series
            series = self._pending[hour] = {}
        return series

    def _slot_in(self, hour_series: dict[Series, _Counts], series: Series
                 ) -> _Counts:
        return self._slot_in_keyed(hour_series, series)[1]

    def _slot_in_keyed(self, hour_series: dict[Series, _Counts], series: Series
                       ) -> tuple[Series, _Counts]:
        counts = hour_series.get(series)
        if counts is None:
            if series != OTHER_SERIES and (
                    len(hour_series) - (OTHER_SERIES in hour_series) >= self.max_series
                    or sum(len(s) for s in self._pending.values()) >= MAX_PENDING_SERIES):
                series = OTHER_SERIES
                counts = hour_series.get(series)
            if counts is None:
                counts = hour_series[series] = _Counts()
        return series, counts

    def _slot(self, hour: float, series: Series) -> tuple[Series, _Counts]:
        """The series actually counted (``(other)`` past the bound) and its counts."""
        return self._slot_in_keyed(self._hour(hour), series)

    def add(self, f: Finished) -> None:
        """Count one finished request: RAM, plus one unsynced line in the log (a
        ``write`` to the page cache, which survives the process being killed)."""
        hour = hour_start(self.clock())
        series = (_name(f.model), _name(f.node), _name(f.key))
        with self._lock:
            series, counts = self._slot(hour, series)
            counts.add(f)
            self._totals.setdefault(f.endpoint, _Counts()).add(f)
            if self.log_dir is not None:
                self._write(encode_request(hour, series, f))

    def record(self, endpoint: str, latency_ms: float, ok: bool) -> None:
        """Count one request of no particular model, node or key (``ok`` False: an
        error of kind ``other``)."""
        latency = max(0.0, float(latency_ms or 0.0))
        self.add(Finished(endpoint, error=None if ok else "other", duration_ms=latency))

    def request_finished(self, record: dict) -> None:
        """The queue's finish listener: count a request that reached a final state."""
        self.add(finished_from_record(record))

    def rejected(self, record: Mapping[str, Any]) -> None:
        """Count a request the queue refused at admission (full): error ``rejected``."""
        model = record.get("model_key") or record.get("model")
        key = record.get("key_id")
        self.add(Finished(str(record.get("endpoint") or ""),
                          model=model if isinstance(model, str) else None,
                          key=key if isinstance(key, str) else None, error="rejected"))

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
        payload = b"".join(
            encode_summary(h, s, c) for h, per in sorted(self._pending.items())
            for s, c in sorted(per.items(), key=lambda kv: _sort_key(kv[0])))
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
                     "average_latency_ms": c.latency_sum_ms / c.latency_n
                     if c.latency_n else None}
                for ep, c in self._totals.items()
            }

    def pending_series(self) -> int:
        """Series held in RAM, not rolled up yet (bounded, see the module's doc)."""
        with self._lock:
            return sum(len(s) for s in self._pending.values())

    # ------------------------------------------------------------------ roll-up
    def roll_up(self) -> int:
        """Add everything counted since the last roll-up into the hourly, daily and
        weekly rows (one row per period start and series, updated in place), together
        with the cursor that marks the log files consumed, in one transaction. Returns
        the number of rows written. On a store error the counts are kept for the next
        roll-up."""
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
            try:
                with self.db.transaction():
                    # several proxies on one shared store add to the same rows: one
                    # roll-up at a time, or one would overwrite the other's counts
                    self.db.exclusive("request_stats")
                    written = self._write_rows(pending)
                    if durable:
                        where = {"key": CURSOR_KEY}
                        self.db.upsert("config", {"key": CURSOR_KEY, "value": cursor}, where)
            except BaseException:
                with self._lock:
                    for hour, per in pending.items():
                        for series, counts in per.items():
                            self._slot(hour, series)[1].merge(counts)
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
            return written

    def _write_rows(self, pending: dict[float, dict[Series, _Counts]]) -> int:
        """Add ``pending`` to the rows (inside the caller's transaction): one scan finds
        the rows of the period starts concerned, each row is written once."""
        deltas: dict[tuple[str, str], dict[Series, _Counts]] = {}
        for hour, per in pending.items():
            for period in PERIODS:
                at = deltas.setdefault((period, iso_utc(period_start(period, hour))), {})
                for series, counts in per.items():
                    at.setdefault(series, _Counts()).merge(counts)
        existing: dict[tuple[str, str], dict[Series, Any]] = {}
        for doc in self.db.search("request_stats",
                                  lambda d: (d.get("period"), d.get("timestamp")) in deltas):
            existing.setdefault((doc["period"], doc["timestamp"]), {})[
                (doc.get("model"), doc.get("node"), doc.get("key"))] = doc
        written = 0
        for (period, stamp), per in sorted(deltas.items()):
            rows = existing.get((period, stamp), {})
            targets: dict[Series, _Counts] = {}
            count = len(rows) - (OTHER_SERIES in rows)  # named series only
            for series, delta in sorted(per.items(), key=lambda kv: _sort_key(kv[0])):
                target = series
                if target not in rows and target not in targets:
                    if target != OTHER_SERIES and count >= self.max_series:
                        target = OTHER_SERIES
                    if target != OTHER_SERIES and target not in rows and target not in targets:
                        count += 1
                targets.setdefault(target, _Counts()).merge(delta)
            for series, delta in targets.items():
                doc = rows.get(series)
                counts = _Counts.from_json(doc) if doc is not None else _Counts()
                counts.merge(delta)
                new = {"timestamp": stamp, "period": period, "model": series[0],
                       "node": series[1], "key": series[2], **counts.to_json()}
                if doc is not None:
                    self.db.update("request_stats", new, doc.doc_id)
                else:
                    self.db.insert("request_stats", new)
                written += 1
        return written

    def history(self, period: str = "hourly", limit: int = 48) -> list[dict]:
        """The newest ``limit`` period starts of a period, oldest first, each the sum
        of its series (``timestamp`` and the row's counting fields)."""
        sums: dict[str, _Counts] = {}
        for row in self.db.search("request_stats", {"period": period}):
            sums.setdefault(row["timestamp"], _Counts()).merge(_Counts.from_json(row))
        stamps = sorted(sums)[-max(0, int(limit)):] if limit else []
        return [{"timestamp": s, "period": period, **sums[s].to_json()} for s in stamps]

    # ------------------------------------------------------------------ retention
    def cutoff(self, period: str, now: float | None = None) -> str:
        """Rows of ``period`` that began before this ISO time are past their retention."""
        now = self.clock() if now is None else now
        return iso_utc(now - float(self.retention_days[period]) * 86400.0)

    def prune(self) -> int:
        """Remove the rows past their period's retention; returns how many."""
        now = self.clock()
        cutoffs = {p: self.cutoff(p, now) for p in PERIODS}

        def old(doc: Mapping) -> bool:
            limit = cutoffs.get(doc.get("period"))  # type: ignore[arg-type]
            stamp = doc.get("timestamp")
            return limit is not None and isinstance(stamp, str) and stamp < limit

        removed = len(self.db.remove("request_stats", old))
        self._last_prune = now
        self._pruned_with = dict(self.retention_days)
        if removed:
            log.info("request stats: removed %d rows past their retention", removed)
        return removed

    def prune_due(self) -> bool:
        return (self._last_prune is None or self._pruned_with != self.retention_days
                or self.clock() - self._last_prune >= PRUNE_INTERVAL_S)

    def maintain(self) -> int:
        """The ``stats-rollup`` job: a roll-up, then a prune when one is due (every
        :data:`PRUNE_INTERVAL_S`, or at once after a retention changed). Returns the
        number of rows the roll-up wrote; raises what the store raises."""
        written = self.roll_up()
        if self.prune_due():
            self.prune()
        return written

    # ------------------------------------------------------------------ reading
    def query(self, period: str = "daily", by: tuple[str, ...] = ("model",),
              since: float | None = None, until: float | None = None, limit: int = 1000
              ) -> list[dict[str, Any]]:
        """Rows of ``period`` whose start is in [since, until), grouped by the
        dimensions ``by`` (none: one total per period start), including the counts not
        rolled up yet, newest first (then by requests). Rows past the retention are
        left out even before the prune removes them."""
        if period not in PERIODS:
            raise QueryError(f"period must be one of {', '.join(PERIODS)}")
        bad = [d for d in by if d not in DIMENSIONS]
        if bad:
            raise QueryError(f"unknown dimension {bad[0]!r}")
        now = self.clock()
        lo = iso_utc(period_start(period, since)) if since is not None else ""
        lo = max(lo, self.cutoff(period, now))
        hi = iso_utc(until) if until is not None else None
        index = [DIMENSIONS.index(d) for d in by]
        groups: dict[tuple, _Counts] = {}

        def add(stamp: str, series: Series, counts: _Counts) -> None:
            if stamp < lo or (hi is not None and stamp >= hi):
                return
            key = (stamp, *(series[i] for i in index))
            groups.setdefault(key, _Counts()).merge(counts)

        with self._rollup_lock:  # rows and RAM seen at one moment (no roll-up between)
            rows = self.db.search("request_stats", lambda d: d.get("period") == period and
                                  isinstance(d.get("timestamp"), str) and d["timestamp"] >= lo)
            with self._lock:
                pending = [(h, s, self._copy(c)) for h, per in self._pending.items()
                           for s, c in per.items()]
        for row in rows:
            add(row["timestamp"], (row.get("model"), row.get("node"), row.get("key")),
                _Counts.from_json(row))
        for hour, series, counts in pending:
            add(iso_utc(period_start(period, hour)), series, counts)
        out = []
        for key, counts in groups.items():
            start = datetime.fromisoformat(key[0]).timestamp()
            entry: dict[str, Any] = {"period": period, "start": key[0][:19] + "Z",
                                     "label": start_label(period, start)}
            for dim, value in zip(by, key[1:], strict=True):
                entry[dim] = value
            entry.update(counts.view())
            out.append(entry)
        out.sort(key=lambda e: (e["start"], e["requests"]), reverse=True)
        return out[:max(1, int(limit))]

    @staticmethod
    def _copy(counts: _Counts) -> _Counts:
        c = _Counts()
        c.merge(counts)
        return c

    # ------------------------------------------------------------------ scheduling
    def run_once(self) -> int:
        """The scheduled job: a roll-up (and a prune when due) that logs instead of
        raising."""
        try:
            return self.maintain()
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


# ---------------------------------------------------------------------- server samples
SERVER_TYPES = ("health", "load", "latency", "slots", "gpu_util", "gpu_memory")


def server_samples(db: Any, *, now: float, retention_hours: float, node: str | None = None,
                   types: tuple[str, ...] = (), since: float | None = None,
                   limit: int = 1000) -> list[dict[str, Any]]:
    """The newest ``limit`` ``server_stats`` samples (oldest first) of ``node`` (all
    nodes when None) and ``types`` (all when empty), since ``since``; samples past the
    retention are left out even before the prune removes them."""
    lo = iso_utc(now - float(retention_hours) * 3600.0)
    if since is not None:
        lo = max(lo, iso_utc(since))
    wanted = set(types)

    def match(doc: Mapping) -> bool:
        stamp = doc.get("timestamp")
        return (isinstance(stamp, str) and stamp >= lo
                and (node is None or doc.get("server") == node)
                and (not wanted or doc.get("type") in wanted))

    rows = sorted(db.search("server_stats", match), key=lambda d: (d["timestamp"], d["type"]))
    out = []
    for row in rows[-max(1, int(limit)):]:
        entry = {"node": row.get("server"), "timestamp": row["timestamp"][:19] + "Z",
                 "type": row.get("type"), "value": row.get("value")}
        for extra in ("total", "gpus"):
            if row.get(extra) is not None:
                entry[extra] = row[extra]
        out.append(entry)
    return out


def utc_hour(ts: float) -> datetime:
    """The UTC hour containing ``ts`` (convenience for callers and tests)."""
    return datetime.fromtimestamp(hour_start(ts), UTC)


def stats_retention_days(config: Any) -> dict[str, float]:
    """The retention of each period from the proxy's settings."""
    return {period: float(getattr(config, f"stats_{period}_retention_days",
                                  DEFAULT_RETENTION_DAYS[period])) for period in PERIODS}

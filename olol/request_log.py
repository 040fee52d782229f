"""One log line per finished request, and JSON logs.

:class:`RequestLog` is a finish listener of the queue (``queue.add_finish_listener``):
when a request reaches a final state it logs, on the ``olol.requests`` logger at INFO,
its id, the name of the API key it came with, the model, the node, the final status,
the time it waited in the queue, its time to first token, its duration and its token
counts (the last three when the dispatcher passed them as ``usage``). In ``text``
format the line reads ``request id=... key=alice model=llama3.2:1b node=10.0.0.5:50051
status=completed queue_ms=3 ttft_ms=41 duration_ms=812 tokens_in=26 tokens_out=118``;
in ``json`` format the message is one JSON object with the same keys.

:class:`JsonFormatter` renders every log record as one JSON object per line (a
request line's fields at the top level); :func:`use_log_format` puts it on the root
logger's handlers, for ``olol proxy --log-format json``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from olol.metrics import route_of

LOG_FORMATS = ("text", "json")
LOGGER_NAME = "olol.requests"

#: The attribute of a LogRecord that carries a request line's fields.
FIELDS_ATTR = "olol_fields"


def check_log_format(value: Any) -> str:
    """:raises ValueError: not one of :data:`LOG_FORMATS`."""
    if value not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}; got {value!r}")
    return value


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return round(max(0.0, seconds) * 1000.0, 1)


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def request_fields(record: dict, key_name: str | None = None) -> dict[str, Any]:
    """The fields of one request line, in their order (None: not known)."""
    usage = record.get("usage") or {}
    enq = _num(record.get("enqueued_ts"))
    started = _num(record.get("started_ts"))
    done = _num(record.get("completed_ts"))
    first = _num(usage.get("first_token_ts"))
    fields: dict[str, Any] = {
        "id": record.get("id"),
        "key": key_name,
        "model": record.get("model"),
        "node": usage.get("node") or record.get("server_assigned"),
        "status": record.get("status"),
        "route": route_of(record),
        "queue_ms": _ms(started - enq) if enq is not None and started is not None else None,
        "ttft_ms": _ms(first - enq) if enq is not None and first is not None else None,
        "duration_ms": _ms(done - enq) if enq is not None and done is not None else None,
        "tokens_in": usage.get("prompt_tokens"),
        "tokens_out": usage.get("completion_tokens"),
    }
    attempts = record.get("attempts")
    if isinstance(attempts, int) and attempts > 1:
        fields["attempts"] = attempts
    if usage.get("resumes"):
        fields["resumes"] = usage["resumes"]
    if record.get("status") != "completed":
        if record.get("error_status"):
            fields["code"] = record["error_status"]
        if record.get("error"):
            fields["error"] = str(record["error"])[:300]
    return fields


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return orjson.dumps(text).decode()
    return text


def format_text(fields: dict[str, Any]) -> str:
    return "request " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def format_json(fields: dict[str, Any]) -> str:
    return orjson.dumps(fields).decode()


class RequestLog:
    """The finish listener that logs one line per request.

    :param fmt: ``text`` or ``json``.
    :param keys: returns the key store (or None when keys are off); a key's name is
        looked up once and remembered (``cache_size`` names).
    :param logger: where the lines go (default ``olol.requests``).
    """

    def __init__(self, fmt: str = "text", *, keys: Callable[[], Any] | None = None,
                 logger: logging.Logger | None = None, cache_size: int = 1024) -> None:
        self.fmt = check_log_format(fmt)
        self._keys = keys
        self.log = logger or logging.getLogger(LOGGER_NAME)
        self._names: OrderedDict[str, str | None] = OrderedDict()
        self._cache_size = cache_size

    def key_name(self, key_id: str | None) -> str | None:
        if not key_id:
            return None
        if key_id in self._names:
            return self._names[key_id]
        name = None
        store = self._keys() if self._keys is not None else None
        if store is not None:
            try:
                info = store.get(key_id)
                name = info.name if info is not None else None
            except Exception:  # noqa: BLE001 - a log line must not fail a request
                name = None
        self._names[key_id] = name
        while len(self._names) > self._cache_size:
            self._names.popitem(last=False)
        return name

    def __call__(self, record: dict) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        fields = request_fields(record, self.key_name(record.get("key_id")))
        message = format_json(fields) if self.fmt == "json" else format_text(fields)
        self.log.info("%s", message, extra={FIELDS_ATTR: fields})


# ---------------------------------------------------------------------- JSON logs
class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: ``time`` (UTC, ISO 8601), ``level``, ``logger``
    and ``message``, or, for a request line, ``event: "request"`` and its fields;
    ``exception`` holds a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            out["event"] = "request"
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def use_log_format(fmt: str, logger: logging.Logger | None = None) -> None:
    """Give the handlers of ``logger`` (default: the root logger) the format: ``json``
    puts a :class:`JsonFormatter` on them, ``text`` leaves them as they are.

    :raises ValueError: an unknown format.
    """
    check_log_format(fmt)
    if fmt != "json":
        return
    target = logger or logging.getLogger()
    formatter = JsonFormatter()
    for handler in target.handlers:
        handler.setFormatter(formatter)

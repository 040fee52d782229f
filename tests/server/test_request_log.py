"""One log line per finished request, in text and in JSON (``olol.request_log``), by
direct calls on a real queue; the JSON formatter; the config's check of the format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from olol.context import ProxyConfig
from olol.keys import KeyStore
from olol.metrics import request_usage
from olol.proxy import Proxy
from olol.queue import QueueManager
from olol.request_log import (
    JsonFormatter,
    RequestLog,
    check_log_format,
    format_text,
    request_fields,
    use_log_format,
)
from olol.store import DatabaseManager
from tests.support import FakeClock


@pytest.fixture
def parts():
    clock = FakeClock()
    db = DatabaseManager.memory(clock=clock)
    keys = KeyStore(db, clock)
    queue = QueueManager(db, clock=clock)
    yield clock, db, keys, queue
    db.close()


def finish_one(clock, queue, key_id=None, status="completed", **usage_kw):
    rid, _ = queue.enqueue({"endpoint": "chat", "model": "llama3.2:1b", "body": {},
                            "stream": True, "key_id": key_id})
    clock.advance(0.004)
    [claimed] = queue.dequeue(1, server="10.0.0.5:50051")
    clock.advance(0.8)
    usage = request_usage({"prompt_eval_count": 26, "eval_count": 118},
                          first_token_ts=claimed["enqueued_ts"] + 0.041, **usage_kw)
    if status == "completed":
        queue.update_request_status(rid, "completed", usage=usage)
    else:
        queue.update_request_status(rid, status, error="the node said no", error_status=502,
                                    usage=usage)
    return rid


def test_text_line(parts, caplog):
    clock, _db, keys, queue = parts
    key_id, _ = keys.create("alice")
    queue.add_finish_listener(RequestLog("text", keys=lambda: keys))
    caplog.set_level(logging.INFO, logger="olol.requests")
    rid = finish_one(clock, queue, key_id)
    [line] = [r for r in caplog.records if r.name == "olol.requests"]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f"request id={rid} key=alice model=llama3.2:1b node=10.0.0.5:50051 "
        "status=completed route=/api/chat queue_ms=4 ttft_ms=41 duration_ms=804 "
        "tokens_in=26 tokens_out=118")


def test_json_line_and_a_failure(parts, caplog):
    clock, _db, keys, queue = parts
    queue.add_finish_listener(RequestLog("json", keys=lambda: keys))
    caplog.set_level(logging.INFO, logger="olol.requests")
    rid = finish_one(clock, queue, status="failed", resumes=1)
    [line] = [r for r in caplog.records if r.name == "olol.requests"]
    fields = json.loads(line.getMessage())
    assert fields == {
        "id": rid, "key": None, "model": "llama3.2:1b", "node": "10.0.0.5:50051",
        "status": "failed", "route": "/api/chat", "queue_ms": 4.0, "ttft_ms": 41.0,
        "duration_ms": 804.0, "tokens_in": 26, "tokens_out": 118, "resumes": 1,
        "code": 502, "error": "the node said no"}


def test_the_json_formatter_makes_every_record_one_object(parts):
    clock, _db, keys, queue = parts
    stream = io.StringIO()
    logger = logging.getLogger("olol.test-json")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        use_log_format("json", logger)
        assert isinstance(handler.formatter, JsonFormatter)
        queue.add_finish_listener(RequestLog("json", keys=lambda: keys, logger=logger))
        rid = finish_one(clock, queue)
        logger.warning("node %s is unhealthy: %s", "gpu1:50051", "token rejected")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    assert lines[0]["event"] == "request" and lines[0]["id"] == rid
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "olol.test-json"
    assert lines[0]["time"].endswith("Z") and lines[0]["tokens_out"] == 118
    assert lines[1]["message"] == "node gpu1:50051 is unhealthy: token rejected"
    assert "RuntimeError: boom" in lines[2]["exception"]


def test_quoting_and_missing_values():
    text = format_text({"id": "x", "key": None, "error": 'a "b" c', "n": 1.5, "m": 3.0})
    assert text == 'request id=x key=- error="a \\"b\\" c" n=1.5 m=3'
    fields = request_fields({"id": "x", "status": "cancelled", "kind": "job"})
    assert fields["route"] == "/olol/v1/jobs" and fields["queue_ms"] is None


def test_no_line_when_the_logger_is_quiet(parts, caplog):
    clock, _db, keys, queue = parts
    calls = []

    class Keys:
        def get(self, key_id):
            calls.append(key_id)

    queue.add_finish_listener(RequestLog("text", keys=lambda: Keys()))
    caplog.set_level(logging.WARNING, logger="olol.requests")
    finish_one(clock, queue, key_id="key_x")
    assert not [r for r in caplog.records if r.name == "olol.requests"]
    assert calls == []  # nothing looked up either


def test_a_bad_format_is_refused_before_anything_opens(tmp_path):
    assert check_log_format("json") == "json"
    with pytest.raises(ValueError, match="log_format must be one of text, json"):
        Proxy(ProxyConfig(data_dir=tmp_path / "data", log_format="xml"))
    assert not (tmp_path / "data").exists()

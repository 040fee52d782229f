"""AfterResponse: work deferred by a handler runs once the response is closed, always."""

from __future__ import annotations

import pytest

from olol.server.app import AFTER_RESPONSE, AfterResponse


class Body:
    def __init__(self, log: list) -> None:
        self.log = log

    def __iter__(self):
        self.log.append("body")
        yield b"answer"

    def close(self) -> None:
        self.log.append("closed")


def test_deferred_work_runs_after_the_body_in_order_even_when_one_fails():
    log: list = []

    def app(environ, start_response):
        environ[AFTER_RESPONSE].append(lambda: log.append("first"))
        environ[AFTER_RESPONSE].append(lambda: 1 / 0)
        environ[AFTER_RESPONSE].append(lambda: log.append("last"))
        start_response("200 OK", [])
        return Body(log)

    body = AfterResponse(app)({}, lambda *a: None)
    assert b"".join(body) == b"answer"
    assert log == ["body"]  # nothing deferred ran while the answer was written
    body.close()
    assert log == ["body", "closed", "first", "last"]


def test_deferred_work_runs_when_the_app_raises():
    log: list = []

    def app(environ, start_response):
        environ[AFTER_RESPONSE].append(lambda: log.append("released"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        AfterResponse(app)({}, lambda *a: None)
    assert log == ["released"]

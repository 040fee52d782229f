"""Fixtures shared by every suite: a real PostgreSQL server (see tests/pgserver.py)."""

from __future__ import annotations

import os
import uuid

import pytest

from tests import pgserver


def _need_postgres() -> None:
    """Skip where the server binaries or the driver are absent (fail under CI, which
    installs them)."""
    reason = pgserver.missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One PostgreSQL server for the session."""
    _need_postgres()
    server = pgserver.PgServer(tmp_path_factory.mktemp("pg")).start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server):
    """DSN of a fresh empty database on the session's server, dropped afterwards."""
    name = f"olol_test_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def pg_own_server(tmp_path):
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    _need_postgres()
    server = pgserver.PgServer(tmp_path).start()
    yield server
    server.cleanup()

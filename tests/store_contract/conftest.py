"""The store contract's backends: in memory, TinyDB on a folder, PostgreSQL (a fresh
database on the session's server, see tests/pgserver.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from olol.store import DatabaseManager
from tests.support import FakeClock


class Backend:
    """Opens stores of one kind on the same data (``reopenable``: the data outlives a
    store's close)."""

    def __init__(self, name: str, opener: Callable[..., Any], clock: FakeClock):
        self.name = name
        self.clock = clock
        self._opener = opener
        self.opened: list[Any] = []
        self.reopenable = name != "memory"

    def open(self, **kw: Any) -> Any:
        store = self._opener(clock=self.clock, **kw)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["memory", "tinydb", "postgresql"])
def backend(request, tmp_path, clock):
    if request.param == "memory":
        b = Backend("memory", DatabaseManager.memory, clock)
    elif request.param == "tinydb":
        b = Backend("tinydb", lambda **kw: DatabaseManager(tmp_path / "data", **kw), clock)
    else:
        from olol.store import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        b = Backend("postgresql", lambda **kw: PostgresStore(
            dsn, **{"min_size": 1, "max_size": 8, "connect_timeout": 5.0, **kw}), clock)
    yield b
    b.close_all()


@pytest.fixture
def db(backend):
    return backend.open()

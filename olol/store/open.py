"""``open_store(spec)``: the store a ``--store`` value names."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from olol.interfaces import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(spec: str) -> bool:
    return str(spec).lower().startswith(POSTGRES_SCHEMES)


def open_store(spec: str, *, clock: Callable[[], float] = time.time, **kw: Any) -> Store:
    """``postgresql://...`` or ``postgres://...``: a :class:`~olol.store.PostgresStore`
    (``kw``: its options); ``:memory:``: an in-memory
    :class:`~olol.store.DatabaseManager`; anything else: a DatabaseManager on that
    folder. The store is open (and its schema ready) on return."""
    spec = str(spec)
    if is_postgres(spec):
        from olol.store.postgres import PostgresStore

        return PostgresStore(spec, clock=clock, **kw)
    from olol.store.database import DatabaseManager

    if spec == ":memory:":
        return DatabaseManager.memory(clock=clock, **kw)
    return DatabaseManager(spec, clock=clock, **kw)

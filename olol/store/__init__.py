"""The durable store: TinyDB as query engine and snapshot, plus a write-ahead journal;
or PostgreSQL (:class:`PostgresStore`), for several proxies on one database."""

from olol.store.database import (
    DatabaseManager,
    StoreClosedError,
    StoreUnavailableError,
    configure_db,
    default_data_dir,
    get_db,
    reset_default_db,
)
from olol.store.journal import StoreCorruptError, StoreError, StoreIOError, StoreLockedError
from olol.store.open import open_store
from olol.store.postgres import PostgresStore
from olol.store.schema import SchemaError, TableSchema, UnknownTableError
from olol.store.sync import SyncManager

__all__ = [
    "DatabaseManager",
    "PostgresStore",
    "SchemaError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreIOError",
    "StoreLockedError",
    "StoreUnavailableError",
    "SyncManager",
    "TableSchema",
    "UnknownTableError",
    "configure_db",
    "default_data_dir",
    "get_db",
    "open_store",
    "reset_default_db",
]

"""The durable store: TinyDB as query engine and snapshot, plus a write-ahead journal."""

from olol.store.database import (
    DatabaseManager,
    StoreClosedError,
    configure_db,
    default_data_dir,
    get_db,
    reset_default_db,
)
from olol.store.journal import StoreCorruptError, StoreError, StoreIOError, StoreLockedError
from olol.store.schema import SchemaError, TableSchema, UnknownTableError
from olol.store.sync import SyncManager

__all__ = [
    "DatabaseManager",
    "SchemaError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreIOError",
    "StoreLockedError",
    "SyncManager",
    "TableSchema",
    "UnknownTableError",
    "configure_db",
    "default_data_dir",
    "get_db",
    "reset_default_db",
]

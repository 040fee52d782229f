"""olol: one Ollama-compatible endpoint in front of a fleet of Ollama hosts."""

__version__ = "0.1.0"

from olol.store import (  # noqa: E402
    DatabaseManager,
    SyncManager,
    configure_db,
    get_db,
)

__all__ = [
    "ClusterManager",
    "DatabaseManager",
    "HealthMonitor",
    "ModelRegistry",
    "QueueManager",
    "RequestScheduler",
    "SyncManager",
    "__version__",
    "configure_db",
    "get_db",
]


def __getattr__(name: str):
    """The coordinator's other public classes, imported on first use (the store
    alone must stay cheap to import, e.g. for the crash-test writer)."""
    where = {
        "ClusterManager": "olol.cluster",
        "HealthMonitor": "olol.health",
        "ModelRegistry": "olol.registry",
        "QueueManager": "olol.queue",
        "RequestScheduler": "olol.scheduler",
    }.get(name)
    if where is None:
        raise AttributeError(f"module 'olol' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(where), name)

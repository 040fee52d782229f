"""olol: one Ollama-compatible endpoint in front of a fleet of Ollama hosts.

The public classes are imported on first use (``olol.QueueManager``), so that importing
one part (the node agent in ``olol.agent``, the store for the crash-test writer) does not
load the others.
"""

__version__ = "0.1.0"

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

_WHERE = {
    "ClusterManager": "olol.cluster",
    "DatabaseManager": "olol.store",
    "HealthMonitor": "olol.health",
    "ModelRegistry": "olol.registry",
    "QueueManager": "olol.queue",
    "RequestScheduler": "olol.scheduler",
    "SyncManager": "olol.store",
    "configure_db": "olol.store",
    "get_db": "olol.store",
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'olol' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(where), name)

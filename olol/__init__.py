"""olol: one Ollama-compatible endpoint in front of a fleet of Ollama hosts."""

__version__ = "0.1.0"

from olol.store import (  # noqa: E402
    DatabaseManager,
    SyncManager,
    configure_db,
    get_db,
)

__all__ = ["DatabaseManager", "SyncManager", "__version__", "configure_db", "get_db"]

"""The durable priority queue of inference requests (roadmap 4.2).

``QueueManager`` keeps the ``inference_queue`` table of the store and RAM
indexes over it; ``QueueFullError`` is what admission raises at the bounds.
"""

from olol.queue.manager import QueueManager
from olol.queue.records import (
    ENDPOINTS,
    FINISHED,
    KINDS,
    LEASE_ERROR,
    RESTART_ERROR,
    QueueFullError,
    model_key_of,
)

__all__ = [
    "ENDPOINTS",
    "FINISHED",
    "KINDS",
    "LEASE_ERROR",
    "RESTART_ERROR",
    "QueueFullError",
    "QueueManager",
    "model_key_of",
]

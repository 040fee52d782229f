"""The proxy's configuration and the objects built once at start-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:11435"


@dataclass
class ProxyConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: Path | None = None  # None: in-memory store (tests)
    nodes: list[str] = field(default_factory=list)
    max_body_bytes: int = 32 * 1024 * 1024
    waitress_threads: int = 64
    malloc_arenas: int = 2  # glibc malloc arenas (0: glibc's default, 8 per core)
    keys_enabled: bool = False
    request_timeout_s: float = 600.0
    stream_idle_timeout_s: float = 300.0
    # connections (olol.server.door): strangers can reach the port
    max_connections: int = 4096  # open HTTP connections; new ones wait past this
    idle_timeout_s: float = 30.0  # an idle keep-alive connection is closed after this
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 60.0  # a bounded body must arrive within this of its headers
    default_priority: int = 0
    # queue
    max_queue_depth: int = 10_000
    max_queue_depth_per_model: int = 2_000
    retention_hours: float = 24.0
    lease_s: float = 600.0  # a claim expires unless the dispatcher renews it
    max_queued_bytes: int = 1 << 30  # request bodies that pending + running requests hold
    max_finished_sync: int = 2_000  # finished sync records kept as history (newest)
    # dispatch
    dispatcher_threads: int = 32
    strategy: str = "smart"
    max_attempts: int = 3
    retry_backoff_s: float = 0.2
    batch_size: int = 8
    # nodes
    node_token: str | None = None
    node_tls: Any = None
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    failure_threshold: int = 3
    # models (issue 5)
    model_copies: int = 1  # copies a pull without target nodes places in the cluster
    pinned_models: list[str] = field(default_factory=list)  # never removed by a plan
    auto_optimize: bool = False  # apply optimize_model_distribution() on a timer
    pull_timeout_s: float = 3600.0
    max_blob_bytes: int = 64 * 1024**3  # one /api/blobs upload
    # maintenance job intervals in seconds (olol.maintenance.DEFAULT_JOB_INTERVALS names)
    job_intervals: dict[str, float] = field(default_factory=dict)


@dataclass
class ProxyContext:
    config: ProxyConfig
    db: Any
    queue: Any
    hub: Any
    cluster: Any
    keys: Any = None
    stats: Any = None
    scheduler: Any = None
    dispatcher: Any = None  # olol.dispatcher.Dispatcher: runs a request inline when it can
    registry: Any = None  # olol.registry.ModelRegistry
    maintenance: Any = None  # olol.maintenance.MaintenanceJobs
    clock: Callable[[], float] = time.time
    # set when the proxy shuts down: the front door stops admitting (503)
    draining: threading.Event = field(default_factory=threading.Event)

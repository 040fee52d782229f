"""The proxy's configuration and the objects built once at start-up."""

from __future__ import annotations

import os
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
    # a file holding the token (never put secrets on a command line); default: the
    # systemd credential "node-token" ($CREDENTIALS_DIRECTORY/node-token) when present
    node_token_file: str | None = None
    # TLS to the node agents (olol certs init / issue): the CA that signed them, and a
    # client certificate + key for mutual TLS; node_server_name overrides the checked name
    node_ca: str | None = None
    node_cert: str | None = None
    node_key: str | None = None
    node_server_name: str | None = None
    node_tls: Any = None  # a TLSConfig built in code (wins over the node_* paths)
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


def node_token_of(config: ProxyConfig) -> str | None:
    """The token for the node agents: ``node_token``, else the contents of
    ``node_token_file``, else the systemd credential ``node-token``.

    :raises ValueError: the file cannot be read or is empty.
    """
    if config.node_token:
        return config.node_token
    path = config.node_token_file
    if path is None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        candidate = Path(creds) / "node-token" if creds else None
        if candidate is None or not candidate.is_file():
            return None
        path = str(candidate)
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"node_token_file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"node_token_file {path} is empty")
    return token


def node_tls_of(config: ProxyConfig) -> Any:
    """The TLS settings for the node agents (None: plaintext).

    :raises ValueError: a client certificate without its key, or a file that is missing.
    """
    if config.node_tls is not None:
        return config.node_tls
    if not (config.node_ca or config.node_cert or config.node_key):
        return None
    if bool(config.node_cert) != bool(config.node_key):
        raise ValueError("node_cert and node_key go together (mutual TLS needs both)")
    from olol.rpc.client import TLSConfig

    for name in ("node_ca", "node_cert", "node_key"):
        value = getattr(config, name)
        if value and not Path(value).is_file():
            raise ValueError(f"{name}: no such file {value}")
    return TLSConfig(root_cert=Path(config.node_ca) if config.node_ca else None,
                     client_cert=Path(config.node_cert) if config.node_cert else None,
                     client_key=Path(config.node_key) if config.node_key else None,
                     server_name=config.node_server_name)

"""The proxy's configuration and the objects built once at start-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olol.dispatcher import Dispatcher
    from olol.interfaces import ClusterView, Queue, ResponseHub, Store
    from olol.keys import KeyStore
    from olol.maintenance import MaintenanceJobs
    from olol.metrics import ProxyMetrics
    from olol.registry import ModelRegistry
    from olol.scheduler import RequestScheduler
    from olol.settings import RuntimeSettings
    from olol.stats import RequestStats
    from olol.traffic import TrafficRecorder

DEFAULT_LISTEN = "127.0.0.1:11435"


def opt(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
        runtime_only: bool = False, live: bool = False) -> Any:
    """A ProxyConfig field with the sentence that documents it (docs/config.md is
    generated from these: ``python -m olol.config_doc``). ``runtime_only`` fields are
    set in code, never from the file, the environment or a flag; ``live`` ones can also
    be changed while the proxy serves (``PATCH /olol/v1/config``, olol.settings)."""
    meta = {"help": help, "runtime_only": runtime_only, "live": live}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ProxyConfig:
    """The proxy's settings: the single source for the TOML file (``--config``), the
    ``OLOL_<KEY>`` environment variables, the command-line flags and docs/config.md."""

    # -- front door ------------------------------------------------------------------
    listen: str = opt(DEFAULT_LISTEN, "HOST:PORT the Ollama-compatible API is served on.")
    data_dir: Path | None = opt(None, "Data folder (store, journal, request statistics); "
                                "`olol proxy` defaults it to $OLOL_DATA_DIR, else "
                                "$XDG_DATA_HOME/olol. Unset in code: an in-memory store.")
    store: str | None = opt(None, "Where the proxy keeps its state instead of the data "
                            "folder: a `postgresql://USER@HOST:PORT/DB` URL shares one queue, "
                            "keys, settings and registry among several proxies "
                            "(docs/postgresql.md). Unset: TinyDB files in the data folder.")
    keys_enabled: bool = opt(False, "Require an API key (`Authorization: Bearer`) on every "
                             "route but the liveness and readiness probes.")
    default_priority: int = opt(0, "Queue priority of requests without a key default or an "
                                "X-OLOL-Priority header (-100..100).", live=True)
    max_body_bytes: int = opt(32 * 1024 * 1024, "Largest request body on every route but "
                              "blob uploads; checked on the headers (413).", live=True)
    max_blob_bytes: int = opt(64 * 1024**3, "Largest `/api/blobs` upload (admin keys only).")
    waitress_threads: int = opt(64, "HTTP worker threads: requests served at once.")
    max_connections: int = opt(4096, "Open HTTP connections; the open-file limit is raised "
                               "to fit.")
    idle_timeout_s: float = opt(30.0, "An idle keep-alive connection is closed after this.")
    header_timeout_s: float = opt(10.0, "A request's headers must arrive within this of its "
                                  "first byte.")
    body_timeout_s: float = opt(60.0, "A bounded body must arrive within this of its headers.")
    malloc_arenas: int = opt(2, "glibc malloc arenas (0: glibc's default of 8 per core, "
                             "which keeps far more memory after large bodies).")
    request_timeout_s: float = opt(600.0, "Longest a synchronous request may wait and run.")
    stream_idle_timeout_s: float = opt(300.0, "A stream that sent output and then nothing "
                                       "for this long is ended.")
    metrics_public: bool = opt(False, "Serve `/metrics` without an API key when keys are "
                               "enabled (otherwise it needs an admin key).")
    metrics_max_models: int = opt(100, "Most distinct model names used as metric labels; "
                                  "other models are counted as `other`.")
    log_format: str = opt("text", "Format of the logs: text | json (one JSON object per "
                          "line, request lines with their fields at the top level).")
    request_log: bool = opt(True, "Log one line per finished request (id, key name, model, "
                            "node, status, queue wait, time to first token, duration, "
                            "tokens) on the `olol.requests` logger.")
    # -- queue -------------------------------------------------------------------------
    max_queue_depth: int = opt(10_000, "Pending + running requests of all models; past it "
                               "503 with Retry-After.", live=True)
    max_queue_depth_per_model: int = opt(2_000, "The same bound for one model.", live=True)
    max_queued_bytes: int = opt(1 << 30, "Request bodies (as received) that pending and "
                                "running requests may hold; past it 503.", live=True)
    max_finished_sync: int = opt(2_000, "Finished synchronous requests kept as history.", live=True)
    retention_hours: float = opt(24.0, "Finished requests and job results are removed after "
                                 "this.", live=True)
    lease_s: float = opt(600.0, "A claimed request returns to the queue unless its "
                         "dispatcher renews the claim within this.")
    # -- dispatch ----------------------------------------------------------------------
    dispatcher_threads: int = opt(32, "Dispatcher threads (requests placed and run at once, "
                                  "besides those run on the front door's thread).")
    strategy: str = opt("smart", "Placement: smart | least-busy | round-robin.", live=True)
    batch_size: int = opt(8, "Most requests one scheduling pass places together.")
    max_attempts: int = opt(3, "Tries of one request (on different nodes) before it fails; "
                            "also the claims after which a job that crashed the proxy fails.", live=True)
    retry_backoff_s: float = opt(0.2, "Wait before a failed request is tried again.", live=True)
    first_record_timeout_s: float = opt(120.0, "Longest wait for a node's first record "
                                        "(0: none); a cold model adds its learned load time.", live=True)
    stall_timeout_s: float = opt(60.0, "Longest silence between a node's records before any "
                                 "output reached the client (0: none).", live=True)
    cold_start_s: float = opt(30.0, "Least load time assumed for a model cold on its node.")
    resume_streams: bool = opt(True, "A stream whose node dies or stalls after output "
                               "reached the client is continued on another node that has "
                               "the model (docs/proxy.md).", live=True)
    max_resumes: int = opt(2, "Most times one stream is carried over to another node.",
                           live=True)
    node_progress: bool = opt(True, "Agents build non-streamed answers from a stream and "
                              "send progress, so that deadlines tell a hung node from a "
                              "long answer (needs agents of this version).")
    node_mux: bool = opt(True, "Send generate and chat calls to each node on one "
                         "multiplexed gRPC call, the records of its parallel slots "
                         "sharing messages (agents of an older version get one call "
                         "each).")
    # -- nodes -------------------------------------------------------------------------
    nodes: list[str] = opt(help="Node agents (HOST:PORT) to dispatch to; more are added "
                           "with `olol nodes add`.", factory=list)
    node_token: str | None = opt(None, "Bearer token for the node agents (prefer "
                                 "node_token_file: a command line is visible in ps).")
    node_token_file: str | None = opt(None, "File holding the node token; default: the "
                                      "systemd credential node-token when present.")
    node_ca: str | None = opt(None, "CA certificate (PEM) that signed the agents' "
                              "certificates: turns TLS on (`olol certs init`).")
    node_cert: str | None = opt(None, "Client certificate (PEM) for mutual TLS "
                                "(`olol certs issue proxy`).")
    node_key: str | None = opt(None, "Its private key (PEM).")
    node_server_name: str | None = opt(None, "Name checked against the agents' certificates "
                                       "instead of their host.")
    node_tls: Any = opt(None, "A TLSConfig built in code (wins over the node_* paths).",
                        runtime_only=True)
    health_interval_s: float = opt(5.0, "Seconds between health polls of each node.")
    health_timeout_s: float = opt(2.0, "Timeout of one health poll.")
    failure_threshold: int = opt(3, "Failed polls in a row before a node is unhealthy.")
    outlier_consecutive_failures: int = opt(3, "Node-side failures in a row that eject a "
                                            "node for a model.", live=True)
    outlier_failure_rate: float = opt(0.5, "A node failing this share of a model's recent "
                                      "calls, while its peers fail half as often, is ejected.", live=True)
    outlier_base_ejection_s: float = opt(5.0, "First ejection; each further one adds this.", live=True)
    outlier_max_ejection_s: float = opt(20.0, "Longest ejection.", live=True)
    outlier_max_ejected_fraction: float = opt(0.5, "Most of a model's nodes ejected at once "
                                              "(never its only node).", live=True)
    # -- models ------------------------------------------------------------------------
    model_copies: int = opt(1, "Nodes a pull without target nodes places the model on.")
    pinned_models: list[str] = opt(help="Models a distribution plan never removes.",
                                   factory=list)
    auto_optimize: bool = opt(False, "Apply the model distribution plan on a timer.")
    pull_timeout_s: float = opt(3600.0, "Longest pull, push or blob upload.")
    job_intervals: dict[str, float] = opt(help="Maintenance job intervals in seconds, by job "
                                          "name (`olol maintenance ls` lists them).", factory=dict, live=True)
    # -- statistics ------------------------------------------------------------------
    stats_hourly_retention_days: float = opt(14.0, "Hourly `request_stats` rows are removed "
                                             "after this many days.", live=True)
    stats_daily_retention_days: float = opt(366.0, "Daily `request_stats` rows are removed "
                                            "after this many days.", live=True)
    stats_weekly_retention_days: float = opt(1830.0, "Weekly `request_stats` rows are removed "
                                             "after this many days.", live=True)
    stats_max_series: int = opt(1000, "Most (model, node, key) series one hour, day or week "
                                "of `request_stats` holds; more are counted as `(other)`.",
                                live=True)
    server_stats_retention_hours: float = opt(24.0, "`server_stats` samples (health, load, "
                                              "slots, GPU) are removed after this many hours.",
                                              live=True)


def readiness_of(draining: threading.Event, db: Store, cluster: ClusterView) -> list[str]:
    """Why the proxy cannot serve inference now (empty: ready): shutting down, the
    store closed or failed, no healthy node (each node's last error named)."""
    reasons = []
    if draining.is_set():
        reasons.append("the proxy is shutting down")
    if getattr(db, "closed", False):
        reasons.append("the store is closed")
    nodes = cluster.list_nodes()
    if not nodes:
        reasons.append("no node is configured (olol nodes add HOST:PORT)")
    elif not any(n.healthy for n in nodes):
        why = "; ".join(f"{n.address}: {n.last_error or 'not checked yet'}"
                        for n in nodes[:10])
        reasons.append(f"no healthy node among {len(nodes)} ({why})")
    return reasons


@dataclass(frozen=True)
class Services:
    """The collaborators the front door (and the dashboard, the metrics) work with,
    built once at start-up (:class:`olol.proxy.Proxy`) and never reassigned: a typed,
    frozen set. The objects themselves keep their own state (``config`` holds the live
    settings, ``draining`` is set on shutdown). ``None`` marks a part this assembly
    does not have (a test app without a registry, say)."""

    config: ProxyConfig
    db: Store
    queue: Queue
    hub: ResponseHub
    cluster: ClusterView
    keys: KeyStore
    clock: Callable[[], float] = time.time
    stats: RequestStats | None = None
    scheduler: RequestScheduler | None = None
    dispatcher: Dispatcher | None = None  # runs a request inline when it can
    registry: ModelRegistry | None = None
    maintenance: MaintenanceJobs | None = None
    settings: RuntimeSettings | None = None  # GET/PATCH /olol/v1/config
    metrics: ProxyMetrics | None = None  # served at /metrics
    traffic: TrafficRecorder | None = None  # the dashboard's last hour
    # set when the proxy shuts down: the front door stops admitting (503)
    draining: threading.Event = field(default_factory=threading.Event)

    def readiness(self) -> list[str]:
        """Why the proxy cannot serve inference now (empty: ready)."""
        return readiness_of(self.draining, self.db, self.cluster)


@dataclass
class ProxyContext:
    """A mutable assembly of the same collaborators, for code and tests that build the
    front door piece by piece; :meth:`services` freezes it (``create_app`` accepts
    either)."""

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
    settings: Any = None  # olol.settings.RuntimeSettings: GET/PATCH /olol/v1/config
    metrics: Any = None  # olol.metrics.ProxyMetrics: served at /metrics
    traffic: Any = None  # olol.traffic.TrafficRecorder: the dashboard's last hour
    clock: Callable[[], float] = time.time
    # set when the proxy shuts down: the front door stops admitting (503)
    draining: threading.Event = field(default_factory=threading.Event)

    def readiness(self) -> list[str]:
        """Why the proxy cannot serve inference now (empty: ready): shutting down, the
        store closed or failed, no healthy node (each node's last error named)."""
        return readiness_of(self.draining, self.db, self.cluster)

    def services(self) -> Services:
        """These collaborators as a frozen :class:`Services` (a key store on ``db`` is
        made, and kept here, when there is none: keys can be prepared before they are
        enabled)."""
        if self.keys is None:
            from olol.keys import KeyStore

            self.keys = KeyStore(self.db, self.clock)
        return Services(
            config=self.config, db=self.db, queue=self.queue, hub=self.hub,
            cluster=self.cluster, keys=self.keys, clock=self.clock, stats=self.stats,
            scheduler=self.scheduler, dispatcher=self.dispatcher, registry=self.registry,
            maintenance=self.maintenance, settings=self.settings, metrics=self.metrics,
            traffic=self.traffic, draining=self.draining,
        )


def node_token_of(config: ProxyConfig) -> str | None:
    """The token for the node agents: ``node_token``, else the contents of
    ``node_token_file``, else the systemd credential ``node-token``.

    :raises ValueError: the file cannot be read or is empty.
    """
    from olol.credentials import read_secret

    try:
        return read_secret(config.node_token, config.node_token_file, "node-token")
    except ValueError as exc:
        raise ValueError(f"node_token_file: {exc}") from None


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

# -- the schema, read by the config file, the environment, the flags and the API --------

def config_fields(schema: type = ProxyConfig) -> list[Any]:
    """The fields of ``schema`` (ProxyConfig, or the worker's WorkerConfig) that the
    file, the environment and flags may set."""
    return [f for f in fields(schema) if not f.metadata.get("runtime_only")]


def default_of(key: str, schema: type = ProxyConfig) -> Any:
    spec = next(f for f in fields(schema) if f.name == key)
    return spec.default_factory() if callable(spec.default_factory) else spec.default


def from_text(key: str, raw: str, schema: type = ProxyConfig) -> Any:
    """An environment variable's text as the type of field ``key`` (judged by its
    default); a text that does not parse is returned as is, for _type_problem to name."""
    import json

    default = default_of(key, schema)
    text = raw.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return raw
    if isinstance(default, int):
        try:
            return int(text, 10)
        except ValueError:
            return raw
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            return raw
    if isinstance(default, list):
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(default, dict):
        try:
            return json.loads(text)
        except ValueError:
            return raw
    return raw


def type_problem(key: str, value: Any, schema: type = ProxyConfig) -> str | None:
    """Why ``value`` does not fit the field ``key`` of ``schema`` (judged by its default)."""
    default = default_of(key, schema)
    if default is None:  # optional paths and secrets
        ok = isinstance(value, str)
        want = "a string"
    elif isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of strings"
    elif isinstance(default, dict):
        ok, want = isinstance(value, dict), "a table"
    else:
        return None
    return None if ok else f"{key} must be {want}, got {value!r}"

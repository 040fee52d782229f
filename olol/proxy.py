"""``Proxy``: builds the coordinator once at start-up and runs it.

One process: the store, the queue, the response hub, the cluster and its
health monitor, the dispatcher pool, the maintenance scheduler, and the front
door (Flask served by waitress). ``stop()`` stops admitting, stops claiming,
lets running work finish within a grace period, returns what is left to the
queue (or marks it interrupted), and closes the store.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from olol.address import format_address, is_loopback, parse_address
from olol.context import ProxyConfig, Services, node_tls_of, node_token_of
from olol.hub import ResponseHub
from olol.store.database import configured_db as get_db_default
from olol.store.database import reset_default_db

if TYPE_CHECKING:
    from olol.keys import KeyStore
    from olol.maintenance import MaintenanceJobs
    from olol.store import DatabaseManager

log = logging.getLogger(__name__)


def split_hostport(listen: str, default_port: int) -> tuple[str, int]:
    """The proxy's ``listen`` address (:func:`olol.address.parse_address`)."""
    return parse_address(listen, what="listen address", default_port=default_port,
                         default_host="127.0.0.1", listen=True)


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``) for threads started later.

    By default glibc gives each thread that allocates concurrently its own arena, up to
    8 per core, and an arena keeps what its thread freed. Request bodies of up to tens
    of megabytes parsed on 64 waitress threads then leave RSS far above what is in use:
    in the soak benchmark (100,000 requests of 1 KB-1 MB) the proxy grew by 176 MB with
    glibc's default and by 1 MB with 2 arenas, which also served 18% more requests/s.
    Returns False where it cannot apply (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(mallopt(ctypes.c_int(m_arena_max), ctypes.c_int(int(arenas))))


def raise_fd_limit(connections: int, spare: int = 512) -> int:
    """Raise this process's soft limit on open files so that ``connections`` HTTP
    connections fit beside ``spare`` other descriptors (store, gRPC, logs); returns the
    number of connections that fit (fewer when the hard limit is lower)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + spare
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fit = max(16, soft - spare)
        log.warning("open-file limit %d allows %d HTTP connections, not %d (raise `ulimit -n`)",
                    soft, fit, connections)
        return fit
    return connections


def _on_loop(server: Any, work: Callable[[], None]) -> None:
    """Run ``work`` on a waitress server's loop thread (sockets are closed there)."""
    try:
        server.trigger.pull_trigger(work)
    except OSError:  # the trigger is already closed: the loop is going away by itself
        pass


def close_waitress(server: Any, thread: threading.Thread | None, timeout: float = 5.0) -> None:
    """Stop a waitress server running ``server.run`` on ``thread``: stop accepting
    connections, serve the requests already received (a stopping proxy answers them
    at once), finish or drop what is left, then close every channel. Sockets are closed
    on the server loop's own thread (closing them from here would race its select)."""
    from waitress import wasyncore

    deadline = time.monotonic() + timeout

    def stop_listening() -> None:
        # the listening socket only (the server's own close() also shuts the trigger):
        # a new connection is refused now, rather than accepted and dropped later
        if isinstance(server, wasyncore.dispatcher):
            try:
                wasyncore.dispatcher.close(server)
            except Exception:  # noqa: BLE001 - best effort while tearing down
                pass

    _on_loop(server, stop_listening)
    # waitress's threads stop before taking another task: let them empty the queue first
    while server.task_dispatcher.queue and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        server.task_dispatcher.shutdown(cancel_pending=True,
                                        timeout=max(0.1, deadline - time.monotonic()))
    except Exception:  # noqa: BLE001 - best effort while tearing down
        pass

    def close_all() -> None:
        for channel in list(server._map.values()):
            try:
                # HTTP channels close through handle_close (their own cleanup); the
                # listening socket and the trigger have none and would log "unhandled
                # close event", so they are simply closed
                if hasattr(channel, "requests"):
                    channel.handle_close()
                else:
                    channel.close()
            except Exception:  # noqa: BLE001 - best effort while tearing down
                pass

    _on_loop(server, close_all)
    if thread is not None:
        thread.join(timeout=timeout)


def exposure_warning(host: str, keys_enabled: bool) -> str | None:
    """The warning printed on every start when the proxy is reachable beyond this
    machine without API keys (like Ollama, it listens on loopback by default)."""
    if is_loopback(host) or keys_enabled:
        return None
    return (f"listening on {host} with API keys disabled: anyone who can reach this port "
            "can use the cluster and its models (enable keys with --keys)")


class Proxy:
    def __init__(self, config: ProxyConfig, *, clock: Callable[[], float] = time.time,
                 client_factory: Callable[[str], Any] | None = None,
                 db: DatabaseManager | None = None):
        from apscheduler.schedulers.background import BackgroundScheduler

        from olol.cluster import ClusterManager
        from olol.dispatcher import Dispatcher
        from olol.health import HealthMonitor
        from olol.maintenance import MaintenanceJobs, install_proxy_jobs
        from olol.metrics import ProxyMetrics
        from olol.outliers import OutlierDetector
        from olol.queue import QueueManager
        from olol.registry import ModelRegistry
        from olol.request_log import RequestLog, check_log_format
        from olol.scheduler import RequestScheduler
        from olol.stats import RequestStats, stats_retention_days
        from olol.store import DatabaseManager, SyncManager, configure_db
        from olol.traffic import TrafficRecorder

        self.config = config
        self.clock = clock
        check_log_format(config.log_format)
        if config.malloc_arenas > 0:
            limit_malloc_arenas(config.malloc_arenas)
        if db is None and config.store:
            from olol.store import open_store

            db = open_store(config.store, clock=clock)  # type: ignore[assignment]
        if db is None:
            db = (DatabaseManager(config.data_dir, clock=clock) if config.data_dir is not None
                  else DatabaseManager.memory(clock=clock))
        self.db = db
        configure_db(db)  # the process default that get_db() returns
        try:
            self.queue = QueueManager(
                db, clock=clock, max_depth=config.max_queue_depth,
                max_depth_per_model=config.max_queue_depth_per_model,
                retention_hours=config.retention_hours, lease_s=config.lease_s,
                max_attempts=config.max_attempts, max_queued_bytes=config.max_queued_bytes,
                max_finished_sync=config.max_finished_sync,
            )
            self.recovered = self.queue.recover()
            self.hub = ResponseHub()
            kw: dict[str, Any] = {"clock": clock, "token": node_token_of(config),
                                  "tls": node_tls_of(config), "mux": config.node_mux}
            if client_factory is not None:
                kw["client_factory"] = client_factory
            kw["outliers"] = OutlierDetector(
                clock=clock, consecutive_failures=config.outlier_consecutive_failures,
                failure_rate=config.outlier_failure_rate,
                base_ejection_s=config.outlier_base_ejection_s,
                max_ejection_s=config.outlier_max_ejection_s,
                max_ejected_fraction=config.outlier_max_ejected_fraction,
            )
            # the one RAM view of the servers and models tables (cluster, registry, health)
            self.sync_manager = SyncManager(db, tables=("servers", "models"))
            self.sync_manager.load_initial_state()
            self.cluster = ClusterManager(db, sync_manager=self.sync_manager, **kw)
            self.cluster.sync_config_nodes(config.nodes)
            self.cluster.follow_store()  # a shared store: other proxies' node list
            self.stats = RequestStats(db, clock=clock, max_series=config.stats_max_series,
                                      retention_days=stats_retention_days(config))
            self.registry = ModelRegistry(
                self.cluster, db, clock=clock, copies=config.model_copies,
                pinned=config.pinned_models, pull_timeout_s=config.pull_timeout_s,
                sync_manager=self.sync_manager,
            )
            self.scheduler = RequestScheduler(
                self.queue, self.cluster, strategy=config.strategy, clock=clock,
                batch_size=config.batch_size,
            )
            self.dispatcher = Dispatcher(
                self.queue, self.scheduler, self.cluster, self.hub,
                threads=config.dispatcher_threads, clock=clock,
                max_attempts=config.max_attempts, retry_backoff_s=config.retry_backoff_s,
                request_timeout_s=config.request_timeout_s, registry=self.registry,
                lease_refresh_s=max(0.05, config.lease_s / 3),
                stream_idle_timeout_s=config.stream_idle_timeout_s,
                first_record_timeout_s=config.first_record_timeout_s,
                stall_timeout_s=config.stall_timeout_s, cold_start_s=config.cold_start_s,
                node_progress=config.node_progress, resume_streams=config.resume_streams,
                max_resumes=config.max_resumes,
            )
            # the scheduler fails what no node can ever run through the dispatcher
            self.scheduler.on_unplaceable = self.dispatcher.fail_unplaceable
            self.metrics = ProxyMetrics(
                queue=self.queue, cluster=self.cluster, db=db, scheduler=self.scheduler,
                registry=self.registry, clock=clock, max_models=config.metrics_max_models,
                ready=self._ready,
            )
            self.health = HealthMonitor(
                self.cluster, db, clock=clock, interval_s=config.health_interval_s,
                timeout_s=config.health_timeout_s, failure_threshold=config.failure_threshold,
                observer=self.metrics, retention_hours=config.server_stats_retention_hours,
            )
            self.metrics.health = self.health
            self.queue.add_finish_listener(self.stats.request_finished)
            self.queue.add_finish_listener(self.metrics.request_finished)
            self.traffic = TrafficRecorder(clock=clock)
            self.queue.add_finish_listener(self.traffic.request_finished)
            keys = self.keys = self._make_keys()
            self.request_log = RequestLog(config.log_format, keys=lambda: keys) \
                if config.request_log else None
            if self.request_log is not None:
                self.queue.add_finish_listener(self.request_log)
        except BaseException:
            db.close()
            raise
        from olol.settings import install_settings

        self.maintenance: MaintenanceJobs | None = None  # its appliers look it up later
        self.settings = install_settings(self)
        # maintenance jobs run once started (start()); installed here, after the stored
        # settings were applied to the config, so that the Services below hold them
        self._jobs = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self.maintenance = MaintenanceJobs(self._jobs, clock=self.clock)
        install_proxy_jobs(
            self.maintenance, config=self.config, queue=self.queue, registry=self.registry,
            stats=self.stats, db=self.db, health=self.health,
        )
        #: the collaborators of the front door, built once
        self.services = Services(
            config=config, db=db, queue=self.queue, hub=self.hub, cluster=self.cluster,
            keys=keys, clock=clock, stats=self.stats, scheduler=self.scheduler,
            dispatcher=self.dispatcher, registry=self.registry,
            maintenance=self.maintenance, settings=self.settings, metrics=self.metrics,
            traffic=self.traffic,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._jobs_started = False
        self._stopped = threading.Event()
        self.url: str | None = None
        self.address: str | None = None

    @property
    def context(self) -> Services:
        """The former name of :attr:`services`."""
        return self.services

    def _make_keys(self) -> KeyStore:
        from olol.keys import KeyStore

        return KeyStore(self.db, clock=self.clock)

    # ------------------------------------------------------------------ start
    def start(self) -> Proxy:
        """Bind and serve; the health sweep, jobs and dispatcher start first."""
        host, port = split_hostport(self.config.listen, 11435)
        warning = exposure_warning(host, self.config.keys_enabled)
        if warning:
            log.warning("%s", warning)
        try:
            self._start(host, port)
        except BaseException:
            # the caller reports the error itself (the CLI: one line)
            log.debug("olol proxy failed to start; stopping what had started")
            self.stop(grace_s=0)
            raise
        log.info("olol proxy listening on %s (%d nodes)", self.url, len(self.cluster.list_nodes()))
        return self

    def _start(self, host: str, port: int) -> None:
        import waitress

        from olol.server import door
        from olol.server.app import create_app

        # first health sweep before serving, so /api/tags and placement know the nodes
        try:
            self.health.poll_all()
        except Exception:  # noqa: BLE001 - a bad sweep must not stop start-up
            log.exception("initial health sweep failed")
        self._jobs.start()
        self._jobs_started = True
        self.dispatcher.start()
        app = create_app(self.services)
        cfg = self.config
        connections = raise_fd_limit(cfg.max_connections)
        try:
            self._server = self._create_server(waitress, app, host, port, cfg, connections)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {format_address(host, port)}: "
                          f"{exc.strerror or exc}") from None
        keys = self.services.keys
        door.install(self._server, door.DoorPolicy(cfg, lambda: keys),
                     header_timeout_s=cfg.header_timeout_s, body_timeout_s=cfg.body_timeout_s)
        real_port = self._server.effective_port
        self.address = f"{host}:{real_port}"
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{real_port}"
        self._thread = threading.Thread(target=self._server.run, name="olol-http", daemon=True)
        self._thread.start()

    @staticmethod
    def _create_server(waitress: Any, app: Any, host: str, port: int, cfg: ProxyConfig,
                       connections: int) -> Any:
        return waitress.create_server(
            app, host=host, port=port, threads=cfg.waitress_threads,
            # only connections with no request in progress are idle: a stream is not
            channel_timeout=max(1, math.ceil(cfg.idle_timeout_s)),
            cleanup_interval=1,  # also when the door checks requests' deadlines
            connection_limit=connections,
            asyncore_use_poll=True,  # select() stops at 1,024 descriptors
            # lets the app notice a caller that went away while its request waits
            channel_request_lookahead=1,
            max_request_body_size=max(cfg.max_body_bytes, cfg.max_blob_bytes) + 1,
            ident="olol",
        )

    # ------------------------------------------------------------------ stop
    def stop(self, grace_s: float = 30.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.services.draining.set()
        finished = self.dispatcher.stop(grace_s=grace_s)
        if not finished:
            log.warning("shutdown: work still running after %.0f s was cancelled", grace_s)
        if self._jobs_started:
            try:
                self._jobs.shutdown(wait=False)
            except Exception:  # noqa: BLE001
                pass
        try:
            self.health.stop()
        except Exception:  # noqa: BLE001 - never started when start() failed early
            pass
        if self._server is not None:
            self._close_server()
        try:
            self.registry.close(timeout=5)
        except Exception:  # noqa: BLE001
            log.exception("closing the model registry failed")
        try:
            self.cluster.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.stats.close()
        except Exception:  # noqa: BLE001
            log.exception("closing the request statistics failed")
        close_queue = getattr(self.queue, "close", None)
        if close_queue is not None:
            close_queue()  # its background writes first, then the store
        self.db.close()
        if get_db_default() is self.db:
            reset_default_db()

    def _close_server(self) -> None:
        close_waitress(self._server, self._thread)

    def _ready(self) -> bool:
        """What the readiness probe says (``olol_ready``): serving, the store open and
        at least one healthy node."""
        return not self.services.readiness()

    def alive(self) -> bool:
        """True while the HTTP loop runs and the store accepts writes (the watchdog's
        health check)."""
        return (not self._stopped.is_set() and self._thread is not None
                and self._thread.is_alive() and not self.db.closed)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(grace_s=5)

"""The node agent: a gRPC server in front of one local Ollama.

``Agent(AgentConfig(...)).start()`` binds, serves the ``NodeAgent`` service and
the standard ``grpc.health.v1`` health service, and returns the agent;
``agent.address`` is the bound ``host:port``; ``agent.stop(grace)`` stops
accepting calls, lets running ones finish within ``grace`` seconds, and
releases every resource.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from olol.address import connect_host, format_address, is_loopback, parse_address
from olol.agent.auth import TokenInterceptor
from olol.agent.hardware import HardwareProbe, NvmlProbe, apply_budget
from olol.agent.ollama import OllamaClient
from olol.agent.service import NodeAgentServicer
from olol.rpc import node_pb2, node_pb2_grpc

_LOG = logging.getLogger(__name__)

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class AgentConfigError(ValueError):
    """The agent's configuration is invalid (raised before anything starts)."""


@dataclass(frozen=True)
class AgentConfig:
    """Settings of one agent (the ``olol worker`` flags).

    :param listen: ``HOST:PORT`` to bind (port 0 picks a free one).
    :param ollama_url: the local Ollama's base URL.
    :param token: bearer token required on every call (health excepted).
    :param admin_token: bearer token required on model commands.
    :param tls_cert: server certificate (PEM path); with ``tls_key`` enables TLS.
    :param tls_key: server private key (PEM path).
    :param tls_client_ca: CA bundle (PEM path) that client certificates must chain
        to; enables mutual TLS.
    :param parallel: parallel slots of the local Ollama (sizes the thread pool).
    :param models_dir: Ollama's models folder (disk figures).
    :param insecure_bind_any: allow a non-loopback address without TLS.
    :param status_timeout: seconds each Ollama query of the status report may take.
    :param read_timeout: seconds one read from Ollama may block.
    :param disk_budget: declared disk size in bytes (None = measure the models folder):
        the status reports it as the disk total, minus the listed models' sizes as free.
    :param memory_budget: declared memory in bytes (None = measure): the status reports
        it as the memory total, minus the loaded models' sizes as available.
    """

    listen: str = "127.0.0.1:0"
    ollama_url: str = "http://127.0.0.1:11434"
    token: str | None = None
    admin_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    parallel: int = 4
    models_dir: str | None = None
    insecure_bind_any: bool = False
    status_timeout: float = 2.0
    read_timeout: float = 600.0
    disk_budget: int | None = None
    memory_budget: int | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def rpc_threads(self) -> int:
        # Each streamed generation holds a server thread for its whole life;
        # leave room beside the parallel slots for status, tags and model commands.
        return max(16, 4 * self.parallel + 8)

    def validate(self) -> None:
        host, _ = split_host_port(self.listen)
        if self.parallel < 1:
            raise AgentConfigError("--parallel must be at least 1")
        for name in ("disk_budget", "memory_budget"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise AgentConfigError(f"--{name.replace('_', '-')} must be a positive size")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise AgentConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls:
            raise AgentConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path and not Path(path).is_file():
                raise AgentConfigError(f"no such file: {path}")
        if not self.tls and not is_loopback(host) and not self.insecure_bind_any:
            raise AgentConfigError(
                f"refusing to listen on {host} without TLS; use --tls-cert/--tls-key, "
                "a loopback address, or --insecure-bind-any"
            )


def split_host_port(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` to listen on (:func:`olol.address.parse_address`)."""
    try:
        return parse_address(listen, what="--listen", default_host="0.0.0.0", listen=True)
    except ValueError as exc:
        raise AgentConfigError(str(exc)) from None


class BudgetedServicer(NodeAgentServicer):
    """The servicer, reporting declared disk/memory budgets instead of measured figures."""

    def __init__(self, *args, disk_budget: int | None = None,
                 memory_budget: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.disk_budget, self.memory_budget = disk_budget, memory_budget

    def collect_status(self) -> node_pb2.NodeStatus:
        status = super().collect_status()
        apply_budget(status, self.disk_budget, self.memory_budget)
        return status


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class Agent:
    """One node agent. Collaborators may be injected (tests); else built from the config.

    :param clock: wall clock for the status timestamps.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        hardware: HardwareProbe | None = None,
        ollama: OllamaClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config.validate()
        self.config = config
        self._clock = clock
        self._hardware = hardware
        self._ollama = ollama
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._status_pool: ThreadPoolExecutor | None = None
        self._rpc_pool: ThreadPoolExecutor | None = None
        self._mux_pool: ThreadPoolExecutor | None = None
        self.servicer: BudgetedServicer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        host, _ = split_host_port(self.config.listen)
        return format_address(connect_host(host), self.port)

    def start(self) -> Agent:
        cfg = self.config
        if self._ollama is None:
            self._ollama = OllamaClient(
                cfg.ollama_url, pool_size=cfg.rpc_threads, read_timeout=cfg.read_timeout
            )
        if self._hardware is None:
            self._hardware = HardwareProbe(cfg.models_dir, NvmlProbe())
        self._status_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="olol-agent-status")
        # the calls opened on Mux sessions (one thread each, like a plain call's)
        self._mux_pool = ThreadPoolExecutor(max_workers=cfg.rpc_threads,
                                            thread_name_prefix="olol-agent-mux")
        self.servicer = BudgetedServicer(
            self._ollama,
            self._hardware,
            parallel=cfg.parallel,
            status_pool=self._status_pool,
            status_timeout=cfg.status_timeout,
            clock=self._clock,
            disk_budget=cfg.disk_budget,
            memory_budget=cfg.memory_budget,
            mux_pool=self._mux_pool,
            mux_calls=cfg.rpc_threads,
        )
        threads = cfg.rpc_threads
        self._rpc_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="olol-agent-rpc")
        interceptors = []
        if cfg.token or cfg.admin_token:
            interceptors.append(TokenInterceptor(cfg.token, cfg.admin_token))
        server = grpc.server(
            self._rpc_pool,
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=threads,
        )
        node_pb2_grpc.add_NodeAgentServicer_to_server(self.servicer, server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host, port = split_host_port(cfg.listen)
        bind = format_address(host, port)
        if cfg.tls:
            creds = grpc.ssl_server_credentials(
                [(_read(cfg.tls_key), _read(cfg.tls_cert))],
                root_certificates=_read(cfg.tls_client_ca),
                require_client_auth=bool(cfg.tls_client_ca),
            )
            self.port = server.add_secure_port(bind, creds)
        else:
            if not is_loopback(host):
                _LOG.warning(
                    "listening on %s WITHOUT TLS (--insecure-bind-any): tokens and prompts "
                    "travel in clear text", bind,
                )
            self.port = server.add_insecure_port(bind)
        if self.port == 0:
            raise AgentConfigError(f"could not bind {bind}")
        server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _LOG.info("node agent listening on %s (ollama %s, tls=%s)", self.address,
                  self._ollama.base_url, cfg.tls)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; True when stopped."""
        if self._server is None:
            return True
        return self._server.wait_for_termination(timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let running ones finish within ``grace`` seconds."""
        if self._server is None:
            return
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self.servicer is not None:
            self.servicer.drain_mux()
        done = self._server.stop(grace)
        done.wait(grace + 5.0)
        self._server = None
        if self._rpc_pool is not None:
            self._rpc_pool.shutdown(wait=False, cancel_futures=True)
        if self._status_pool is not None:
            self._status_pool.shutdown(wait=False, cancel_futures=True)
        if self._mux_pool is not None:
            self._mux_pool.shutdown(wait=False, cancel_futures=True)
        if self._ollama is not None:
            self._ollama.close()
        _LOG.info("node agent stopped")

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

"""``olol worker`` (run the node agent) and ``olol node status`` (read a node's status)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

RET_OK = 0
RET_ERROR = 1
RET_CONFIG = 2

_LOG = logging.getLogger(__name__)


def size_of(value: Any) -> int | None:
    from olol.agent.config import size_of as convert

    return convert(value)


def _size(text: str) -> int:
    from olol.agent.hardware import parse_bytes

    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def register(subparsers: Any) -> None:
    from olol.agent.config import WorkerConfig
    from olol.cli.proxy import add_config_flags

    worker = subparsers.add_parser(
        "worker", help="run the node agent in front of a local Ollama",
        description="Run the node agent in front of a local Ollama. Each setting comes from "
                    "its default, then the TOML file given with --config, then the "
                    "environment variable OLOL_WORKER_<KEY>, then its flag "
                    "(docs/config.md lists them).")
    worker.add_argument("--config", default=None, metavar="FILE",
                        help="TOML file of worker settings (keys as in docs/config.md)")
    add_config_flags(worker, WorkerConfig, aliases={}, choices={}, hidden=(),
                     types={k: _size for k in ("disk_budget", "memory_budget")})
    # visible in ps: use the files
    worker.add_argument("--token", default=None, help=argparse.SUPPRESS)
    worker.add_argument("--admin-token", default=None, help=argparse.SUPPRESS)
    worker.set_defaults(func=run_worker)

    node = subparsers.add_parser("node", help="inspect node agents")
    node_sub = node.add_subparsers(dest="node_command", metavar="NODE_COMMAND")
    status = node_sub.add_parser("status", help="print a node's complete status")
    status.add_argument("address", help="HOST:PORT of the agent")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("--token", default=None, help="the agent's token (or --token-file)")
    status.add_argument("--token-file", default=None, help="file holding the agent's token")
    status.add_argument("--tls-ca", default=None, help="CA that signed the agent (enables TLS)")
    status.add_argument("--tls-cert", default=None, help="client certificate (mutual TLS)")
    status.add_argument("--tls-key", default=None, help="client key (mutual TLS)")
    status.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the agent (default 10)")
    status.set_defaults(func=run_node_status)
    node.set_defaults(func=lambda args: (node.print_help(), RET_CONFIG)[1])


def run_worker(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop`` is set), then drain and exit 0."""
    from olol.agent.agent import Agent, AgentConfig, AgentConfigError

    # Handlers before the port opens: a signal that comes as soon as it answers must
    # still drain and exit cleanly. They only set the flag; the main thread does the
    # logging and draining.
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        cfg = worker_config(args)
        token = secret(getattr(args, "token", None), cfg.token_file, "token")
        admin_token = secret(getattr(args, "admin_token", None), cfg.admin_token_file,
                             "admin-token")
        agent = Agent(AgentConfig(
            listen=cfg.listen,
            ollama_url=cfg.ollama_url,
            token=token,
            admin_token=admin_token,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            tls_client_ca=cfg.tls_client_ca,
            parallel=cfg.parallel,
            models_dir=cfg.models_dir,
            insecure_bind_any=cfg.insecure_bind_any,
            disk_budget=size_of(cfg.disk_budget),
            memory_budget=size_of(cfg.memory_budget),
        ))
        agent.start()
    except SystemExit as exc:  # a bad config file or environment variable
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"olol worker: {str(exc.code).removeprefix('olol: ')}", file=sys.stderr)
        return RET_CONFIG
    except (AgentConfigError, ValueError, OSError, RuntimeError) as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"olol worker: {exc}", file=sys.stderr)
        return RET_CONFIG
    print(f"olol worker listening on {agent.address}", flush=True)
    from olol.sdnotify import notify, start_service_notifications

    watchdog = start_service_notifications(lambda: not stop.is_set(),
                                           status=f"serving on {agent.address}")
    while not stop.wait(1.0):
        pass
    notify("STOPPING=1")
    if watchdog is not None:
        watchdog.stop()
    _LOG.info("stopping: letting running calls finish (grace %.1fs)", cfg.grace)
    agent.stop(cfg.grace)
    return RET_OK


def worker_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    """The WorkerConfig of ``olol worker``: defaults, the file, the environment, flags.

    :raises SystemExit: an unknown key or a value of the wrong type, naming the key.
    """
    from olol.agent.config import ENV_PREFIX, WorkerConfig, convert
    from olol.cli.proxy import flag_overrides, read_settings

    overrides = flag_overrides(args, WorkerConfig)
    values = read_settings(getattr(args, "config", None), overrides, WorkerConfig, env,
                           prefix=ENV_PREFIX, convert=convert)
    return WorkerConfig(**values)


def secret(value: str | None, path: str | None, credential: str) -> str | None:
    """A secret from its flag, else the file named, else the systemd credential
    ``credential`` (:func:`olol.credentials.read_secret`)."""
    from olol.credentials import read_secret

    return read_secret(value, path, credential)


def _gib(n: Any) -> str:
    return f"{int(n or 0) / 2**30:.1f} GiB"


def format_status(st: dict) -> str:
    """Human-readable rendering of a node status dict."""
    cpu, mem, disk = st.get("cpu", {}), st.get("memory", {}), st.get("disk", {})
    agent, ollama, gpu = st.get("agent", {}), st.get("ollama", {}), st.get("gpu", {})
    lines = [
        f"node {st.get('hostname', '?')}  agent {agent.get('version', '?')}  "
        f"up {agent.get('uptime_seconds', 0):.0f}s  parallel {agent.get('parallel', 0)}  "
        f"in flight {agent.get('in_flight_total', 0)}",
        f"cpu  {cpu.get('model', '?')} ({cpu.get('logical_cores', 0)} threads)  "
        f"{cpu.get('total_percent', 0):.0f}%  load {cpu.get('load_1', 0):.2f} "
        f"{cpu.get('load_5', 0):.2f} {cpu.get('load_15', 0):.2f}",
        f"ram  {_gib(mem.get('used_bytes'))} used / {_gib(mem.get('total_bytes'))}  "
        f"swap {_gib(mem.get('swap_used_bytes'))} / {_gib(mem.get('swap_total_bytes'))}",
        f"disk {disk.get('path', '?')}: {_gib(disk.get('free_bytes'))} free / "
        f"{_gib(disk.get('total_bytes'))}" + (f"  ({disk['error']})" if disk.get("error") else ""),
    ]
    gpus = gpu.get("gpus") or []
    if not gpus:
        lines.append(f"gpu  none ({gpu.get('unavailable_reason') or 'no GPU'})")
    for g in gpus:
        parts = [f"gpu{g.get('index', 0)} {g.get('name', '?')}"]
        if "memory_total_bytes" in g:
            parts.append(f"{_gib(g.get('memory_used_bytes'))} / {_gib(g['memory_total_bytes'])}")
        if "gpu_utilization_percent" in g:
            parts.append(f"{g['gpu_utilization_percent']}%")
        if "temperature_c" in g:
            parts.append(f"{g['temperature_c']}C")
        if "power_draw_mw" in g:
            parts.append(f"{g['power_draw_mw'] / 1000:.0f}W")
        lines.append("  ".join(parts))
    state = f"ollama {ollama.get('version') or '?'}" if ollama.get("reachable") else "ollama DOWN"
    if ollama.get("error"):
        state += f"  ({ollama['error']})"
    lines.append(state)
    for m in ollama.get("models") or []:
        d = m.get("details") or {}
        lines.append(f"  model  {m.get('name')}  {_gib(m.get('size'))}  "
                     f"{d.get('parameter_size', '')} {d.get('quantization_level', '')}".rstrip())
    for m in ollama.get("loaded") or []:
        lines.append(f"  loaded {m.get('name')}  {_gib(m.get('size'))} "
                     f"(vram {_gib(m.get('size_vram'))})  until {m.get('expires_at', '')}")
    return "\n".join(lines)


def run_node_status(args: argparse.Namespace) -> int:
    from olol.rpc.client import NodeClient, NodeError, TLSConfig

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TLSConfig(root_cert=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key)
    try:
        token = secret(args.token, getattr(args, "token_file", None), "token")
    except ValueError as exc:
        print(f"olol node status: {exc}", file=sys.stderr)
        return RET_CONFIG
    client = NodeClient(args.address, token=token, tls=tls, timeout=args.timeout)
    try:
        st = client.status()
    except NodeError as exc:
        print(f"olol node status: {args.address}: {exc.code.name}: {exc.message}",
              file=sys.stderr)
        return RET_ERROR
    finally:
        client.close()
    print(json.dumps(st, indent=2, sort_keys=True) if args.json else format_status(st))
    ollama = st.get("ollama") or {}
    if not ollama.get("reachable", False):
        # the agent answers but cannot serve: say so in the exit status too
        print(f"olol node status: {args.address}: its Ollama is not reachable"
              + (f" ({ollama.get('error')})" if ollama.get("error") else ""), file=sys.stderr)
        return RET_ERROR
    return RET_OK

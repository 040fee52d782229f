"""``olol proxy`` and ``olol up``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from olol.context import (
    DEFAULT_LISTEN,
    ProxyConfig,
    config_fields,
    default_of,
    from_text,
    type_problem,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "proxy", help="run the coordinator (the Ollama-compatible endpoint)",
        description="Every setting can come from the config file (--config), an "
        "OLOL_<KEY> environment variable or its flag, in that order of precedence; "
        "docs/config.md describes them.")
    p.add_argument("--config", help="TOML config file (keys as in docs/config.md)")
    add_config_flags(p)
    p.set_defaults(func=cmd_proxy)

    u = subparsers.add_parser(
        "up", help="everything on one machine: a proxy plus an agent per local Ollama "
                   "(or two simulated nodes when none is found)",
        description="Start a proxy and one node agent per local Ollama on this machine; "
        "with no Ollama answering, two simulated nodes (generated text, no model) so that "
        "olol can be tried without a GPU. Ctrl-C stops everything.")
    u.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"HOST:PORT of the proxy (default {DEFAULT_LISTEN})")
    u.add_argument("--data-dir", default=None,
                   help="data folder (default $OLOL_DATA_DIR, else $XDG_DATA_HOME/olol)")
    u.add_argument("--ollama-url", action="append", default=[],
                   help="Ollama to put behind an agent, repeatable "
                        "(default http://127.0.0.1:11434)")
    u.set_defaults(func=cmd_up)


#: Short spellings kept for the most used flags.
FLAG_ALIASES = {"nodes": ["--node"], "keys_enabled": ["--keys"],
                "waitress_threads": ["--threads"]}


def add_config_flags(parser: argparse.ArgumentParser, schema: type = ProxyConfig,
                     aliases: dict[str, list[str]] | None = None,
                     choices: dict[str, list[str]] | None = None,
                     hidden: tuple[str, ...] = ("node_token",),
                     types: dict[str, Any] | None = None) -> None:
    """One flag per setting of ``schema``, generated from it (help, type, default).

    ``hidden`` settings take a flag that ``--help`` does not show (secrets: visible in
    ps, the ``*_file`` settings are the way); ``types`` replaces a flag's parser."""
    import json

    aliases = FLAG_ALIASES if aliases is None else aliases
    choices = {"strategy": ["smart", "least-busy", "round-robin"]} if choices is None else choices
    for f in config_fields(schema):
        names = [f"--{f.name.replace('_', '-')}", *aliases.get(f.name, [])]
        default = default_of(f.name, schema)
        text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name, "default": None}
        if f.name in hidden:
            kw["help"] = argparse.SUPPRESS
        elif default is None or isinstance(default, (str, int, float)) and not isinstance(
                default, bool):
            kw["help"] = f"{text} (default {default})" if default is not None else text
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
            kw.setdefault("help", f"{text} (default {'on' if default else 'off'})")
        elif isinstance(default, int):
            kw["type"] = int
        elif isinstance(default, float):
            kw["type"] = float
        elif isinstance(default, list):
            kw.update(action="append", metavar="VALUE", help=f"{text} (repeatable)")
        elif isinstance(default, dict):
            kw.update(type=json.loads, metavar="JSON", help=f"{text} (a JSON object)")
        if types and f.name in types:
            kw["type"] = types[f.name]
        if f.name in choices:
            kw["choices"] = choices[f.name]
        parser.add_argument(*names, **kw)


def flag_overrides(args: argparse.Namespace, schema: type = ProxyConfig) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in config_fields(schema)}


def env_name(key: str, prefix: str = "OLOL_") -> str:
    return prefix + key.upper()


def read_settings(path: str | None, overrides: dict[str, Any], schema: type,
                  env: Mapping[str, str] | None = None, prefix: str = "OLOL_",
                  convert: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """The settings of ``schema`` that are not defaults: the TOML file, then
    ``<prefix><KEY>`` environment variables, then the flags in ``overrides`` (None, []
    and False mean "not given"). ``convert(key, value)`` may turn a file's or the
    environment's value into the field's type (raising ValueError to refuse it).

    :raises SystemExit: an unknown key or a value of the wrong type, naming the key.
    """
    import os

    environ: Mapping[str, str] = os.environ if env is None else env
    known = {f.name for f in config_fields(schema)}
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"olol: cannot read config {path}: {exc}") from None
        if "node_tls" in values and schema is ProxyConfig:
            raise SystemExit(f"olol: node_tls in {path}: use node_ca, node_cert and node_key "
                             "(paths to PEM files) instead")
        unknown = set(values) - known
        if unknown:
            raise SystemExit(f"olol: unknown config keys in {path}: {', '.join(sorted(unknown))}")

    def checked(key: str, value: Any) -> tuple[Any, str | None]:
        if convert is not None:
            try:
                value = convert(key, value)
            except ValueError as exc:
                return value, f"{key}: {exc}"
        return value, type_problem(key, value, schema)

    problems = []
    for key, value in list(values.items()):
        values[key], problem = checked(key, value)
        if problem:
            problems.append(problem)
    if problems:  # every problem of the file at once
        raise SystemExit(f"olol: bad config in {path}: " + "; ".join(problems))
    for f in config_fields(schema):
        raw = environ.get(env_name(f.name, prefix))
        if raw is None or raw == "":
            continue
        values[f.name], problem = checked(f.name, from_text(f.name, raw, schema))
        if problem:
            raise SystemExit(f"olol: bad environment variable {env_name(f.name, prefix)}: "
                             f"{problem}")
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    return values


def load_config(path: str | None, overrides: dict[str, Any],
                env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Defaults, then the TOML file, then ``OLOL_<KEY>`` environment variables, then the
    flags in ``overrides`` (None, [] and False mean "not given").

    :raises SystemExit: an unknown key or a value of the wrong type, naming the key.
    """
    values = read_settings(path, overrides, ProxyConfig, env)
    if "data_dir" in values and values["data_dir"] is not None:
        values["data_dir"] = Path(values["data_dir"])
    return ProxyConfig(**values)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set. Install it before the ports open: a signal
    that comes as soon as they answer must still stop the process cleanly."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _serve(proxy: Any, extra_stop: Sequence[Any] = (), stop: threading.Event | None = None) -> int:
    from olol.sdnotify import notify, start_service_notifications

    stop = stop if stop is not None else stop_on_signals()
    watchdog = start_service_notifications(proxy.alive, status=f"serving on {proxy.url}")
    while not stop.wait(timeout=1.0):
        pass
    notify("STOPPING=1")
    if watchdog is not None:
        watchdog.stop()
    proxy.stop(grace_s=30)
    for thing in extra_stop:
        try:
            thing.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            log.exception("stopping %r failed", thing)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from olol.proxy import Proxy
    from olol.store import StoreError, default_data_dir

    config = load_config(args.config, flag_overrides(args))
    from olol.request_log import use_log_format

    try:
        use_log_format(config.log_format)
    except ValueError as exc:
        print(f"olol proxy: {exc}", file=sys.stderr)
        return 2
    if bool(config.node_cert) != bool(config.node_key):
        print("olol proxy: --node-cert and --node-key go together", file=sys.stderr)
        return 2
    problem = listen_problem(config.listen)
    if problem:
        print(f"olol proxy: {problem}", file=sys.stderr)
        return 2
    if config.data_dir is None:
        config.data_dir = default_data_dir(args.data_dir)
    elif args.data_dir:
        config.data_dir = Path(args.data_dir)
    stop = stop_on_signals()
    try:
        proxy = Proxy(config).start()
    except (StoreError, ValueError, OSError) as exc:
        print(f"olol proxy: {failure(exc)}", file=sys.stderr)
        return 1
    if config.store:
        from olol.address import redact_url

        where = f"state in {redact_url(config.store)}"
    else:
        where = f"data in {config.data_dir}"
    print(f"olol proxy serving the Ollama API on {proxy.url} ({where})", flush=True)
    return _serve(proxy, stop=stop)


def listen_problem(listen: str) -> str | None:
    """What is wrong with the proxy's listen address, checked before anything starts."""
    from olol.proxy import split_hostport

    try:
        split_hostport(listen, 11435)
    except ValueError as exc:
        return str(exc)
    return None


def failure(exc: BaseException) -> str:
    """One line for a start-up failure (an OSError without its ``[Errno N]`` prefix)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
        return exc.strerror
    return str(exc)


def ollama_answers(url: str) -> bool:
    try:
        return requests.get(url.rstrip("/") + "/api/version", timeout=1.0).ok
    except requests.RequestException:
        return False


def cmd_up(args: argparse.Namespace) -> int:
    from olol.agent.agent import Agent, AgentConfig
    from olol.proxy import Proxy
    from olol.sim import SimConfig, Simulator, parse_models_spec
    from olol.store import StoreError, default_data_dir

    problem = listen_problem(args.listen)
    if problem:
        print(f"olol up: {problem}", file=sys.stderr)
        return 2
    # Handlers before any port opens: a signal as soon as it answers still stops cleanly.
    stop = stop_on_signals()
    urls = args.ollama_url or ["http://127.0.0.1:11434"]
    found = [u for u in urls if ollama_answers(u)]
    started: list[Any] = []
    if found:
        targets = found
        print(f"olol up: found Ollama at {', '.join(found)}", flush=True)
    else:
        sims = []
        for _ in range(2):
            sim = Simulator(SimConfig(models=parse_models_spec(
                "llama3.2:1b[tps=60,ttft=0.05],qwen2.5:0.5b[tps=80,ttft=0.03],"
                "nomic-embed-text[embed]"), load_time=0.5), host="127.0.0.1", port=0).start()
            sims.append(sim)
        started.extend(sims)
        targets = [s.url for s in sims]
        print("olol up: NO OLLAMA FOUND at " + ", ".join(urls) + " - starting two SIMULATED "
              "nodes instead. Answers are generated text, not a real model. Install Ollama "
              "(or pass --ollama-url) for real inference.", flush=True)
    agents = []
    for url in targets:
        agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=url)).start()
        agents.append(agent)
    config = ProxyConfig(listen=args.listen, data_dir=default_data_dir(args.data_dir),
                         nodes=[a.address for a in agents], health_interval_s=2.0)
    try:
        proxy = Proxy(config).start()
    except (StoreError, ValueError, OSError) as exc:
        print(f"olol up: {failure(exc)}", file=sys.stderr)
        for thing in agents + started:
            thing.stop()
        return 1
    model = "llama3.2:1b"
    print(f"olol up: proxy on {proxy.url} with {len(agents)} node(s); data (queue, keys, "
          f"statistics; private to this user) in {config.data_dir}; try:\n"
          f"  curl {proxy.url}/api/tags\n"
          f"  curl {proxy.url}/api/chat -d '{{\"model\": \"{model}\", \"messages\": "
          f"[{{\"role\": \"user\", \"content\": \"hi\"}}]}}'\n"
          f"  or any Ollama or OpenAI client with base URL {proxy.url}", flush=True)
    return _serve(proxy, agents + started, stop=stop)

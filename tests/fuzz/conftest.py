"""One live cluster for the fuzz suites: two simulated Ollama nodes (behind real agents)
holding a small chat model and an embedding model, and two real proxies in front of
them, each a real waitress on a loopback port over a real store in a tmp folder:

* ``open``: API keys off;
* ``keyed``: API keys on, with one admin key and one ordinary key.

Both proxies also serve ``GET /olol/v1/openapi.json`` (the blueprint is added here when
``olol.server.app`` does not register it yet).

Every request the suites send is counted; the counts are printed in pytest's terminal
summary and written to ``fuzz-summary.json`` in the session's base tmp folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.fuzz import harness
from tests.fuzz.harness import NODE_MODELS, ErrorLog, Recorder
from tests.support import wait_until

_RECORDER = Recorder()
_SUMMARY: dict[str, Any] = {}


@dataclass
class Node:
    sim: Any
    agent: Any

    @property
    def address(self) -> str:
        return self.agent.address


@dataclass
class LiveProxy:
    name: str
    proxy: Proxy
    admin_key: str = ""
    user_key: str = ""

    @property
    def url(self) -> str:
        return self.proxy.url


@dataclass
class FuzzEnv:
    nodes: list[Node]
    proxies: list[LiveProxy]
    recorder: Recorder
    errors: ErrorLog
    extra: dict[str, Any] = field(default_factory=dict)

    def proxy(self, name: str) -> LiveProxy:
        return next(p for p in self.proxies if p.name == name)


def start_node() -> Node:
    from olol.agent.agent import Agent, AgentConfig
    from olol.sim import SimConfig, Simulator, parse_models_spec

    sim = Simulator(SimConfig(models=parse_models_spec(NODE_MODELS), ttft=0.0,
                              tokens_per_second=0.0, load_time=0.0,
                              pull_bytes_per_second=0.0, parallel=4, max_loaded=3,
                              max_queue=512),
                    host="127.0.0.1", port=0).start()
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url, parallel=4)).start()
    return Node(sim, agent)


def start_proxy(name: str, data_dir: Any, nodes: list[Node], keys: bool) -> LiveProxy:
    config = ProxyConfig(
        listen="127.0.0.1:0", data_dir=data_dir, nodes=[n.address for n in nodes],
        keys_enabled=keys, health_interval_s=1.0, dispatcher_threads=8, waitress_threads=16,
        retry_backoff_s=0.05, request_timeout_s=8.0, stream_idle_timeout_s=8.0,
        pull_timeout_s=8.0,
    )
    proxy = Proxy(config)
    live = LiveProxy(name, proxy)
    if keys:
        _, live.admin_key = proxy.keys.create("fuzz-admin", admin=True)
        _, live.user_key = proxy.keys.create("fuzz-user", admin=False, default_priority=5)
    with pytest.MonkeyPatch.context() as mp:  # add the openapi blueprint if app.py does not
        import olol.server.app as app_module

        original = app_module.create_app
        mp.setattr(app_module, "create_app",
                   lambda ctx: harness.add_openapi(original(ctx)))
        proxy.start()
    return live


@pytest.fixture(scope="session")
def fuzz_env(tmp_path_factory) -> Any:
    errors = ErrorLog()
    watched = [logging.getLogger(name) for name in ("olol", "waitress", "workers")]
    for logger in watched:
        logger.addHandler(errors)
    nodes = [start_node() for _ in range(2)]
    proxies: list[LiveProxy] = []
    try:
        base = tmp_path_factory.mktemp("fuzz")
        proxies.append(start_proxy("open", base / "open", nodes, keys=False))
        proxies.append(start_proxy("keyed", base / "keyed", nodes, keys=True))
        env = FuzzEnv(nodes, proxies, _RECORDER, errors)
        for live in proxies:
            assert wait_until(lambda live=live: live.proxy.cluster.has_model(harness.MODEL),
                              timeout=10), f"{live.name}: the nodes' models never showed up"
        _SUMMARY["file"] = str(tmp_path_factory.getbasetemp() / "fuzz-summary.json")
        yield env
    finally:
        for live in proxies:
            live.proxy.stop(grace_s=2)
        for node in nodes:
            node.agent.stop(0)
            node.sim.stop()
        for logger in watched:
            logger.removeHandler(errors)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _RECORDER.requests:
        return
    summary = _RECORDER.summary()
    line = (f"fuzz: {summary['requests']} requests over {summary['routes']} routes, "
            f"{summary['5xx']} answered 5xx; statuses {summary['by_status']}")
    terminalreporter.write_sep("-", "olol fuzz summary")
    terminalreporter.write_line(line)
    for key, count in summary["server_errors"].items():
        terminalreporter.write_line(f"  5xx: {key} x{count}")
    for key, count in summary["known_500"].items():
        terminalreporter.write_line(f"  of which known (see harness.KNOWN_500): "
                                    f"{key} x{count}")
    path = _SUMMARY.get("file")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=1, sort_keys=True)
        terminalreporter.write_line(f"  written to {path}")

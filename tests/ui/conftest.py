"""A live proxy (real waitress behind the door, real store) with one or two simulated
nodes, for the dashboard's tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.e2e.conftest import MODELS, start_nodes


@dataclass
class Live:
    proxy: Proxy
    sims: list
    agents: list
    admin_key: str = ""
    user_key: str = ""

    @property
    def url(self) -> str:
        return self.proxy.url


def start_live(data_dir, nodes: int = 1, models: str = MODELS, sim_kw=None,
               **config) -> Live:
    sims, agents = start_nodes(nodes, models, **(sim_kw or {}))
    cfg = ProxyConfig(listen="127.0.0.1:0", data_dir=data_dir,
                      nodes=[a.address for a in agents], health_interval_s=1.0, **config)
    proxy = Proxy(cfg)
    live = Live(proxy, sims, agents)
    if cfg.keys_enabled:
        _, live.admin_key = proxy.keys.create("root", admin=True)
        _, live.user_key = proxy.keys.create("app")
    proxy.start()
    return live


def stop_live(live: Live) -> None:
    live.proxy.stop(grace_s=2)
    for a in live.agents:
        a.stop(0)
    for s in live.sims:
        s.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    live = start_live(tmp_path_factory.mktemp("ui-keys"), keys_enabled=True)
    yield live
    stop_live(live)


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory):
    live = start_live(tmp_path_factory.mktemp("ui-open"))
    yield live
    stop_live(live)

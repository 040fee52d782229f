"""Run-time settings (issue 16 item 1): changed through the admin API or olol config,
they take effect on the next request with no restart, persist across one, and say who
changed them."""

from __future__ import annotations

import json
import threading
import time

import requests

from olol.cli import main
from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.e2e.conftest import MODELS, start_nodes

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "stream": False, "options": {"num_predict": 4}}


def patch(url: str, body: dict, **headers) -> requests.Response:
    return requests.patch(url + "/olol/v1/config", json=body, headers=headers, timeout=10)


def test_the_strategy_changes_on_the_next_request(make_cluster):
    c = make_cluster(nodes=2, strategy="smart")
    r = patch(c.url, {"strategy": "round-robin"})
    assert r.status_code == 200 and r.json() == {"changed": {"strategy": "round-robin"}}
    with requests.Session() as s:
        for _ in range(8):
            r = s.post(c.url + "/api/chat", json=CHAT, timeout=30)
            assert r.status_code == 200
    served = {rec["server_assigned"] for rec in c.proxy.queue.list_jobs(kind="sync", limit=8)}
    assert len(served) == 2, served  # round-robin spreads sequential requests over both
    settings = requests.get(c.url + "/olol/v1/config", timeout=10).json()["settings"]
    assert settings["strategy"]["value"] == "round-robin"
    assert settings["strategy"]["boot"] == "smart" and settings["strategy"]["live"] is True


def test_a_queue_limit_changes_on_the_next_request(make_cluster):
    c = make_cluster(nodes=1, sim_kw={"tokens_per_second": 20.0})
    assert patch(c.url, {"max_queue_depth": 1}).status_code == 200
    slow = {**CHAT, "options": {"num_predict": 60}}  # about 3 s on this node
    first: list[int] = []
    t = threading.Thread(target=lambda: first.append(
        requests.post(c.url + "/api/chat", json=slow, timeout=60).status_code))
    t.start()
    deadline = time.monotonic() + 10
    while c.proxy.queue.depth() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = requests.post(c.url + "/api/chat", json=CHAT, timeout=30)
    assert r.status_code == 503 and "maximum pending requests" in r.json()["error"]
    assert r.headers["Retry-After"]
    t.join(60)
    assert first == [200]
    assert patch(c.url, {"max_queue_depth": None}).json() == {
        "changed": {"max_queue_depth": 10_000}}  # null: back to the boot value
    assert requests.post(c.url + "/api/chat", json=CHAT, timeout=30).status_code == 200


def test_a_retention_period_changes_on_the_next_cleanup(make_cluster):
    c = make_cluster(nodes=1)
    job = requests.post(c.url + "/olol/v1/jobs", timeout=10, json={
        "endpoint": "generate", "body": {"model": "llama3.2:1b", "prompt": "x",
                                          "options": {"num_predict": 2}}}).json()["id"]
    deadline = time.monotonic() + 30
    while requests.get(c.url + f"/olol/v1/jobs/{job}", timeout=10).json()["status"] != \
            "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run = requests.post(c.url + "/olol/v1/maintenance/queue-cleanup/run", timeout=30)
    assert run.status_code == 200
    assert requests.get(c.url + f"/olol/v1/jobs/{job}", timeout=10).status_code == 200
    assert patch(c.url, {"retention_hours": 0.0001}).status_code == 200  # 0.36 s
    time.sleep(0.5)
    assert requests.post(c.url + "/olol/v1/maintenance/queue-cleanup/run",
                         timeout=30).status_code == 200
    assert requests.get(c.url + f"/olol/v1/jobs/{job}", timeout=10).status_code == 404


def test_bad_changes_are_refused_whole_with_the_reason(make_cluster):
    c = make_cluster(nodes=1)
    for body, message in [
        ({"listen": "0.0.0.0:1"}, "cannot change while the proxy runs"),
        ({"strategy": "random"}, "strategy must be one of"),
        ({"max_queue_depth": 0}, "greater than 0"),
        ({"max_queue_depth": "ten"}, "must be an integer"),
        ({"nope": 1}, "unknown setting"),
        ({"max_attempts": 2, "outlier_failure_rate": 2.0}, "outlier_failure_rate"),
        ({}, "JSON object"),
    ]:
        r = patch(c.url, body)
        assert r.status_code == 400 and message in r.json()["error"], (body, r.text)
    assert c.proxy.dispatcher.max_attempts == c.proxy.config.max_attempts == 3  # untouched


def test_changes_persist_across_a_restart_and_name_who_made_them(tmp_path):
    sims, agents = start_nodes(1, MODELS)
    data = tmp_path / "data"
    try:
        config = ProxyConfig(listen="127.0.0.1:0", data_dir=data, keys_enabled=True,
                             nodes=[a.address for a in agents])
        with Proxy(config) as proxy:
            _, admin = proxy.context.keys.create("ops-alice", admin=True)
            auth = {"Authorization": f"Bearer {admin}"}
            assert patch(proxy.url, {"retry_backoff_s": 0.5, "stall_timeout_s": 30},
                         **auth).status_code == 200
            assert proxy.dispatcher.retry_backoff_s == 0.5
        config = ProxyConfig(listen="127.0.0.1:0", data_dir=data, keys_enabled=True,
                             nodes=[a.address for a in agents])
        with Proxy(config) as proxy:
            assert proxy.dispatcher.retry_backoff_s == 0.5  # stored changes win over boot
            assert proxy.dispatcher.stall_timeout_s == 30
            got = requests.get(proxy.url + "/olol/v1/config", headers=auth, timeout=10).json()
            entry = got["settings"]["retry_backoff_s"]
            assert entry["value"] == 0.5 and entry["changed_by"] == "ops-alice"
            history = requests.get(proxy.url + "/olol/v1/config/history", headers=auth,
                                   timeout=10).json()["changes"]
            assert {(h["key"], h["new"], h["by"]) for h in history} >= {
                ("retry_backoff_s", 0.5, "ops-alice"), ("stall_timeout_s", 30, "ops-alice")}
            assert "node_token" in got["settings"] and got["settings"]["node_token"]["value"] \
                in (None, "(set)")
    finally:
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def test_the_cli_reads_and_changes_settings(make_cluster, capsys):
    c = make_cluster(nodes=1)
    assert main(["config", "set", "max-attempts=4", "retry_backoff_s=0.1", "--url", c.url]) == 0
    assert capsys.readouterr().out.splitlines() == ["max_attempts = 4", "retry_backoff_s = 0.1"]
    assert c.proxy.dispatcher.max_attempts == 4
    assert main(["config", "get", "max_attempts", "--url", c.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_attempts"]["value"] == 4
    assert main(["config", "get", "--live", "--url", c.url]) == 0
    out = capsys.readouterr().out
    assert "strategy" in out and "listen" not in out
    assert main(["config", "set", "listen=x:1", "--url", c.url]) == 1
    assert "restart" in capsys.readouterr().err
    assert main(["config", "reset", "max_attempts", "--url", c.url]) == 0
    assert c.proxy.dispatcher.max_attempts == 3
    assert main(["config", "history", "--url", c.url]) == 0
    assert "max_attempts" in capsys.readouterr().out

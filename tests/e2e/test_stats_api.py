"""Statistics you can read (issue 16 item 2): ``GET /olol/v1/stats``, ``/stats/servers``
and ``olol stats`` on a real proxy, retention changed through the config API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import requests

from olol.cli import main
from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.stats import Finished, RequestStats
from olol.store import DatabaseManager
from tests.e2e.conftest import MODELS, start_nodes
from tests.support import FakeClock, wait_until

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "stream": False, "options": {"num_predict": 4}}


def stats(url: str, **params) -> requests.Response:
    return requests.get(url + "/olol/v1/stats", params=params, timeout=10)


def test_requests_are_counted_per_model_node_and_key(make_cluster):
    c = make_cluster(nodes=1, keys_enabled=True)
    _, admin = c.proxy.context.keys.create("ops", admin=True)
    alice_id, alice = c.proxy.context.keys.create("alice")
    auth = {"Authorization": f"Bearer {admin}"}
    with requests.Session() as s:
        for _ in range(3):
            r = s.post(c.url + "/api/chat", json=CHAT, timeout=30,
                       headers={"Authorization": f"Bearer {alice}"})
            assert r.status_code == 200, r.text
        r = s.post(c.url + "/api/generate", timeout=30, headers=auth, json={
            "model": "qwen2.5:0.5b", "prompt": "x", "stream": True,
            "options": {"num_predict": 3}})
        assert r.status_code == 200

    def rows() -> list[dict]:
        r = requests.get(c.url + "/olol/v1/stats", headers=auth, timeout=10,
                         params={"period": "hourly", "by": "model,node,key"})
        assert r.status_code == 200, r.text
        return r.json()["rows"]

    # the counts are taken after each answer is written: poll, do not sleep
    assert wait_until(lambda: sum(r["requests"] for r in rows()) == 4, timeout=10), rows()
    by_model = {r["model"]: r for r in rows()}
    chat = by_model["llama3.2:1b"]
    assert chat["requests"] == 3 and chat["errors"] == 0
    assert chat["key"] == alice_id and chat["key_name"] == "alice"
    assert chat["node"] == c.agents[0].address
    assert chat["tokens_out"] == 3 * 4 and chat["tokens_in"] > 0
    assert chat["queue_ms"]["p50"] is not None
    streamed = by_model["qwen2.5:0.5b"]
    assert streamed["key_name"] == "ops" and streamed["ttft_ms"]["p99"] is not None
    # admin only, like the rest of /olol/v1
    r = requests.get(c.url + "/olol/v1/stats", timeout=10,
                     headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 403
    servers = requests.get(c.url + "/olol/v1/stats/servers", headers=auth, timeout=10,
                           params={"node": c.agents[0].address, "type": "slots"}).json()
    assert servers["samples"] and servers["samples"][-1]["total"] == 4


def test_bad_query_parameters_get_400_with_the_reason(make_cluster):
    c = make_cluster(nodes=1)
    for path, params, message in [
        ("/stats", {"period": "monthly"}, "period must be one of"),
        ("/stats", {"by": "colour"}, "by must be"),
        ("/stats", {"since": "yesterday-ish"}, "since must be like"),
        ("/stats", {"limit": "-1"}, "limit must be in"),
        ("/stats", {"limit": "many"}, "limit must be an integer"),
        ("/stats", {"period": "daily", "extra": "1"}, "unknown parameter 'extra'"),
        ("/stats/servers", {"type": "temperature"}, "type must be among"),
        ("/stats/servers", {"limit": "0"}, "limit must be in"),
        ("/stats/servers", {"nodes": "x"}, "unknown parameter 'nodes'"),
    ]:
        r = requests.get(c.url + "/olol/v1" + path, params=params, timeout=10)
        assert r.status_code == 400, (params, r.text)
        assert message in r.json()["error"], (params, r.text)


def test_a_retention_changed_through_the_config_api_applies_to_the_next_request(make_cluster):
    c = make_cluster(nodes=1)
    now = time.time()
    for days in (3, 10):
        c.proxy.stats.add(Finished("chat", model=f"old-{days}"))
    c.proxy.stats.roll_up()
    for days in (3, 10):  # move them back in time (what a week of service leaves)
        stamp = datetime.fromtimestamp(now - days * 86400 - now % 3600, UTC).isoformat(
            timespec="microseconds")
        c.proxy.db.update("request_stats", {"timestamp": stamp},
                          lambda d, m=f"old-{days}": d.get("model") == m
                          and d.get("period") == "hourly")
    seen = {r["model"] for r in stats(c.url, period="hourly", since="30d").json()["rows"]}
    assert seen == {"old-3", "old-10"}
    r = requests.patch(c.url + "/olol/v1/config", json={"stats_hourly_retention_days": 5},
                       timeout=10)
    assert r.status_code == 200, r.text
    # the next read leaves the 10-day-old row out, the next job run removes it
    seen = {r["model"] for r in stats(c.url, period="hourly", since="30d").json()["rows"]}
    assert seen == {"old-3"}
    assert c.proxy.db.count("request_stats", {"model": "old-10", "period": "hourly"}) == 1
    run = requests.post(c.url + "/olol/v1/maintenance/stats-rollup/run", timeout=30)
    assert run.status_code == 200 and run.json()["outcome"] == "ok"
    assert c.proxy.db.count("request_stats", {"model": "old-10", "period": "hourly"}) == 0
    assert c.proxy.db.count("request_stats", {"model": "old-3", "period": "hourly"}) == 1
    r = requests.patch(c.url + "/olol/v1/config", json={"server_stats_retention_hours": 0},
                       timeout=10)
    assert r.status_code == 400 and "greater than 0" in r.json()["error"]
    r = requests.patch(c.url + "/olol/v1/config", json={"server_stats_retention_hours": 2},
                       timeout=10)
    assert r.status_code == 200 and c.proxy.health.retention_hours == 2.0


def test_olol_stats_shows_a_week_of_roll_ups_built_with_an_injected_clock(tmp_path, capsys):
    data = tmp_path / "data"
    # a week of traffic, one request per model every hour, rolled up as it goes
    monday = datetime.fromtimestamp(time.time(), UTC).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    monday -= (datetime.fromtimestamp(monday, UTC).weekday() + 7) * 86400  # last week's
    clock = FakeClock(monday + 1800)
    with DatabaseManager(data, clock=clock) as db:
        recorder = RequestStats(db, clock=clock)
        for hour in range(7 * 24):
            for model, ttft in (("llama3.2:1b", 80.0), ("qwen2.5:0.5b", 300.0)):
                recorder.add(Finished("chat", model=model, node="10.0.0.1:50051",
                                      tokens_in=20, tokens_out=50, queue_ms=2.0,
                                      ttft_ms=ttft, duration_ms=900.0,
                                      error="timeout" if hour % 24 == 0 else None))
            recorder.roll_up()
            clock.advance(3600)
        recorder.close()
    sims, agents = start_nodes(1, MODELS)
    try:
        config = ProxyConfig(listen="127.0.0.1:0", data_dir=data,
                             nodes=[a.address for a in agents])
        with Proxy(config) as proxy:
            assert main(["stats", "--period", "weekly", "--since", "3w",
                         "--url", proxy.url]) == 0
            out = capsys.readouterr().out.splitlines()
            assert out[0].split()[:3] == ["PERIOD", "MODEL", "REQUESTS"]
            week = datetime.fromtimestamp(monday, UTC).isocalendar()
            label = f"{week[0]}-W{week[1]:02d}"
            rows = [line.split() for line in out[1:]]
            assert [(r[0], r[1], r[2]) for r in rows] == [
                (label, "llama3.2:1b", "168"), (label, "qwen2.5:0.5b", "168")]
            assert "7 (timeout 7)" in out[1] and "2ms/2ms" in out[1]  # queue p50/p99

            assert main(["stats", "--period", "daily", "--since", "3w", "--by", "total",
                         "--url", proxy.url, "--json"]) == 0
            days = json.loads(capsys.readouterr().out)["rows"]
            assert len(days) == 7 and all(d["requests"] == 48 for d in days)
            assert all(d["tokens_out"] == 48 * 50 for d in days)
            assert all(d["ttft_ms"]["p50"] == pytest.approx(80, rel=0.1) for d in days)
            assert all(d["ttft_ms"]["p99"] == pytest.approx(300, rel=0.1) for d in days)

            with pytest.raises(SystemExit):
                main(["stats", "--period", "fortnightly", "--url", proxy.url])
            capsys.readouterr()
            assert main(["stats", "--since", "whenever", "--url", proxy.url]) == 1
            assert "since must be like" in capsys.readouterr().err
            assert main(["stats", "--servers", "--url", proxy.url]) == 0
            assert "slots" in capsys.readouterr().out
    finally:
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()

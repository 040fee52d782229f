"""Several proxies on one PostgreSQL store (issue 17): one queue with no double
dispatch, a proxy killed mid-run, and the truths they share (keys, settings, nodes)."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import ollama
import pytest
import requests

from olol.context import ProxyConfig
from olol.proxy import Proxy
from tests.bench.procs import free_port
from tests.e2e.conftest import start_nodes, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = "llama3.2:1b"


def start_shared_proxy(dsn, nodes, port, *extra):
    args = [sys.executable, "-m", "olol", "--log-level", "WARNING", "proxy",
            "--listen", f"127.0.0.1:{port}", "--store", dsn, *extra]
    for n in nodes:
        args += ["--node", n]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            return True
        try:
            return requests.get(url + "/api/version", timeout=0.5).ok
        except requests.RequestException:
            return False

    assert wait_until(up, timeout=40)
    assert proc.poll() is None, proc.stdout.read().decode()
    return proc, url


def submit(url, prompt, tokens=8):
    r = requests.post(url + "/olol/v1/jobs", json={"endpoint": "chat", "body": {
        "model": MODEL, "messages": [{"role": "user", "content": prompt}],
        "options": {"num_predict": tokens}}}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def statuses(url, ids):
    out = {}
    for j in ids:
        r = requests.get(f"{url}/olol/v1/jobs/{j}", timeout=5)
        out[j] = r.json().get("status") if r.ok else f"http {r.status_code}"
    return out


@pytest.fixture
def nodes():
    sims, agents = start_nodes(2, f"{MODEL}[tps=400]", parallel=2, record_prompts=10_000,
                               response_tokens=(8, 8))
    yield sims, agents
    for a in agents:
        a.stop(0)
    for s in sims:
        s.stop()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def seen(sims):
    total = {}
    for s in sims:
        for prompt, n in s.prompts_seen.items():
            total[prompt] = total.get(prompt, 0) + n
    return total


def test_two_proxies_share_one_queue_and_no_job_runs_twice(pg_dsn, nodes, procs):
    sims, agents = nodes
    addrs = [a.address for a in agents]
    a, url_a = start_shared_proxy(pg_dsn, addrs, free_port())
    b, url_b = start_shared_proxy(pg_dsn, addrs, free_port())
    procs += [a, b]
    ids = {}
    for i in range(60):
        url = url_a if i % 2 == 0 else url_b
        ids[submit(url, f"job-{i}")] = f"job-{i}"
    # every job is known to both proxies, wherever it was submitted
    assert wait_until(lambda: all(s == "completed" for s in statuses(url_b, ids).values()),
                      timeout=90), statuses(url_b, ids)
    assert all(s == "completed" for s in statuses(url_a, ids).values())
    counts = seen(sims)
    assert {p: counts.get(p, 0) for p in ids.values()} == {p: 1 for p in ids.values()}
    # each was claimed by one of the two proxies (which one depends on timing)
    served_by = {requests.get(f"{url_a}/olol/v1/jobs/{j}", timeout=5).json().get("claimed_by")
                 for j in ids}
    assert 1 <= len(served_by) <= 2 and None not in served_by, served_by
    # a synchronous request stays with the proxy that holds its caller
    r = ollama.Client(host=url_b).chat(model=MODEL, messages=[{"role": "user", "content": "s"}])
    assert r.done and r.message.content


@pytest.mark.slow
def test_a_proxy_killed_mid_run_loses_no_accepted_job(pg_dsn, procs):
    sims, agents = start_nodes(2, f"{MODEL}[tps=60]", parallel=2, record_prompts=10_000,
                               response_tokens=(20, 20))
    try:
        addrs = [a.address for a in agents]
        a, url_a = start_shared_proxy(pg_dsn, addrs, free_port())
        b, url_b = start_shared_proxy(pg_dsn, addrs, free_port())
        procs += [a, b]
        ids = {}
        for i in range(30):
            ids[submit(url_a if i % 2 == 0 else url_b, f"kill-{i}", tokens=20)] = f"kill-{i}"
        assert wait_until(lambda: sum(s == "completed" for s in statuses(url_b, ids).values())
                          >= 4, timeout=60)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        assert wait_until(lambda: all(s == "completed" for s in statuses(url_b, ids).values()),
                          timeout=120), statuses(url_b, ids)
        counts = seen(sims)
        assert all(counts.get(p, 0) >= 1 for p in ids.values())
        # re-run only what was running on the killed proxy (at most its 4 node slots)
        assert sum(counts.get(p, 0) - 1 for p in ids.values()) <= 4
    finally:
        for ag in agents:
            ag.stop(0)
        for s in sims:
            s.stop()


@pytest.fixture
def two_in_process(pg_dsn, nodes):
    sims, agents = nodes
    made = []

    def make(**kw):
        config = ProxyConfig(listen="127.0.0.1:0", store=pg_dsn,
                             nodes=[a.address for a in agents], health_interval_s=1.0, **kw)
        p = Proxy(config).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop(grace_s=2)


def test_a_key_revoked_on_one_proxy_is_refused_by_the_other(two_in_process):
    a = two_in_process(keys_enabled=True)
    b = two_in_process(keys_enabled=True)
    key_id, token = a.keys.create("tester")
    head = {"Authorization": f"Bearer {token}"}
    assert requests.get(b.url + "/api/tags", headers=head, timeout=5).status_code == 200
    assert a.keys.revoke(key_id)
    assert requests.get(b.url + "/api/tags", headers=head, timeout=5).status_code == 401


def test_settings_and_nodes_changed_on_one_proxy_reach_the_other(two_in_process, nodes):
    a = two_in_process()
    b = two_in_process()
    a.settings.change({"max_queue_depth": 123}, who="test")
    assert wait_until(lambda: b.config.max_queue_depth == 123 and b.queue.max_depth == 123,
                      timeout=10)
    a.settings.change({"max_queue_depth": None}, who="test")  # back to the boot value
    assert wait_until(lambda: b.queue.max_depth == a.queue.max_depth, timeout=10)
    sims, agents = start_nodes(1, f"{MODEL}[tps=400]")
    try:
        a.cluster.add_node(agents[0].address)
        assert wait_until(lambda: b.cluster.node(agents[0].address) is not None, timeout=10)
        a.cluster.remove_node(agents[0].address)
        assert wait_until(lambda: b.cluster.node(agents[0].address) is None, timeout=10)
    finally:
        agents[0].stop(0)
        sims[0].stop()


def test_a_busy_node_sends_the_other_proxys_request_elsewhere(pg_dsn):
    # one node with one slot and no waiting room answers "busy" (503) to the second
    # proxy's call: that request goes to the other node instead of failing
    sims, agents = start_nodes(1, f"{MODEL}[tps=40]", parallel=1, max_queue=0,
                               response_tokens=(20, 20))
    sims2, agents2 = start_nodes(1, f"{MODEL}[tps=40]", parallel=1, response_tokens=(20, 20))
    proxies = []
    try:
        for _ in range(2):
            config = ProxyConfig(listen="127.0.0.1:0", store=pg_dsn,
                                 nodes=[agents[0].address, agents2[0].address],
                                 health_interval_s=1.0, retry_backoff_s=0.05)
            proxies.append(Proxy(config).start())
        results, errors = [], []

        def call(p, i):
            try:
                results.append(ollama.Client(host=p.url).chat(
                    model=MODEL, messages=[{"role": "user", "content": f"busy-{i}"}]))
            except Exception as exc:  # noqa: BLE001 - collected and asserted
                errors.append(repr(exc))

        threads = [threading.Thread(target=call, args=(proxies[i % 2], i), name=f"c{i}")
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and len(results) == 6
        assert all(r.done for r in results)
    finally:
        for p in proxies:
            p.stop(grace_s=2)
        for x in (*agents, *agents2):
            x.stop(0)
        for s in (*sims, *sims2):
            s.stop()


def test_a_pull_on_one_proxy_shows_on_the_other_until_it_ends(pg_dsn):
    # qwen2.5:0.5b is 398 MB: at 400 MB/s the pull takes about a second
    sims, agents = start_nodes(1, f"{MODEL}[tps=400]", pull_bytes_per_second=400e6)
    proxies = []
    try:
        for _ in range(2):
            config = ProxyConfig(listen="127.0.0.1:0", store=pg_dsn,
                                 nodes=[agents[0].address], health_interval_s=1.0)
            proxies.append(Proxy(config).start())
        a, b = proxies
        assert wait_until(lambda: a.cluster.healthy_nodes() and b.cluster.healthy_nodes())
        op = a.registry.pull_model("qwen2.5:0.5b", [agents[0].address])
        theirs = [p for p in b.registry.active_pulls() if p.get("id") == op.id]
        assert theirs and theirs[0]["proxy"] == a.db.origin
        assert theirs[0]["model"] == "qwen2.5:0.5b"
        assert agents[0].address in b.registry.pulls.pulling().get("qwen2.5:0.5b", set())
        assert op.wait(timeout=30)[agents[0].address].get("status") == "success"
        assert wait_until(lambda: not [p for p in b.registry.active_pulls()
                                       if p.get("id") == op.id], timeout=10)
    finally:
        for p in proxies:
            p.stop(grace_s=2)
        agents[0].stop(0)
        sims[0].stop()


def test_statistics_of_both_proxies_add_up_in_the_shared_rows(two_in_process):
    from olol.stats import Finished

    a = two_in_process()
    b = two_in_process()
    for _ in range(30):
        for proxy, model in ((a, "shared-m"), (b, "shared-m")):
            proxy.stats.add(Finished("chat", model=model))
    for _ in range(3):  # roll-ups of both at once, again and again: none may be lost
        for proxy in (a, b):
            proxy.stats.add(Finished("chat", model="shared-m"))
        rollers = [threading.Thread(target=p.stats.roll_up, name=f"roll-{i}")
                   for i, p in enumerate((a, b))]
        for t in rollers:
            t.start()
        for t in rollers:
            t.join(timeout=30)
    for proxy in (a, b):
        rows = requests.get(proxy.url + "/olol/v1/stats", timeout=10,
                            params={"period": "hourly", "by": "model"}).json()["rows"]
        assert sum(r["requests"] for r in rows if r["model"] == "shared-m") == 66
    # one row per series and period, whichever proxy wrote first
    assert a.db.count("request_stats", {"model": "shared-m", "period": "hourly"}) == 1


def test_with_the_database_down_sync_requests_are_served_and_jobs_get_503(pg_own_server,
                                                                         nodes):
    sims, agents = nodes
    dsn = pg_own_server.create_database("down")
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", store=dsn, health_interval_s=1.0,
                              nodes=[a.address for a in agents])).start()
    try:
        assert wait_until(lambda: proxy.cluster.healthy_nodes())
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "stream": False}
        pg_own_server.stop()
        # a sync request lives in the proxy's RAM: it needs no database (keys off)
        r = requests.post(proxy.url + "/api/chat", json=chat, timeout=30)
        assert r.status_code == 200 and r.json()["done"]
        # a job must be on disk before its 202: refused, in Ollama's error shape
        r = requests.post(proxy.url + "/olol/v1/jobs", json={"endpoint": "chat",
                                                              "body": chat}, timeout=30)
        assert r.status_code == 503 and "unavailable" in r.json()["error"]
        pg_own_server.start()
        assert wait_until(lambda: requests.post(
            proxy.url + "/olol/v1/jobs", json={"endpoint": "chat", "body": chat},
            timeout=30).status_code == 202, timeout=30)
    finally:
        proxy.stop(grace_s=2)

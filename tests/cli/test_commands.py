"""Every ``olol`` command through a real process, against a proxy with simulated nodes
(``olol up`` itself: tests/e2e/test_processes.py and tests/e2e/test_wheel.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import requests

from olol.sim import SimConfig, Simulator, parse_models_spec
from tests.cli.conftest import fails_in_one_line, message_lines


def ok(result) -> str:
    assert result.returncode == 0, f"stdout={result.stdout!r} stderr={result.stderr!r}"
    assert "Traceback" not in result.stderr
    return result.stdout


def test_nodes_ls_add_rm(olol, cluster):
    url = cluster.url
    out = ok(olol("nodes", "ls", "--url", url))
    assert out.splitlines()[0].split()[:2] == ["ADDRESS", "HEALTHY"]
    assert {a.address for a in cluster.agents} <= {line.split()[0]
                                                   for line in out.splitlines()[1:]}
    assert ok(olol("nodes", "add", "127.0.0.1:9", "--url", url)).strip() == \
        "added 127.0.0.1:9"
    nodes = json.loads(ok(olol("nodes", "ls", "--url", url, "--json")))
    assert "127.0.0.1:9" in {n["address"] for n in nodes}
    assert ok(olol("nodes", "rm", "127.0.0.1:9", "--url", url)).strip() == \
        "removed 127.0.0.1:9"
    fails_in_one_line(olol("nodes", "rm", "127.0.0.1:9", "--url", url), 1, "no such node")


def test_nodes_offline_in_a_data_folder(olol, tmp_path):
    data = str(tmp_path / "d")
    ok(olol("nodes", "add", "gpu1.lan:50051", "--data-dir", data))
    assert "gpu1.lan:50051" in ok(olol("nodes", "ls", "--data-dir", data))
    fails_in_one_line(olol("nodes", "ls", "--data-dir", data, "--url", "http://x:1"), 2,
                      "either --url or --data-dir")


def test_keys_through_the_proxy(olol, cluster):
    url = cluster.url
    made = json.loads(ok(olol("keys", "create", "cli-test", "--url", url, "--json")))
    assert made["key"].startswith("olol-") and made["name"] == "cli-test"
    listed = json.loads(ok(olol("keys", "ls", "--url", url, "--json")))
    assert made["id"] in {k["id"] for k in listed}
    assert "cli-test" in ok(olol("keys", "ls", "--url", url))
    assert ok(olol("keys", "revoke", made["id"], "--url", url)).strip() == \
        f"revoked {made['id']}"
    fails_in_one_line(olol("keys", "revoke", "key_nope", "--url", url), 1, "no key")


def test_models_ls_status_pull_rm_optimize(olol, cluster):
    url = cluster.url
    out = ok(olol("models", "ls", "--url", url))
    assert out.splitlines()[0].split()[:3] == ["NAME", "SIZE", "NODES"]
    assert any(line.startswith("llama3.2:1b ") for line in out.splitlines())
    status = json.loads(ok(olol("models", "status", "llama3.2:1b", "--url", url, "--json")))
    assert sorted(status["nodes"]) == sorted(a.address for a in cluster.agents)
    fails_in_one_line(olol("models", "status", "absent:1b", "--url", url), 1,
                      "model 'absent:1b' not found")

    target = cluster.agents[0].address
    pulled = olol("models", "pull", "all-minilm", "--node", target, "--url", url)
    lines = ok(pulled).splitlines()
    assert "\x1b" not in pulled.stdout  # a pipe: plain lines, no escape codes
    assert lines[-1] == "pulled all-minilm"
    assert any(line.startswith(f"{target}: ") and line.endswith("100%") for line in lines)
    assert any(line.startswith("cluster: pulling on 1 node(s), 1 done") for line in lines)
    fails_in_one_line(olol("models", "pull", "no-such:1b", "--url", url), 1, "no-such:1b")

    removed = ok(olol("models", "rm", "all-minilm", "--force", "--url", url))
    assert removed.strip() == f"{target}: deleted"
    plan = ok(olol("models", "optimize", "--url", url)).splitlines()
    assert plan[0] == "nothing to change" or plan[0].split() == ["ACTION", "MODEL", "NODE",
                                                                 "REASON"]


def test_maintenance_ls_and_run(olol, cluster):
    url = cluster.url
    out = ok(olol("maintenance", "ls", "--url", url))
    assert out.splitlines()[0].split()[:2] == ["JOB", "EVERY"]
    assert any(line.startswith("queue-cleanup ") for line in out.splitlines())
    ran = ok(olol("maintenance", "run", "queue-cleanup", "--url", url))
    assert " ok " in ran
    fails_in_one_line(olol("maintenance", "run", "nope", "--url", url), 1,
                      "no maintenance job named 'nope'")


def test_jobs_submit_get_wait_ls_cancel(olol, cluster):
    url = cluster.url
    body = json.dumps({"model": "llama3.2:1b", "prompt": "hi", "options": {"num_predict": 3}})
    job_id = ok(olol("jobs", "submit", "generate", body, "--url", url)).strip()
    assert len(job_id) == 32
    waited = olol("jobs", "wait", job_id, "--url", url, "--max-wait", "60", "--json")
    assert json.loads(ok(waited))["status"] == "completed"
    assert "\x1b" not in waited.stderr  # plain lines on a pipe
    assert all(line.startswith(f"job {job_id}: ") for line in message_lines(waited.stderr))
    assert "status:   completed" in ok(olol("jobs", "get", job_id, "--url", url))
    assert job_id in ok(olol("jobs", "ls", "--url", url, "--status", "completed"))
    fails_in_one_line(olol("jobs", "cancel", job_id, "--url", url), 1, "already finished")
    from_stdin = olol("jobs", "submit", "embed", "-", "--url", url,
                      stdin=json.dumps({"model": "nomic-embed-text", "input": "x"}))
    assert len(ok(from_stdin).strip()) == 32
    fails_in_one_line(olol("jobs", "submit", "chat", "{nope", "--url", url), 2, "not JSON")


def test_config_get_set_reset_history(olol, cluster):
    url = cluster.url
    out = ok(olol("config", "get", "--url", url))
    assert out.splitlines()[0].split() == ["SETTING", "VALUE", "LIVE", "CHANGED"]
    assert any(line.startswith("strategy ") for line in out.splitlines())
    ok(olol("config", "set", "max_queue_depth_per_model=123", "--url", url))
    got = json.loads(ok(olol("config", "get", "max_queue_depth_per_model", "--url", url,
                             "--json")))
    assert got["max_queue_depth_per_model"]["value"] == 123
    assert "max_queue_depth_per_model" in ok(olol("config", "history", "--url", url))
    ok(olol("config", "reset", "max_queue_depth_per_model", "--url", url))
    fails_in_one_line(olol("config", "get", "colour", "--url", url), 2, "colour")
    fails_in_one_line(olol("config", "set", "colour=blue", "--url", url), 2, "colour")


def test_stats(olol, cluster):
    url = cluster.url
    out = ok(olol("stats", "--url", url, "--by", "model,node"))
    assert out.startswith(("PERIOD", "no requests counted"))
    data = json.loads(ok(olol("stats", "--url", url, "--json", "--period", "hourly")))
    assert data["period"] == "hourly"
    ok(olol("stats", "--servers", "--url", url))
    fails_in_one_line(olol("stats", "--since", "yesterday-ish", "--url", url), 1, "since")


def test_db_check_compact_dump(olol, cluster, tmp_path):
    assert "store is healthy" in ok(olol("db", "check", "--data-dir", str(cluster.data_dir)))
    data = str(tmp_path / "offline")
    ok(olol("nodes", "add", "gpu1.lan:50051", "--data-dir", data))
    assert json.loads(ok(olol("db", "compact", "--data-dir", data)))
    dumped = json.loads(ok(olol("db", "dump", "servers", "--data-dir", data)))
    assert "gpu1.lan:50051" in json.dumps(dumped)
    fails_in_one_line(olol("db", "dump", "colours", "--data-dir", data), 1, "olol db: ", "colours")


def test_certs_init_issue(olol, tmp_path):
    folder = str(tmp_path / "certs")
    ok(olol("certs", "init", "--dir", folder))
    ok(olol("certs", "issue", "worker1", "--host", "127.0.0.1", "--dir", folder))
    assert {p.name for p in Path(folder).iterdir()} >= {"ca.pem", "ca-key.pem", "worker1.pem",
                                                        "worker1-key.pem"}
    fails_in_one_line(olol("certs", "init", "--dir", folder), 1, "ca")  # never overwrites


def test_worker_and_node_status(olol):
    sim = Simulator(SimConfig(models=parse_models_spec("llama3.2:1b")), host="127.0.0.1",
                    port=0).start()
    proc = olol.popen("worker", "--listen", "127.0.0.1:0", "--ollama-url", sim.url)
    try:
        line = proc.stdout.readline()
        assert line.startswith("olol worker listening on 127.0.0.1:"), line
        address = line.split()[-1]
        out = ok(olol("node", "status", address))
        assert "ollama " in out and "llama3.2:1b" in out
        assert json.loads(ok(olol("node", "status", address, "--json")))["ollama"]["reachable"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sim.stop()
    fails_in_one_line(olol("worker", "--listen", "127.0.0.1:99999"), 2, "99999")


def test_keys_on_the_shared_store_while_a_proxy_runs(olol, pg_dsn):
    from olol.context import ProxyConfig
    from olol.proxy import Proxy

    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", store=pg_dsn, keys_enabled=True)).start()
    try:
        made = json.loads(ok(olol("keys", "create", "ops", "--admin", "--json",
                                  "--store", pg_dsn)))
        head = {"Authorization": f"Bearer {made['key']}"}
        assert requests.get(proxy.url + "/olol/v1/keys", headers=head, timeout=5).ok
        # the same through $OLOL_STORE; a revoked key is refused at its next request
        assert made["id"] in ok(olol("keys", "ls", OLOL_STORE=pg_dsn))
        ok(olol("keys", "revoke", made["id"], OLOL_STORE=pg_dsn))
        assert requests.get(proxy.url + "/olol/v1/keys", headers=head,
                            timeout=5).status_code == 401
    finally:
        proxy.stop(grace_s=2)
    fails_in_one_line(olol("keys", "ls", "--store", "postgresql://nobody@127.0.0.1:1/x"),
                      1, "cannot open the store")

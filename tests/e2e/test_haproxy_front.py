"""deploy/haproxy-two-proxies.cfg: two proxies on one PostgreSQL store behind HAProxy.

The first test reads the file only. The others run it for real where haproxy and the
PostgreSQL server are installed (``apt-get install haproxy postgresql``; skipped
otherwise), as shipped but for its addresses and log target: HAProxy's own check of the
file, its health checks passing on the readiness probe, streaming through it with the
official client, a job submitted and read back through it (each call may reach either
proxy), and the front still answering once one proxy has stopped (its check failing).
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import ollama
import pytest
import requests

from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.server.door import PUBLIC_PATHS
from tests.bench.procs import free_port
from tests.e2e.conftest import start_nodes
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "haproxy-two-proxies.cfg"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
MODEL = "llama3.2:1b"

needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


def server_checks(admin: Path) -> dict[str, tuple[str, str]]:
    """``{server: (status, check_status)}`` of the backend, from HAProxy's admin socket
    (``show stat``: status UP/DOWN, check_status L7OK when the probe answered 200)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(admin))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {r["svname"]: (r["status"], r["check_status"]) for r in rows
            if r["pxname"] == "olol_proxies" and r["svname"] not in ("FRONTEND", "BACKEND")}


def test_the_example_sends_to_both_proxies_and_checks_their_readiness():
    text = EXAMPLE.read_text()
    assert "server proxy1 127.0.0.1:11435 check" in text
    assert "server proxy2 127.0.0.1:11436 check" in text
    assert "http-check send meth GET uri /olol/v1/ready" in text
    assert "http-check expect status 200" in text
    # the probe must answer without an API key, or keys_enabled would fail every check
    assert "/olol/v1/ready" in PUBLIC_PATHS


@needs_haproxy
def test_haproxy_accepts_the_example_as_shipped():
    res = subprocess.run([HAPROXY, "-c", "-f", str(EXAMPLE)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def front(pg_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("haproxy")
    name = f"olol_haproxy_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    sims, agents = start_nodes(1, f"{MODEL}[tps=400]", response_tokens=(12, 12))
    proxies = [Proxy(ProxyConfig(listen="127.0.0.1:0", store=dsn, health_interval_s=1.0,
                                 nodes=[a.address for a in agents])).start()
               for _ in range(2)]
    port = free_port()
    cfg = EXAMPLE.read_text()
    replaced = {"bind :11434": f"bind 127.0.0.1:{port}",
                "127.0.0.1:11435": proxies[0].address, "127.0.0.1:11436": proxies[1].address,
                "log /dev/log local0": "log stdout format raw local0",
                # test only: an admin socket to read the health checks' outcome
                "maxconn 4096\n": f"maxconn 4096\n    stats socket {tmp}/admin.sock level admin\n"}
    for old, new in replaced.items():
        assert old in cfg, f"deploy/haproxy-two-proxies.cfg no longer has {old!r}"
        cfg = cfg.replace(old, new)
    (tmp / "haproxy.cfg").write_text(cfg)
    log = (tmp / "haproxy.log").open("wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp / "haproxy.cfg")],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return requests.get(url + "/olol/v1/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        if not wait_until(ready, timeout=30, step=0.1) or proc.poll() is not None:
            pytest.fail("haproxy did not serve with the example config: "
                        + (tmp / "haproxy.log").read_text(errors="replace")[-2000:])
        # both proxies pass the example's check of their readiness probe
        assert wait_until(lambda: all(v == ("UP", "L7OK") for v in
                                      server_checks(tmp / "admin.sock").values()),
                          timeout=30, step=0.2), server_checks(tmp / "admin.sock")
        yield url, proxies, tmp / "admin.sock"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for p in proxies:
            p.stop(grace_s=2)
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()
        pg_server.drop_database(name)


@needs_haproxy
def test_the_official_client_chats_and_streams_through_the_front(front):
    url, _, _ = front
    client = ollama.Client(host=url)
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.done and answer.message.content
    parts = list(client.chat(model=MODEL, stream=True,
                             messages=[{"role": "user", "content": "hello there"}]))
    assert len(parts) > 2 and parts[-1].done  # record by record, not buffered


@needs_haproxy
def test_a_job_submitted_through_the_front_is_read_back_through_it(front):
    url, _, _ = front
    r = requests.post(url + "/olol/v1/jobs", timeout=10, json={"endpoint": "chat", "body": {
        "model": MODEL, "messages": [{"role": "user", "content": "a job"}]}})
    assert r.status_code == 202, r.text
    job = r.json()["id"]

    def status() -> str | None:
        got = requests.get(f"{url}/olol/v1/jobs/{job}", timeout=10)
        assert got.status_code == 200, got.text  # whichever proxy answers knows the job
        return got.json().get("status")

    assert wait_until(lambda: status() == "completed", timeout=30, step=0.1), status()


@needs_haproxy
def test_the_front_still_answers_once_one_proxy_has_stopped(front):
    # last in this module: it stops one of the two proxies
    url, proxies, admin = front
    proxies[0].stop(grace_s=2)

    def chats() -> bool:
        for i in range(5):
            r = requests.post(url + "/api/chat", timeout=30, json={
                "model": MODEL, "stream": False,
                "messages": [{"role": "user", "content": f"after stop {i}"}]})
            if r.status_code != 200 or not r.json().get("done"):
                return False
        return True

    assert wait_until(chats, timeout=30, step=0.2)
    assert requests.get(url + "/olol/v1/ready", timeout=5).status_code == 200
    # HAProxy's checks take the stopped proxy out, and only that one
    assert wait_until(lambda: server_checks(admin)["proxy1"][0] == "DOWN", timeout=30,
                      step=0.2), server_checks(admin)
    assert server_checks(admin)["proxy2"] == ("UP", "L7OK")

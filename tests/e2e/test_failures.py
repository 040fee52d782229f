"""Node failures under load, a proxy killed with work in flight, a started stream that breaks."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ollama
import pytest
import requests

from olol.store import DatabaseManager
from tests.bench.procs import free_port
from tests.e2e.conftest import start_nodes, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_a_node_dies_under_load_and_no_request_fails(make_cluster):
    c = make_cluster(nodes=2, models="llama3.2:1b[tps=300]", parallel=2)
    done, errors = [], []
    lock = threading.Lock()
    counter = iter(range(40))

    def work():
        client = ollama.Client(host=c.url)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                r = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": f"q{i}"}],
                                options={"num_predict": 20})
                done.append(r.message.content)
            except Exception as exc:  # noqa: BLE001 - collected and asserted
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, name=f"load-{k}") for k in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(done) >= 5, timeout=20)
    c.agents[0].stop(0)  # the node disappears with requests in flight
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(done) == 40


def test_a_stream_that_breaks_after_it_started_ends_with_an_error_line(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=100]")
    c.sims[0].faults.drop_next_stream(1, after_chunks=3)
    r = requests.post(c.url + "/api/chat", json={"model": "llama3.2:1b", "messages": [
        {"role": "user", "content": "hi"}], "options": {"num_predict": 30}}, stream=True, timeout=30)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) >= 2
    assert "error" in lines[-1] and not any("error" in x for x in lines[:-1])
    assert not any(x.get("done") for x in lines)
    # the same through the official client: the error surfaces while iterating
    c.sims[0].faults.drop_next_stream(1, after_chunks=3)
    with pytest.raises(ollama.ResponseError):
        for _ in ollama.Client(host=c.url).chat(model="llama3.2:1b", messages=[
                {"role": "user", "content": "hi"}], options={"num_predict": 30}, stream=True):
            pass


def test_failure_before_streaming_starts_is_retried_elsewhere(make_cluster):
    c = make_cluster(nodes=2, models="llama3.2:1b")
    for sim in c.sims:
        sim.faults.drop_next_stream(1, after_chunks=0)
    r = ollama.Client(host=c.url).chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}],
                                       options={"seed": 1})
    assert r.done and r.message.content


def start_proxy_process(data_dir, nodes, port):
    args = [sys.executable, "-m", "olol", "--log-level", "WARNING", "proxy",
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    for n in nodes:
        args += ["--node", n]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(url + "/api/version", timeout=0.5).ok
        except requests.RequestException:
            return False

    assert wait_until(up, timeout=30), proc.stdout.read1().decode() if proc.poll() is not None else "not up"
    return proc, url


def test_sigkill_with_jobs_queued_and_running_then_restart(tmp_path):
    sims, agents = start_nodes(1, "llama3.2:1b[tps=40]", parallel=1)
    data = tmp_path / "data"
    port = free_port()
    proc = None
    try:
        proc, url = start_proxy_process(data, [agents[0].address], port)
        jobs = []
        for i in range(4):
            r = requests.post(url + "/olol/v1/jobs", json={"endpoint": "chat", "body": {
                "model": "llama3.2:1b", "messages": [{"role": "user", "content": f"job {i}"}],
                "options": {"num_predict": 20, "seed": i}}}, timeout=10)
            assert r.status_code == 202
            jobs.append(r.json()["id"])
        # a synchronous caller is waiting too
        def sync_call():
            try:
                requests.post(url + "/api/chat", json={
                    "model": "llama3.2:1b", "messages": [{"role": "user", "content": "sync"}],
                    "stream": False}, timeout=30)
            except requests.ConnectionError:
                pass  # the proxy is killed under it

        sync = threading.Thread(target=sync_call, name="sync-caller")
        sync.start()
        assert wait_until(lambda: requests.get(f"{url}/olol/v1/jobs/{jobs[0]}", timeout=5)
                          .json()["status"] == "processing", timeout=20)
        # the synchronous request is admitted (4 jobs + 1 sync, one of them running)
        assert wait_until(lambda: requests.get(f"{url}/olol/v1/queue", timeout=5)
                          .json()["depth"] == 5, timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        sync.join(timeout=30)

        proc, url = start_proxy_process(data, [agents[0].address], port)

        def all_done():
            states = [requests.get(f"{url}/olol/v1/jobs/{j}", timeout=5).json() for j in jobs]
            return all(s["status"] == "completed" for s in states)

        assert wait_until(all_done, timeout=60)
        for j in jobs:
            result = requests.get(f"{url}/olol/v1/jobs/{j}", timeout=5).json()["result"]
            assert result["done"] and result["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        proc = None
        with DatabaseManager(data) as db:
            sync_rows = db.search("inference_queue", lambda d: d.get("kind") == "sync")
        # interrupted, or absent: a sync admission does not wait for its journal sync,
        # and the kill may come before any later write syncs it (docs/store.md)
        assert len(sync_rows) <= 1 and all(r["status"] == "interrupted" for r in sync_rows)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def test_graceful_shutdown_lets_running_work_finish(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=50]")
    result = {}

    def call():
        result["r"] = ollama.Client(host=c.url).chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "x"}], options={"num_predict": 25})

    t = threading.Thread(target=call, name="caller")
    t.start()
    assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 1)
    t0 = time.monotonic()
    c.proxy.stop(grace_s=10)
    t.join(timeout=10)
    assert result["r"].done and result["r"].done_reason in ("stop", "length")
    assert result["r"].eval_count > 0
    assert time.monotonic() - t0 < 10


def test_work_still_running_when_the_grace_is_over_is_cut_and_says_why(make_cluster):
    """A stop whose grace runs out: a streaming caller reads an error line and a waiting
    one a 503, both saying the proxy is stopping (not gRPC's "Locally cancelled");
    their records say ``interrupted`` (not ``failed``: no node failed, and failure
    counts stay true); a job goes back to the queue for the next start to run."""
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=20]",
                     sim_kw={"response_tokens": (400, 400)})  # 20 s each
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 400}}
    job = requests.post(c.url + "/olol/v1/jobs", json={"endpoint": "chat", "body": body},
                        timeout=10).json()["id"]
    got: dict = {}

    def call(stream: bool) -> None:
        r = requests.post(c.url + "/api/chat", json={**body, "stream": stream}, timeout=30,
                          stream=stream)
        got[stream] = (r.status_code, r.headers["X-OLOL-Request-Id"],
                       [json.loads(x) for x in r.iter_lines() if x])

    callers = [threading.Thread(target=call, args=(s,), name=f"caller-{s}") for s in (True, False)]
    for t in callers:
        t.start()
    assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 3)
    time.sleep(0.3)  # the stream's first records are out
    c.proxy.stop(grace_s=0.2)
    for t in callers:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in callers)
    streamed, waited = got[True], got[False]
    assert streamed[0] == 200 and len(streamed[2]) > 1
    assert streamed[2][-1] == {"error": "the proxy is stopping; try again"}
    assert waited[0] == 503 and waited[2] == [{"error": "the proxy is stopping; try again"}]
    db = DatabaseManager(c.data_dir)
    try:
        records = {d["id"]: d for d in db.all("inference_queue")}
    finally:
        db.close()
    for _, request_id, _ in (streamed, waited):
        assert records[request_id]["status"] == "interrupted", records[request_id]
        assert records[request_id]["error"] == "interrupted: the proxy stopped before it finished"
    assert records[job]["status"] == "pending"  # run again at the next start
    assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 0)


def test_a_request_still_waiting_at_stop_is_answered_at_once(make_cluster):
    """No proxy can run a waiting synchronous request once its own stops (its caller is
    connected there): a stop answers it 503 at once, so the caller can try another
    proxy while the running one finishes within the grace."""
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=20]", parallel=1,
                     sim_kw={"response_tokens": (40, 40)})  # two seconds
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}],
            "stream": False, "options": {"num_predict": 40}}
    got: dict = {}

    def call(name: str) -> None:
        r = requests.post(c.url + "/api/chat", json=body, timeout=30)
        got[name] = (r.status_code, r.json(), c.sims[0].stats()["active_generations"],
                     r.headers.get("X-OLOL-Request-Id"))

    running = threading.Thread(target=call, args=("running",), name="caller-running")
    running.start()
    assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 1)
    waiting = threading.Thread(target=call, args=("waiting",), name="caller-waiting")
    waiting.start()
    assert wait_until(lambda: c.proxy.queue.depth() == 2)  # behind the running one
    stopper = threading.Thread(target=c.proxy.stop, kwargs={"grace_s": 20}, name="stopper")
    stopper.start()
    waiting.join(timeout=10)
    status, answer, generating, waiting_id = got["waiting"]
    assert status == 503 and answer == {"error": "the proxy is stopping; try again"}
    assert generating == 1  # answered while the other still ran
    running.join(timeout=20)
    stopper.join(timeout=20)
    assert got["running"][0] == 200 and got["running"][1]["done"] is True
    db = DatabaseManager(c.data_dir)
    try:
        record = db.search_one("inference_queue", {"id": waiting_id})
    finally:
        db.close()
    assert record["status"] == "interrupted"


def test_a_generation_longer_than_the_lease_keeps_its_claim(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=20]", lease_s=0.6,
                     sim_kw={"response_tokens": (40, 40)})  # two seconds of generation
    result = {}

    def call():
        result["r"] = ollama.Client(host=c.url).chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "long"}],
            options={"num_predict": 40}, stream=True)
        result["chunks"] = list(result["r"])

    t = threading.Thread(target=call, name="long-caller")
    t.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the lease-return job running often meanwhile
        assert c.proxy.queue.return_expired_leases() == 0
        time.sleep(0.1)
    t.join(timeout=30)
    assert result["chunks"][-1].done and result["chunks"][-1].eval_count == 40


def test_while_draining_new_requests_get_503_and_running_ones_finish(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=40]", sim_kw={"response_tokens": (30, 30)})
    result = {}

    def call():
        result["r"] = ollama.Client(host=c.url).chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "x"}])

    t = threading.Thread(target=call, name="caller")
    t.start()
    assert wait_until(lambda: c.sims[0].stats()["active_generations"] == 1)
    stopper = threading.Thread(target=c.proxy.stop, kwargs={"grace_s": 10}, name="stopper")
    stopper.start()
    assert wait_until(lambda: c.proxy.context.draining.is_set())
    r = requests.post(c.url + "/api/chat", json={"model": "llama3.2:1b", "messages": [
        {"role": "user", "content": "late"}], "stream": False}, timeout=10)
    assert r.status_code == 503 and "server busy" in r.json()["error"]
    t.join(timeout=20)
    stopper.join(timeout=20)
    assert result["r"].done and result["r"].eval_count == 30
    assert c.sims[0].stats()["generations_started"] == 1  # the late request never ran


def test_records_are_flushed_to_the_client_as_they_are_generated(make_cluster):
    c = make_cluster(nodes=1, models="llama3.2:1b[tps=20]", sim_kw={"response_tokens": (30, 30)})
    with requests.post(c.url + "/api/chat", json={"model": "llama3.2:1b", "messages": [
            {"role": "user", "content": "x"}]}, stream=True, timeout=30) as r:
        lines = r.iter_lines()
        first = json.loads(next(lines))
        # the first record reached us while the node is still generating the rest
        assert not first["done"]
        assert c.sims[0].stats()["active_generations"] == 1
        rest = [json.loads(x) for x in lines if x]
    assert rest[-1]["done"] and len(rest) + 1 == 31

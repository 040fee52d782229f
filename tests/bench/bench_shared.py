"""Several proxies on one PostgreSQL (issue 17): ``python -m tests.bench shared``.

On a real PostgreSQL server started in a temp folder with its durable defaults
(fsync on, synchronous_commit on, ``max_connections`` 200):

1. claim throughput of the PostgreSQL queue alone: 16 workers (8 threads on each of
   two ``QueueManager``s, as two proxies would) claim a standing backlog of jobs;
   every job must be claimed exactly once;
2. two proxies (subprocesses, ``--store postgresql://...``) on two simulated nodes
   (in this process, counting the prompts they receive): N async jobs submitted
   through both; no job may run twice, none may be lost;
3. the same with one proxy SIGKILLed mid-run: every accepted job still completes;
   the only re-runs allowed are the jobs the killed proxy had running;
4. added latency of a synchronous request (c=1, non-streamed, zero-latency node)
   through a proxy on PostgreSQL against one on TinyDB, requests interleaved.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from olol.agent.agent import Agent, AgentConfig
from olol.queue import QueueManager
from olol.sim.simulator import SimConfig, Simulator
from olol.sim.spec import parse_models_spec
from olol.store import DatabaseManager
from olol.store.postgres import PostgresStore
from tests.bench.common import table
from tests.bench.procs import Proc, free_port
from tests.pgserver import PgServer
from tests.queue.conftest import make_request

MODEL = "llama3.2:1b"
DURABLE = {"max_connections": "200", "shared_buffers": "64MB"}  # fsync and commits on


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def _claimer(dsn: str, threads: int, start_at: float, out) -> None:
    """One proxy's worth of claimers (a child process): ``threads`` threads claim from
    this process's own store and queue until its view has nothing pending."""
    store = PostgresStore(dsn, max_size=threads + 2)
    q = QueueManager(store, max_depth=1_000_000, max_depth_per_model=1_000_000)
    got: list[list[str]] = [[] for _ in range(threads)]

    def work(k: int) -> None:
        while True:
            docs = q.dequeue(1)
            if docs:
                got[k].append(docs[0]["id"])
            elif q.get_queue_stats()["pending"] == 0:
                return
            else:
                time.sleep(0.001)

    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.time()
    ts = [threading.Thread(target=work, args=(k,), name=f"claim-{k}") for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    out.put((t0, time.time(), [i for g in got for i in g]))
    store.close()


def claims(pg: PgServer, backlog: int, procs: int, threads: int) -> dict:
    """Claim throughput: ``procs`` processes (proxies) × ``threads`` threads claiming a
    standing backlog of jobs from one database."""
    import multiprocessing

    dsn = pg.create_database(f"claims_{procs}x{threads}")
    store = PostgresStore(dsn, max_size=16)
    q = QueueManager(store, max_depth=backlog * 2, max_depth_per_model=backlog * 2)
    adders = [threading.Thread(target=lambda k=k: [q.enqueue(make_request(
        kind="job", prompt=f"{k}-{i}")) for i in range(backlog // 16)], name=f"add-{k}")
        for k in range(16)]
    for t in adders:
        t.start()
    for t in adders:
        t.join(timeout=600)
    store.close()
    total = backlog // 16 * 16
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 8.0  # every child has loaded its view by then
    children = [ctx.Process(target=_claimer, args=(dsn, threads, start_at, out),
                            name=f"claimer-{k}") for k in range(procs)]
    for c in children:
        c.start()
    results = [out.get(timeout=600) for _ in children]
    for c in children:
        c.join(timeout=60)
    ids = [i for _, _, got in results for i in got]
    dt = max(r[1] for r in results) - min(r[0] for r in results)
    return {"jobs": total, "claimed": len(ids), "distinct": len(set(ids)),
            "rate": len(ids) / dt, "seconds": dt}


def tinydb_claims(backlog: int, workers: int = 16) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db = DatabaseManager(Path(tmp) / "data", background_checkpoints=False)
        q = QueueManager(db, max_depth=backlog * 2, max_depth_per_model=backlog * 2)
        for i in range(backlog):
            q.enqueue(make_request(kind="job", prompt=str(i)))
        n = [0] * workers

        def work(k: int) -> None:
            while q.dequeue(1):
                n[k] += 1

        threads = [threading.Thread(target=work, args=(k,), name=f"tclaim-{k}")
                   for k in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        dt = time.perf_counter() - t0
        db.close()
        return {"claimed": sum(n), "rate": sum(n) / dt}


def nodes(count: int, **sim_kw) -> tuple[list, list]:
    sims, agents = [], []
    for _ in range(count):
        sim = Simulator(SimConfig(models=parse_models_spec(MODEL), **sim_kw),
                        host="127.0.0.1", port=0).start()
        sims.append(sim)
        agents.append(Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url,
                                        parallel=sim_kw.get("parallel", 4))).start())
    return sims, agents


def start_proxy(nodes_: list[str], *extra: str) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["proxy", "--listen", f"127.0.0.1:{port}", *extra]
    for n in nodes_:
        args += ["--node", n]
    return Proc(args, ready_url=url + "/api/version", timeout=60), url


def _status_counts(store: PostgresStore) -> dict[str, int]:
    return {s: store.count("inference_queue", {"status": s})
            for s in ("pending", "processing", "completed", "failed", "interrupted",
                      "cancelled")}


def two_proxies(pg: PgServer, n_jobs: int, kill: bool) -> dict:
    dsn = pg.create_database("kill" if kill else "live")
    sims, agents = nodes(2, parallel=8, response_tokens=(4, 4), record_prompts=n_jobs + 10,
                         tokens_per_second=200.0 if kill else 0.0)
    procs: list[Proc] = []
    watch = PostgresStore(dsn, max_size=2)
    try:
        addrs = [a.address for a in agents]
        for _ in range(2):
            procs.append(start_proxy(addrs, "--store", dsn)[0])
        urls = [f"http://{p.args[2]}" for p in procs]
        prompts = [f"{'k' if kill else 'j'}-{i}" for i in range(n_jobs)]
        accepted: dict[str, str] = {}  # job id -> prompt, for every 202
        refused = [0]
        lock = threading.Lock()

        def submit(k: int) -> None:
            s = requests.Session()
            for i in range(k, n_jobs, 8):
                try:
                    r = s.post(urls[i % 2] + "/olol/v1/jobs", json={
                        "endpoint": "chat", "body": {
                            "model": MODEL, "messages": [{"role": "user", "content": prompts[i]}],
                            "options": {"num_predict": 4}}}, timeout=30)
                except requests.RequestException:  # the killed proxy: not accepted
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    if r.status_code == 202:
                        accepted[r.json()["id"]] = prompts[i]
                    else:
                        refused[0] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=submit, args=(k,), name=f"submit-{k}")
                   for k in range(8)]
        for t in threads:
            t.start()
        killed_running = 0
        if kill:
            deadline = time.monotonic() + 120
            while (_status_counts(watch)["completed"] < n_jobs // 3
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            killed_running = sum(1 for d in watch.search("inference_queue",
                                                         {"status": "processing"})
                                 if d.get("claimed_by") is not None)
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].p.wait(timeout=10)
        for t in threads:
            t.join(timeout=600)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            finished = {d["id"] for d in watch.search(
                "inference_queue", lambda d: d.get("status") not in ("pending", "processing"))}
            if all(j in finished for j in accepted):
                break
            time.sleep(0.5)
        dt = time.perf_counter() - t0
        done = {d["id"] for d in watch.search("inference_queue", {"status": "completed"})}
        not_completed = sum(1 for j in accepted if j not in done)
        seen: dict[str, int] = {}
        for sim in sims:
            for p, k in sim.prompts_seen.items():
                seen[p] = seen.get(p, 0) + k
        twice = sum(1 for p in accepted.values() if seen.get(p, 0) > 1)
        never = sum(1 for p in accepted.values() if seen.get(p, 0) == 0)
        return {"accepted": len(accepted), "refused": refused[0], "completed": len(done),
                "not_completed": not_completed, "twice": twice,
                "never_run": never, "running_at_kill": killed_running, "seconds": dt}
    finally:
        watch.close()
        for p in procs:
            p.stop()
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def sync_latency(pg: PgServer, n: int) -> dict:
    dsn = pg.create_database("latency")
    sims, agents = nodes(1, parallel=4)
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tiny, tiny_url = start_proxy([agents[0].address], "--data-dir", str(Path(tmp) / "d"))
            pgp, pg_url = start_proxy([agents[0].address], "--store", dsn)
            procs += [tiny, pgp]
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "stream": False, "options": {"num_predict": 1}}
            sessions = {u: requests.Session() for u in (tiny_url, pg_url)}
            direct = requests.Session()
            lat: dict[str, list[float]] = {"tinydb": [], "postgresql": [], "direct": []}
            for _ in range(50):  # warm-up: connections, first placement, model load
                for u, s in sessions.items():
                    s.post(u + "/api/chat", json=body, timeout=30)
                direct.post(sims[0].url + "/api/chat", json=body, timeout=30)
            for _ in range(n):
                for name, u in (("tinydb", tiny_url), ("postgresql", pg_url)):
                    t0 = time.perf_counter()
                    r = sessions[u].post(u + "/api/chat", json=body, timeout=30)
                    lat[name].append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                t0 = time.perf_counter()
                direct.post(sims[0].url + "/api/chat", json=body, timeout=30)
                lat["direct"].append(time.perf_counter() - t0)
            return {k: {"p50": statistics.median(v) * 1e3, "p99": _pct(v, 0.99) * 1e3}
                    for k, v in lat.items()}
    finally:
        for p in procs:
            p.stop()
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def main(quick: bool = False) -> str:
    n_jobs = 1_000 if quick else 5_000
    backlog = 2_000 if quick else 8_000
    n_lat = 200 if quick else 500
    load0 = os.getloadavg()[0]
    out = ["## Several proxies on one PostgreSQL", ""]
    with tempfile.TemporaryDirectory() as tmp:
        pg = PgServer(Path(tmp) / "pg", settings=DURABLE).start()
        try:
            version = pg.version() if hasattr(pg, "version") else "15"
            cl = claims(pg, backlog, procs=2, threads=8)
            cl1 = claims(pg, backlog, procs=1, threads=16)
            tcl = tinydb_claims(backlog)
            live = two_proxies(pg, n_jobs, kill=False)
            killed = two_proxies(pg, n_jobs, kill=True)
            lat = sync_latency(pg, n_lat)
        finally:
            pg.cleanup()
    load1 = os.getloadavg()[0]
    added = {k: lat[k]["p50"] - lat["direct"]["p50"] for k in ("tinydb", "postgresql")}
    out.append(f"PostgreSQL {version} in a temp folder, durable defaults (fsync on, "
               f"synchronous_commit on); 2 cores; load average {load0:.2f} -> {load1:.2f}.")
    out.append("")
    out.append(table(
        ["measure", "result", "bar", "met"],
        [
            ["claims/s, the PostgreSQL queue alone: 1 queue x 16 workers",
             f"{cl1['rate']:,.0f} ({cl1['claimed']:,} of {cl1['jobs']:,} jobs, "
             f"{cl1['claimed'] - cl1['distinct']} claimed twice)", ">= 2,000",
             "yes" if cl1["rate"] >= 2000 and cl1["claimed"] == cl1["distinct"] == cl1["jobs"]
             else "no"],
            ["claims/s, 2 queues (2 processes, as two proxies) x 8 workers",
             f"{cl['rate']:,.0f} ({cl['claimed']:,} of {cl['jobs']:,} jobs, "
             f"{cl['claimed'] - cl['distinct']} claimed twice)", "",
             "0 twice" if cl["claimed"] == cl["distinct"] == cl["jobs"] else "DUPLICATES"],
            ["claims/s, 16 workers (TinyDB, same run, for reference)",
             f"{tcl['rate']:,.0f}", "", ""],
            [f"two proxies, {live['accepted']:,} jobs: run twice / lost",
             f"{live['twice']} / {live['not_completed']} ({live['seconds']:.1f} s, "
             f"{live['refused']} refused at submission)", "0 / 0",
             "yes" if live["twice"] == 0 and live["not_completed"] == 0 else "no"],
            [f"one proxy SIGKILLed mid-run, {killed['accepted']:,} jobs: not completed",
             f"{killed['not_completed']} ({killed['twice']} run twice; "
             f"{killed['running_at_kill']} were running at the kill)", "0",
             "yes" if killed["not_completed"] == 0 else "no"],
            ["sync request c=1, added p50 over direct: TinyDB / PostgreSQL",
             f"{added['tinydb']:.2f} / {added['postgresql']:.2f} ms "
             f"(difference {added['postgresql'] - added['tinydb']:+.2f} ms)",
             "difference <= 1 ms",
             "yes" if added["postgresql"] - added["tinydb"] <= 1.0 else "no"],
            ["sync request c=1, p99: direct / TinyDB / PostgreSQL",
             f"{lat['direct']['p99']:.2f} / {lat['tinydb']['p99']:.2f} / "
             f"{lat['postgresql']['p99']:.2f} ms", "", ""],
        ],
    ))
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()

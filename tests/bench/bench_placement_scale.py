"""How long one placement decision takes, from 16 to 256 nodes, with 64 models.

Two measures per cluster size, each in two states of the cluster:

* ``place()``: the pure function alone, on a snapshot built once;
* the scheduler's whole decision (``RequestScheduler.plan_next``): read the queue's
  groups and summaries, snapshot the cluster (a real ``ClusterManager`` fed with
  status polls), call ``place()``; nothing is claimed.

States: *idle* (every node free: the first group is placed) and *saturated* (every
slot of every node reserved: every group of the 64-request window is tried and
none placed, the most work one decision can do).

Each node has 8 of the 64 models on disk, 2 resident, 4 slots; 64 requests are
queued over the 64 models. Bar: p99 of one decision <= 1 ms at 256 nodes.

Run: ``python -m tests.bench placement_scale`` (``--quick`` for fewer samples).
"""

from __future__ import annotations

import random
import time

from olol.cluster import ClusterManager
from olol.placement import place
from olol.queue import QueueManager
from olol.scheduler import RequestScheduler
from olol.store import DatabaseManager
from tests.bench.common import bars_table, fmt, pct, table

SIZES = (16, 32, 64, 128, 256)
MODELS = [f"model{k:02d}:1b" for k in range(64)]


class _Client:
    def close(self) -> None:
        pass


def _status(models, loaded) -> dict:
    return {"ollama": {"reachable": True, "models": [{"name": m} for m in models],
                       "loaded": [{"name": m} for m in loaded]},
            "agent": {"parallel": 4, "in_flight_total": 0}}


def build(n_nodes: int, seed: int = 11):
    rnd = random.Random(seed)
    db = DatabaseManager.memory()
    cluster = ClusterManager(db, client_factory=lambda a: _Client())
    for i in range(n_nodes):
        addr = f"10.0.{i // 250}.{i % 250 + 1}:50051"
        cluster.add_node(addr)
        have = rnd.sample(MODELS, 8)
        cluster.record_poll(addr, _status(have, have[:2]), 1.0)
    queue = QueueManager(db, max_depth=10_000)
    for k in range(64):
        model = MODELS[rnd.randrange(64)]
        queue.enqueue({"id": f"r{k}", "kind": "sync", "endpoint": "generate", "api": "ollama",
                       "model": model, "body": {"model": model, "prompt": f"p{k}"}})
    sched = RequestScheduler(queue, cluster)
    return db, cluster, queue, sched


def saturate(sched: RequestScheduler, cluster: ClusterManager) -> None:
    with sched._lock:  # the benchmark fills every slot as running calls would
        for n in cluster.healthy_nodes():
            for m in list(n.available_models):
                for _ in range(n.parallel):
                    sched._reserve(n.address, m, +1)


def timed(fn, samples: int) -> list[float]:
    for _ in range(min(50, samples)):
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(n_nodes: int, samples: int) -> dict:
    db, cluster, queue, sched = build(n_nodes)
    try:
        row = {"nodes": n_nodes}
        for state in ("idle", "saturated"):
            if state == "saturated":
                saturate(sched, cluster)
            with sched._lock:
                window = queue.peek_summaries(sched.lookahead)
                summary = sched._summary(window, queue.batch_similar_requests(limit=64))
                snap = sched._snapshot(cluster.healthy_nodes(), {r["model_key"] for r in window})
                policy = sched._policy()
            decided = len(place(snap, summary, time.time(), policy).decisions)
            pure = timed(lambda s=snap, q=summary, p=policy: place(s, q, time.time(), p), samples)
            whole = timed(sched.plan_next, samples)
            row[state] = {"decided": decided, "pure_p50": pct(pure, .5) * 1e3,
                          "pure_p99": pct(pure, .99) * 1e3,
                          "whole_p50": pct(whole, .5) * 1e3, "whole_p99": pct(whole, .99) * 1e3}
        return row
    finally:
        db.close()


def main(quick: bool = False) -> str:
    samples = 300 if quick else 2000
    rows = [measure(n, samples) for n in SIZES]
    lines = ["## Placement decision time, 16 to 256 nodes, 64 models", ""]
    lines.append(f"{samples} decisions per cell; times in ms. Each node: 8 models on disk, "
                 "2 resident, 4 slots; 64 requests queued.")
    lines.append("")
    out = []
    for r in rows:
        for state in ("idle", "saturated"):
            c = r[state]
            out.append([r["nodes"], state, c["decided"], fmt(c["pure_p50"], 3),
                        fmt(c["pure_p99"], 3), fmt(c["whole_p50"], 3), fmt(c["whole_p99"], 3)])
    lines.append(table(["nodes", "cluster", "placed", "place() p50", "place() p99",
                        "whole decision p50", "whole decision p99"], out))
    lines.append("")
    big = rows[-1]
    worst_pure = max(big["idle"]["pure_p99"], big["saturated"]["pure_p99"])
    worst_whole = max(big["idle"]["whole_p99"], big["saturated"]["whole_p99"])
    h = build(256)
    try:
        copy = timed(h[1].healthy_nodes, samples)
    finally:
        h[0].close()
    lines.append(f"Of the whole decision at 256 nodes, `ClusterManager.healthy_nodes()` (a copy of "
                 f"every node's state) takes {pct(copy, .5) * 1e3:.3f} ms p50, "
                 f"{pct(copy, .99) * 1e3:.3f} ms p99.")
    lines.append("")
    lines.append(bars_table([
        ("256 nodes: place() p99 <= 1 ms", f"{worst_pure:.3f} ms", worst_pure <= 1.0),
        ("256 nodes: whole decision p99 <= 1 ms", f"{worst_whole:.3f} ms", worst_whole <= 1.0),
    ]))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

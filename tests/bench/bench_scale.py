"""Scale: one scheduling decision and one health sweep, from 16 to 256 nodes, 64 models.

* **Scheduling decision**: the scheduler's public entry point
  (``RequestScheduler.schedule_next_batch``) over a real queue on an in-memory store and a
  ``ClusterManager`` of N nodes, each listing 16 of the 64 models with 2 loaded and 4
  slots. The queue holds 256 pending requests (popular models more often, priorities
  0..2); about 3/4 of the cluster's slots stay busy (the oldest assignment is released
  when more are held), every claimed request is finished and replaced, outside the
  timed call. The time is the whole call: the decision and its claim in the queue.
* **Health sweep**: ``HealthMonitor.poll_all`` over N in-process fake agents on loopback
  (one real gRPC server with one port per node, answering a status that lists 16 models)
  with the real ``NodeClient``: every node polled, its state recorded, its ``servers``
  row and samples written. Compared with the default interval (5 s).

Bars (issue 11): one decision <= 1 ms at p99 with 256 nodes and 64 models; a sweep of
256 nodes within its interval.
"""

from __future__ import annotations

import collections
import inspect
import os
import random
import time
from typing import Any

from olol.api.validation import VALIDATORS
from olol.cluster import ClusterManager
from olol.health import HealthMonitor
from olol.queue import QueueManager
from olol.rpc.client import NodeClient, status_to_dict
from olol.store import DatabaseManager
from tests.bench.common import bars_table, fmt, pct, table
from tests.cluster.fake_agents import FakeAgents, node_status

MODELS = [f"model{i:02d}:latest" for i in range(64)]
PER_NODE, LOADED, SLOTS = 16, 2, 4
QUEUED = 256
INTERVAL_S = 5.0  # the default health_interval_s


def _offline(address: str) -> Any:
    raise RuntimeError("the scheduling benchmark calls no node")


def _node_models(i: int) -> list[str]:
    return [MODELS[(i * 4 + k) % len(MODELS)] for k in range(PER_NODE)]


def _request(rng: random.Random) -> dict:
    # popular models more often (a Zipf-like spread over the 64)
    model = MODELS[min(len(MODELS) - 1, int(rng.paretovariate(1.2)) - 1)]
    body = {"model": model, "prompt": "hello", "stream": False}
    v = VALIDATORS["generate"](body)
    return {"kind": "sync", "endpoint": "generate", "api": "ollama", "model": model,
            "model_key": v.normalized_model, "body": body, "stream": v.stream,
            "prompt": "hello", "priority": rng.choice((0, 0, 1, 2)),
            "coalesce_key": v.coalesce_key, "batch_key": v.batch_key}


def _scheduler(queue: Any, cluster: Any) -> Any:
    """The scheduler built through its public constructor (tolerant of new options)."""
    from olol.scheduler import RequestScheduler

    params = inspect.signature(RequestScheduler).parameters
    kw = {k: v for k, v in {"clock": time.time, "strategy": "smart"}.items() if k in params}
    return RequestScheduler(queue, cluster, **kw)


def bench_decision(nodes: int, decisions: int) -> dict:
    rng = random.Random(nodes)
    db = DatabaseManager.memory()
    try:
        queue = QueueManager(db, max_depth=100_000, max_depth_per_model=100_000)
        cluster = ClusterManager(db, client_factory=_offline)
        for i in range(nodes):
            address = f"10.{i // 250}.{i % 250}.1:11434"
            cluster.add_node(address)
            models = _node_models(i)
            status = status_to_dict(node_status(models, loaded=models[:LOADED],
                                                parallel=SLOTS))
            cluster.record_poll(address, status, 1.0)
        sched = _scheduler(queue, cluster)
        for _ in range(QUEUED):
            queue.enqueue(_request(rng), wake=False)
        held: collections.deque = collections.deque()
        busy = max(1, int(nodes * SLOTS * 0.75))
        times, empty = [], 0
        for n in range(decisions + 50):
            t0 = time.perf_counter()
            assignment = sched.schedule_next_batch()
            dt = time.perf_counter() - t0
            if n >= 50:  # warm-up excluded
                times.append(dt)
            if assignment is None:
                empty += 1
                if held:
                    sched.release(held.popleft())
                continue
            held.append(assignment)
            for r in assignment.requests:
                queue.update_request_status(r["id"], "completed")
                queue.enqueue(_request(rng), wake=False)
            while len(held) > busy:
                sched.release(held.popleft())
        return {"nodes": nodes, "p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3,
                "max_ms": max(times) * 1e3, "none": empty, "decisions": len(times)}
    finally:
        db.close()


def bench_sweep(nodes: int, sweeps: int) -> dict:
    status = node_status(MODELS[:PER_NODE], loaded=MODELS[:LOADED], parallel=SLOTS)
    db = DatabaseManager.memory()
    with FakeAgents(nodes, status, threads=16) as agents:
        cluster = ClusterManager(db, client_factory=lambda a: NodeClient(a, timeout=5.0))
        monitor = HealthMonitor(cluster, db, interval_s=INTERVAL_S, timeout_s=2.0,
                                stats_interval_s=0.0)
        try:
            for address in agents.addresses:
                cluster.add_node(address)
            t0 = time.perf_counter()
            first = monitor.poll_all()  # connects every channel
            cold = time.perf_counter() - t0
            times, failed = [], sum(1 for r in first.values() if not r.get("ok"))
            for _ in range(sweeps):
                t0 = time.perf_counter()
                results = monitor.poll_all()
                times.append(time.perf_counter() - t0)
                failed += sum(1 for r in results.values() if not r.get("ok"))
            return {"nodes": nodes, "cold_s": cold, "p50_s": pct(times, 0.5),
                    "max_s": max(times), "failed": failed}
        finally:
            monitor.stop()
            cluster.close()
            db.close()


def main(quick: bool = False) -> str:
    sizes = (16, 64, 256) if quick else (16, 32, 64, 128, 256)
    decisions = 500 if quick else 2_000
    sweeps = 3 if quick else 5
    load_before = os.getloadavg()
    rows_d = [bench_decision(n, decisions) for n in sizes]
    rows_s = [bench_sweep(n, sweeps) for n in sizes]
    load_after = os.getloadavg()
    d256 = next(r for r in rows_d if r["nodes"] == 256)
    s256 = next(r for r in rows_s if r["nodes"] == 256)
    out = [
        "## Scale: scheduling decision and health sweep, 16 to 256 nodes, 64 models",
        "",
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f} / "
        f"{load_before[1]:.2f} / {load_before[2]:.2f}, after {load_after[0]:.2f} / "
        f"{load_after[1]:.2f} / {load_after[2]:.2f} (1 / 5 / 15 min): a loaded machine "
        "slows both figures.",
        "",
        f"### One scheduling decision (`schedule_next_batch`, {decisions} decisions, "
        f"{QUEUED} queued, 3/4 of the slots busy)",
        "",
        table(["nodes", "p50 ms", "p99 ms", "max ms", "no batch"],
              [[r["nodes"], fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 3), fmt(r["max_ms"], 2),
                r["none"]] for r in rows_d]),
        "",
        f"### One health sweep of every node (fake agents on loopback, {sweeps} sweeps "
        f"after the first; interval {INTERVAL_S:g} s)",
        "",
        table(["nodes", "first sweep s", "p50 s", "max s", "share of interval", "failed polls"],
              [[r["nodes"], fmt(r["cold_s"], 3), fmt(r["p50_s"], 3), fmt(r["max_s"], 3),
                f"{r['max_s'] / INTERVAL_S:.0%}", r["failed"]] for r in rows_s]),
        "",
        bars_table([
            ("one decision, 256 nodes x 64 models, p99 <= 1 ms", f"{d256['p99_ms']:.3f} ms",
             d256["p99_ms"] <= 1.0),
            (f"health sweep of 256 nodes <= interval ({INTERVAL_S:g} s)",
             f"{s256['max_s']:.3f} s", s256["max_s"] <= INTERVAL_S and not s256["failed"]),
        ]),
    ]
    return "\n".join(out)

"""Queue hot-path timings: ``python -m tests.bench queue``.

Measures, on a durable store in a temp folder, the latency of enqueue, of a claim
(dequeue of one) and of a completion, single-threaded, for sync requests (which
do not wait for their fsync) and for jobs (which do), then sync enqueue
throughput with 16 threads. Prints medians and p95 in ms.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

from olol.queue import QueueManager
from olol.store import DatabaseManager
from tests.queue.conftest import make_request


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"p50 {statistics.median(s) * 1e3:.3f} ms  p95 {s[int(len(s) * 0.95)] * 1e3:.3f} ms"


def main(quick: bool = False, n: int = 2_000, backlog: int = 5_000) -> str:
    if quick:
        n, backlog = 500, 1_000
    out = [f"## Queue hot path (durable store, {backlog:,} requests already queued)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        db = DatabaseManager(Path(tmp) / "data", background_checkpoints=False)
        q = QueueManager(db, max_depth=100_000, max_depth_per_model=100_000)
        for i in range(backlog):  # a standing backlog, so the index is not trivially small
            q.enqueue(make_request(model="qwen2:0.5b", prompt=str(i), priority=-1))
        req = make_request(prompt="x" * 200)
        # A sync request's admission and state changes do not wait for their fsync
        # (docs/store.md, "What survives a crash"); a job's admission and completion do.
        for kind in ("sync", "job"):
            enq, claim, done = [], [], []
            for _ in range(n if kind == "sync" else max(100, n // 4)):
                t0 = time.perf_counter()
                rid, _ = q.enqueue(dict(req, kind=kind))
                t1 = time.perf_counter()
                [doc] = q.dequeue(1, model="llama3.2:1b", server="n1")
                t2 = time.perf_counter()
                q.update_request_status(doc["id"], "completed")
                t3 = time.perf_counter()
                enq.append(t1 - t0)
                claim.append(t2 - t1)
                done.append(t3 - t2)
            out.append(f"- {kind}: enqueue: {_ms(enq)}")
            out.append(f"- {kind}: dequeue (claim one): {_ms(claim)}")
            out.append(f"- {kind}: complete: {_ms(done)}")

        per = 250
        threads = [threading.Thread(target=lambda: [q.enqueue(dict(req)) for _ in range(per)],
                                    name=f"bench-{k}") for k in range(16)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        dt = time.perf_counter() - t0
        out.append(f"- sync enqueue from 16 threads: {16 * per / dt:,.0f} req/s")
        t0 = time.perf_counter()
        for _ in range(200):
            q.get_queue_stats()
        out.append(f"- get_queue_stats with {q.depth():,} queued: "
                   f"{(time.perf_counter() - t0) / 200 * 1e3:.2f} ms")
        db.close()
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()

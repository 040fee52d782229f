"""Store benchmark: stock TinyDB, olol's store and persist-queue, side by side.

Durable insert and update-by-id, ops/s as the median of several runs, at 1k,
10k and 50k existing rows, with 1, 4 and 16 writer threads; start-up of a 50k-row
store with a 50k-record journal; how long a 50k-row checkpoint blocks writers.
Run: ``python -m tests.bench store`` (``--quick`` for a short run).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sqlite3
import tempfile
import threading
import time
import warnings

from tests.bench.common import bars_table, fmt, fsync_rate, median, table

PROMPT = ("Explain the difference between a process and a thread. " * 12)[:650]


def queue_doc(i: int) -> dict:
    return {
        "id": f"{i:08x}-5b1c-4c7e-9a53-{random.getrandbits(48):012x}",
        "model": "llama3.2:1b",
        "prompt": PROMPT,
        "status": "pending",
        "priority": i % 3,
        "params": {"temperature": 0.7, "num_predict": 128, "seed": i},
        "server_assigned": None,
        "batch_id": None,
        "result": None,
    }


def run_threads(n_threads: int, ops_per_thread: int, op) -> float:
    """ops/s of n_threads each calling op(thread, k) ops_per_thread times."""
    barrier = threading.Barrier(n_threads + 1)

    def work(t):
        barrier.wait()
        for k in range(ops_per_thread):
            op(t, k)

    threads = [threading.Thread(target=work, args=(t,), name=f"bench-{t}") for t in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    return n_threads * ops_per_thread / (time.perf_counter() - t0)


# ---------------------------------------------------------------- implementations
class OlolImpl:
    name = "olol store"

    def setup(self, d: str, rows: int) -> None:
        from olol.store import DatabaseManager

        db = DatabaseManager(d, background_checkpoints=False)
        for start in range(0, rows, 1000):
            db.insert_many("inference_queue", [queue_doc(i) for i in range(start, min(rows, start + 1000))])
        db.checkpoint()
        self.db = db
        self.ids = [doc.doc_id for doc in db.all("inference_queue")]

    def insert(self, t, k):
        self.db.insert("inference_queue", queue_doc(k))

    def update(self, t, k):
        self.db.update(
            "inference_queue",
            {"status": "processing", "server_assigned": "10.0.0.7:50051"},
            random.choice(self.ids),
        )

    def teardown(self):
        self.db.close(checkpoint=False)


class StockTinyDBImpl:
    """TinyDB 4.9 with its default JSONStorage (whole-file rewrite per write)."""

    name = "stock TinyDB + JSONStorage"

    def setup(self, d: str, rows: int) -> None:
        from tinydb import TinyDB

        path = os.path.join(d, "db.json")
        with open(path, "w") as fh:
            json.dump({"_default": {str(i + 1): queue_doc(i) for i in range(rows)}}, fh)
        self.db = TinyDB(path)
        self.table = self.db.table("_default")
        self.lock = threading.Lock()  # TinyDB is not thread-safe
        self.n = rows

    def insert(self, t, k):
        with self.lock:
            self.table.insert(queue_doc(k))

    def update(self, t, k):
        with self.lock:
            self.table.update(
                {"status": "processing", "server_assigned": "10.0.0.7:50051"},
                doc_ids=[random.randint(1, self.n)],
            )

    def teardown(self):
        self.db.close()


class PersistQueueImpl:
    """persist-queue's SQLiteAckQueue (WAL, synchronous=FULL, one fsync per op)."""

    name = "persist-queue SQLiteAckQueue"

    def setup(self, d: str, rows: int) -> None:
        from persistqueue import SQLiteAckQueue

        q = SQLiteAckQueue(d, multithreading=True)
        tname = q._table_name
        del q
        con = sqlite3.connect(os.path.join(d, "data.db"))
        now = time.time()
        con.executemany(
            f"INSERT INTO {tname} (data, timestamp, status) VALUES (?, ?, 1)",
            ((pickle.dumps(queue_doc(i)), now) for i in range(rows)),
        )
        con.commit()
        con.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.q = SQLiteAckQueue(d, multithreading=True)
        self.n = rows

    def insert(self, t, k):
        self.q.put(queue_doc(k))

    def update(self, t, k):
        doc = queue_doc(k)
        doc["status"] = "processing"
        self.q.update(doc, id=random.randint(1, self.n))

    def teardown(self):
        self.q.close() if hasattr(self.q, "close") else None


def measure(impl, rows: int, threads: list[int], runs: int, ops_budget: dict) -> dict:
    """{(op, threads): [ops/s per run]}"""
    results: dict = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="olol-bench-") as d:
            impl.setup(d, rows)
            try:
                for n in threads:
                    for op in ("insert", "update"):
                        total = ops_budget(impl, rows, n)
                        per_thread = max(1, total // n)
                        rate = run_threads(n, per_thread, getattr(impl, op))
                        results.setdefault((op, n), []).append(rate)
            finally:
                impl.teardown()
    return results


def budget(impl, rows, n):
    if isinstance(impl, StockTinyDBImpl):
        return {1_000: 40, 10_000: 6, 50_000: 3}.get(rows, 3) * (1 if n == 1 else n)
    if isinstance(impl, PersistQueueImpl):
        return 800 if n == 1 else 1600
    return 1500 if n == 1 else 4000


def startup_and_checkpoint(rows: int = 50_000) -> dict:
    from olol.store import DatabaseManager

    out = {}
    with tempfile.TemporaryDirectory(prefix="olol-bench-") as d:
        db = DatabaseManager(d, background_checkpoints=False, checkpoint_bytes=1 << 40)
        for start in range(0, rows, 1000):
            db.insert_many("inference_queue", [queue_doc(i) for i in range(start, start + 1000)])
        db.checkpoint()
        ids = [doc.doc_id for doc in db.all("inference_queue")]
        # checkpoint cost while a writer keeps writing: worst write latency during it
        stop = threading.Event()
        lat = []

        def writer():
            while not stop.is_set():
                t0 = time.perf_counter()
                db.update("inference_queue", {"status": "processing"}, random.choice(ids))
                lat.append(time.perf_counter() - t0)

        w = threading.Thread(target=writer, name="bench-ckpt-writer")
        w.start()
        time.sleep(0.2)
        ckpts = [db.checkpoint() for _ in range(3)]
        stop.set()
        w.join(timeout=30)
        out["checkpoint_blocked_ms"] = median([c["writers_blocked_s"] * 1000 for c in ckpts])
        out["checkpoint_total_ms"] = median([c["total_s"] * 1000 for c in ckpts])
        out["max_write_latency_during_checkpoint_ms"] = max(lat) * 1000
        # 50k journal records on top of the 50k-row snapshot, then restart
        db.checkpoint()
        for k in range(rows):
            db.update("inference_queue", {"status": "processing", "priority": k % 5}, ids[k % len(ids)])
        db.close(checkpoint=False)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            again = DatabaseManager(d, background_checkpoints=False)
            times.append(time.perf_counter() - t0)
            replayed = again.recovery.replayed
            again.close(checkpoint=False)
        out["startup_s"] = median(times)
        out["startup_replayed"] = replayed
    return out


def main(quick: bool = False) -> str:
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 50_000]
    threads = [1, 16] if quick else [1, 4, 16]
    runs = 3
    fs_before = fsync_rate(1.0)
    impls = [StockTinyDBImpl(), OlolImpl(), PersistQueueImpl()]
    res = {}
    for rows in sizes:
        for impl in impls:
            res[(impl.name, rows)] = measure(impl, rows, threads, runs, budget)
            print(f"  done {impl.name} at {rows} rows", flush=True)
    fs_after = fsync_rate(1.0)
    extra = startup_and_checkpoint(50_000 if not quick else 10_000)

    lines = ["## Store: durable writes (ops/s, median of 3 runs)", ""]
    lines.append(
        f"Disk during the run: {fs_before:,.0f} fsyncs/s before, {fs_after:,.0f} after "
        "(1 KB append + fdatasync)."
    )
    lines.append("")
    headers = ["implementation", "op", "threads"] + [f"{r:,} rows" for r in sizes]
    rows_out = []
    for impl in impls:
        for op in ("insert", "update"):
            for n in threads:
                rates = [median(res[(impl.name, r)][(op, n)]) for r in sizes]
                rows_out.append([impl.name, op, n] + [fmt(x, 1 if x < 10 else 0) for x in rates])
    lines.append(table(headers, rows_out))
    lines.append("")

    def m(impl_name, rows, op, n):
        return median(res[(impl_name, rows)][(op, n)])

    olol, stock, pq = impls[1].name, impls[0].name, impls[2].name
    checks = []
    for op in ("insert", "update"):
        worst = min(m(olol, r, op, 1) for r in sizes)
        checks.append((f"{op}, 1 thread, slowest size >= 1,000 ops/s", f"{worst:,.0f}", worst >= 1000))
    if 10_000 in sizes:
        for op in ("insert", "update"):
            ratio = m(olol, 10_000, op, 1) / m(stock, 10_000, op, 1)
            checks.append((f"{op}, 1 thread, 10k rows: >= 100x stock TinyDB", f"{ratio:,.0f}x", ratio >= 100))
    pq_best = max(m(pq, r, "insert", n) for r in sizes for n in (1, 16))
    for op in ("insert", "update"):
        worst16 = min(m(olol, r, op, 16) for r in sizes)
        checks.append((f"{op}, 16 threads, slowest size >= 5,000 ops/s", f"{worst16:,.0f}", worst16 >= 5000))
        ratio = worst16 / pq_best
        checks.append(
            (f"{op}, 16 threads >= 1.5x persist-queue's best put ({pq_best:,.0f}/s)", f"{ratio:.2f}x", ratio >= 1.5)
        )
    big = sizes[-1]
    for op in ("insert", "update"):
        ratio = m(olol, big, op, 1) / m(olol, 1_000, op, 1)
        checks.append((f"{op}, flat cost: {big:,}-row rate / 1k-row rate >= 0.7", f"{ratio:.2f}", ratio >= 0.7))
    n_rows = 50_000 if not quick else 10_000
    checks.append(
        (f"start-up, {n_rows:,}-row snapshot + {extra['startup_replayed']:,}-record journal < 1.5 s",
         f"{extra['startup_s']:.2f} s", extra["startup_s"] < 1.5)
    )
    checks.append(
        (f"checkpoint of {n_rows:,} rows blocks writers < 150 ms",
         f"{extra['checkpoint_blocked_ms']:.1f} ms (worst write during it "
         f"{extra['max_write_latency_during_checkpoint_ms']:.1f} ms; checkpoint total "
         f"{extra['checkpoint_total_ms']:.0f} ms)",
         extra["checkpoint_blocked_ms"] < 150 and extra["max_write_latency_during_checkpoint_ms"] < 150)
    )
    lines.append(bars_table(checks))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

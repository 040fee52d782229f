"""What metrics and the request log add to one request, and what a scrape costs:
``python -m tests.bench metrics``.

Per request the proxy runs the metrics' finish listener (a counter, up to four
histograms and the token counters), the HTTP answer counter (an ``after_request``
hook) and, when on, the request log line. Each is timed alone in a tight loop on
realistic inputs, steady state (labelled children already cached), best of several
runs. A scrape is timed with 1,000 pending requests and 16 nodes.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
from typing import Any

from prometheus_client import generate_latest

from olol.cluster import ClusterManager
from olol.context import ProxyConfig, ProxyContext
from olol.hub import ResponseHub
from olol.metrics import ProxyMetrics, request_usage
from olol.queue import QueueManager
from olol.request_log import RequestLog
from olol.server.app import create_app
from olol.store import DatabaseManager


class _Client:
    def close(self) -> None:
        pass


def _best(fn, n: int, runs: int) -> float:
    """Best per-call time in microseconds over ``runs`` runs of ``n`` calls."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return min(out)


def _status(i: int) -> dict:
    return {"ollama": {"reachable": True, "models": [{"name": f"m{j}:1b"} for j in range(8)],
                       "loaded": [{"name": f"m{i % 8}:1b"}]},
            "agent": {"parallel": 4}}


def main(quick: bool = False) -> str:
    n = 20_000 if quick else 100_000
    runs = 3 if quick else 7
    db = DatabaseManager.memory()
    queue = QueueManager(db, max_depth=100_000, max_depth_per_model=100_000)
    cluster = ClusterManager(db, client_factory=lambda a: _Client())
    for i in range(16):
        cluster.add_node(f"10.0.0.{i}:50051")
        cluster.record_poll(f"10.0.0.{i}:50051", _status(i), 1.0)
    metrics = ProxyMetrics(queue=queue, cluster=cluster, db=db, ready=lambda: True)
    record: dict[str, Any] = {
        "id": "0" * 32, "kind": "sync", "api": "ollama", "endpoint": "chat",
        "model": "m1:1b", "model_key": "m1:1b", "status": "completed",
        "server_assigned": "10.0.0.3:50051", "enqueued_ts": 1000.0, "started_ts": 1000.002,
        "completed_ts": 1001.5, "attempts": 1, "key_id": None,
        "usage": request_usage({"prompt_eval_count": 26, "eval_count": 118,
                                "eval_duration": 1_400_000_000, "load_duration": 2_000_000},
                               first_token_ts=1000.04, cold=False),
    }
    bare = {k: v for k, v in record.items() if k != "usage"}
    metrics.request_finished(record)  # warm the caches
    finished = _best(lambda: metrics.request_finished(record), n, runs)
    finished_bare = _best(lambda: metrics.request_finished(bare), n, runs)
    metrics.http_request("/api/chat", "POST", 200)
    http = _best(lambda: metrics.http_request("/api/chat", "POST", 200), n, runs)

    app = create_app(ProxyContext(config=ProxyConfig(), db=db, queue=queue,
                                  hub=ResponseHub(), cluster=cluster, metrics=metrics))
    with app.test_request_context("/api/chat", method="POST") as rc:
        rc.request.url_rule, _ = rc.url_adapter.match(return_rule=True)
        resp = app.response_class("{}")
        [count] = [f for f in app.after_request_funcs[None] if f.__name__ == "count"]
        hook = _best(lambda: count(resp), n, runs)

    logger = logging.getLogger("olol.bench.requests")
    logger.propagate = False
    sink = logging.StreamHandler(io.StringIO())
    sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(sink)
    logger.setLevel(logging.INFO)
    results = {}
    for fmt in ("text", "json"):
        log = RequestLog(fmt, logger=logger)

        def one(log: RequestLog = log) -> None:
            sink.stream.seek(0)
            sink.stream.truncate()
            log(record)

        results[fmt] = _best(one, n // 4, runs)
    logger.setLevel(logging.WARNING)
    quiet = _best(lambda: RequestLog("text", logger=logger)(record), n, runs)

    for i in range(1000):
        queue.enqueue({"endpoint": "chat", "model": f"m{i % 8}:1b", "body": {},
                       "priority": i % 3})
    scrape_ms = statistics.median(
        _best(lambda: generate_latest(metrics.registry), 20, 1) / 1000 for _ in range(5))
    size = len(generate_latest(metrics.registry))
    db.close()
    total = finished + hook
    return "\n".join([
        "# Metrics and request log: cost per request",
        "",
        "Each figure is the best of several runs of a tight loop, steady state "
        "(`python -m tests.bench metrics`).",
        "",
        "| what | per request |",
        "|---|---|",
        f"| finish listener, with the dispatcher's usage (a counter, 4 histograms, 4 counters) "
        f"| {finished:.1f} µs |",
        f"| finish listener, without usage (a counter, 2 histograms) | {finished_bare:.1f} µs |",
        f"| HTTP answer counter (`after_request` hook, Flask context included) "
        f"| {hook:.1f} µs |",
        f"| of which the counter itself | {http:.1f} µs |",
        f"| **metrics, total** | **{total:.1f} µs** |",
        f"| request log line, text, formatted and written | {results['text']:.1f} µs |",
        f"| request log line, JSON, formatted and written | {results['json']:.1f} µs |",
        f"| request log with its logger above INFO | {quiet:.2f} µs |",
        "",
        f"A scrape with 16 nodes and 1,000 pending requests takes {scrape_ms:.1f} ms "
        f"({size / 1024:.0f} KiB of text); it runs on the scraping HTTP thread, not on "
        "any request's path.",
    ])


if __name__ == "__main__":
    print(main())

"""What the dashboard costs with a large cluster: ``python -m tests.bench ui``.

200 nodes and 50 models, as the nodes' status replies would describe them (each node
holds 12 of the models, has 3 loaded and reports a GPU), 500 queued requests and an
hour of finished requests in the traffic ring. Timed, best of several runs: building
each view's state (what ``/olol/ui/api/state`` answers), rendering each view's live
fragment (what the page fetches every 2 s) and the whole page; the weight of each page
with its two static files. When chromium is installed, the browser's own update (the
fetch of the fragment and its swap into the page, ``ui.js``) is measured too.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from olol.cluster import ClusterManager
from olol.context import ProxyConfig, ProxyContext
from olol.hub import ResponseHub
from olol.queue import QueueManager
from olol.registry import ModelRegistry
from olol.server.app import create_app
from olol.store import DatabaseManager
from olol.traffic import TrafficRecorder
from olol.ui.state import BUILDERS, VIEWS

NODES, MODELS, HELD, LOADED = 200, 50, 12, 3
GIB = 1024**3


class _Client:
    def close(self) -> None:
        pass


def _status(i: int) -> dict:
    held = [(i * 7 + j) % MODELS for j in range(HELD)]
    models = [{"name": f"model{m}:7b", "size": (1 + m % 8) * GIB, "digest": f"sha256:{m:064x}",
               "details": {"family": "llama", "parameter_size": "7B",
                           "quantization_level": "Q4_K_M"}} for m in held]
    return {
        "ollama": {"reachable": True, "models": models,
                   "loaded": [{"name": models[j]["name"], "size": models[j]["size"],
                               "size_vram": models[j]["size"]} for j in range(LOADED)]},
        "agent": {"parallel": 4, "in_flight_total": i % 5},
        "cpu": {"total_percent": float(i % 100)},
        "memory": {"total_bytes": 128 * GIB, "available_bytes": (40 + i % 60) * GIB},
        "gpu": {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
                          "memory_total_bytes": 80 * GIB, "memory_used_bytes": (i % 80) * GIB,
                          "memory_free_bytes": (80 - i % 80) * GIB,
                          "gpu_utilization_percent": i % 100, "temperature_c": 40 + i % 40}]},
        "disk": {"total_bytes": 2000 * GIB, "free_bytes": 900 * GIB},
    }


def build_ctx() -> ProxyContext:
    # the copies appeared a month ago: the optimiser has idle ones to propose removing
    now_ts = [time.time() - 30 * 86400]

    def clock() -> float:
        return now_ts[0]

    db = DatabaseManager.memory(clock=clock)
    queue = QueueManager(db, clock=clock, max_depth=100_000, max_depth_per_model=100_000)
    queue.recover()
    cluster = ClusterManager(db, clock=clock, client_factory=lambda a: _Client())
    for i in range(NODES):
        address = f"10.0.{i // 250}.{i % 250 + 1}:50051"
        cluster.add_node(address)
        cluster.record_poll(address, _status(i), 2.0 + i % 7)
    registry = ModelRegistry(cluster, db, clock=clock)
    registry.synchronize_models(refresh=False)
    now_ts[0] = time.time()
    for n in range(500):
        queue.enqueue({"kind": "sync", "api": "ollama", "endpoint": "chat",
                       "model": f"model{n % MODELS}:7b", "priority": n % 3, "body": {}},
                      wake=False)
    traffic = TrafficRecorder(clock=clock)
    now = clock()
    for k in range(3600):
        ts = now - 3600 + k
        traffic.request_finished({
            "id": f"r{k}", "model": f"model{k % MODELS}:7b", "status": "completed",
            "enqueued_ts": ts - 1.2, "started_ts": ts - 1.1, "completed_ts": ts,
            "usage": {"node": "10.0.0.1:50051", "first_token_ts": ts - 1.0,
                      "completion_tokens": 120, "eval_s": 1.0}})
    return ProxyContext(config=ProxyConfig(), db=db, queue=queue, hub=ResponseHub(),
                        cluster=cluster, registry=registry, traffic=traffic, clock=clock)


def _best_ms(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def _browser_update_ms(app: Any, view: str, updates: int) -> float | None:
    """Median of the page's own update time (fetch + swap) in headless Chromium."""
    from tests.ui import browser

    if browser.missing():
        return None
    import waitress

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="bench-ui-http", daemon=True)
    thread.start()
    driver = browser.start_browser()
    try:
        driver.get(f"http://127.0.0.1:{server.effective_port}/olol/ui/{view}")
        seen: list[float] = []
        deadline = time.monotonic() + 2.5 * updates + 20
        last = None
        while len(seen) < updates and time.monotonic() < deadline:
            count = driver.execute_script("return document.body.dataset.updates")
            if count is not None and count != last:
                last = count
                seen.append(float(driver.execute_script(
                    "return document.body.dataset.updateMs")))
            time.sleep(0.1)
        return sorted(seen)[len(seen) // 2] if seen else None
    finally:
        driver.quit()
        server.close()
        thread.join(timeout=5)


def main(quick: bool = False) -> str:
    runs = 3 if quick else 10
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ctx = build_ctx()
    setup_s = time.perf_counter() - t0
    app = create_app(ctx)
    client = app.test_client()
    rows = []
    for view in VIEWS:
        state_ms = _best_ms(lambda v=view: BUILDERS[v](ctx), runs)
        frag_ms = _best_ms(lambda v=view: client.get(f"/olol/ui/{v}?fragment=1").data, runs)
        page = client.get(f"/olol/ui/{view}")
        weight = len(page.data)
        for path in re.findall(r'(?:href|src)="(/olol/ui/static/[^"]+)"', page.text):
            weight += len(client.get(path).data)
        fragment = len(client.get(f"/olol/ui/{view}?fragment=1").data)
        rows.append((view, state_ms, frag_ms, fragment, weight))
    all_ms = _best_ms(lambda: client.get("/olol/ui/api/state").data, runs)
    state_kb = len(client.get("/olol/ui/api/state").data) / 1024
    out = [
        "# Dashboard with 200 nodes and 50 models",
        "",
        f"{NODES} nodes (each: {HELD} of the {MODELS} models, {LOADED} loaded, one GPU), "
        "500 queued requests, 3,600 finished requests in the traffic ring "
        f"(set up in {setup_s:.1f} s). Best of {runs} runs, one thread, in process "
        "(Flask's test client: no socket).",
        "",
        "| view | state built (ms) | live fragment rendered (ms) | fragment (KB) "
        "| page + assets (KB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for view, state_ms, frag_ms, fragment, weight in rows:
        out.append(f"| {view} | {state_ms:.1f} | {frag_ms:.1f} | {fragment / 1024:.1f} "
                   f"| {weight / 1024:.1f} |")
    out += ["", f"`GET /olol/ui/api/state` (every view): {all_ms:.1f} ms, {state_kb:.0f} KB.", ""]
    updates = {}
    for view in ("nodes", "models"):
        updates[view] = _browser_update_ms(app, view, 3 if quick else 6)
    if any(v is not None for v in updates.values()):
        out.append("Browser update (headless Chromium; `ui.js`: fetch of the fragment over "
                   "loopback HTTP, then its swap into the page), median: "
                   + ", ".join(f"{v} {ms:.0f} ms" for v, ms in updates.items() if ms is not None)
                   + ".")
    else:
        out.append("Browser update: not measured (chromium not installed).")
    out += ["", "2 CPUs; load average before " + " / ".join(f"{x:.2f}" for x in load_before)
            + ", after " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
            + " (1 / 5 / 15 min)."]
    ctx.registry.close()
    ctx.db.close()
    return "\n".join(out)

"""Soak: does the proxy's memory and data folder stay flat under a long mixed load?

``python -m tests.bench soak [--quick]`` (env ``OLOL_SOAK_REQUESTS``, default 100,000;
``OLOL_BENCH_BASELINE``, default ``1c3beb0``, the last commit before bodies left the
store; ``OLOL_SOAK_BASELINE_REQUESTS``, default 3,000: the baseline grows by ~0.3 MB a
request, so a long baseline run would take the machine's memory).

Real processes: one simulator (instant answers, 64 slots), one agent, one proxy with a
data folder on disk. 8 client threads send generate, chat and embed requests (a quarter
of generate/chat streamed) whose bodies are padded to sizes drawn log-uniformly from
1 KB to 1 MB. The proxy's RSS (``/proc/<pid>/status``) and the data folder's size are
sampled after the first 1,000 requests (the reference point: caches and pools are warm)
and then every 1,000. Bar (issue 9 item 5): at the end RSS within 50 MB and the data
folder within 20 MB of the reference. The same load, shorter, runs against the baseline
in the same run.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.bench.common import table
from tests.bench.procs import export_tree, start_proxy, start_sim, start_worker

MIN_BODY, MAX_BODY = 1_000, 1_000_000
THREADS = 8
REFERENCE_AT = 1_000
RSS_BAR_MB, DISK_BAR_MB = 50.0, 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / (1 << 20)


def body_for(i: int, rng: random.Random) -> tuple[str, dict, bool]:
    size = int(math.exp(rng.uniform(math.log(MIN_BODY), math.log(MAX_BODY))))
    pad = "w" * size
    kind = i % 3
    if kind == 0:
        stream = rng.random() < 0.25
        return "/api/generate", {"model": "llama3.2:1b", "prompt": pad, "stream": stream,
                                 "options": {"num_predict": 8}}, stream
    if kind == 1:
        stream = rng.random() < 0.25
        return "/api/chat", {"model": "llama3.2:1b", "stream": stream,
                             "messages": [{"role": "user", "content": pad}],
                             "options": {"num_predict": 8}}, stream
    return "/api/embed", {"model": "nomic-embed-text", "input": pad}, False


def soak(root: Path | None, total: int, label: str) -> dict:
    sim, sim_url = start_sim("--parallel", "64", "--max-queue", "4096", root=root)
    worker, node = start_worker(sim_url, root=root)
    data = tempfile.mkdtemp(prefix="olol-soak-")
    proxy, url = start_proxy([node], data, root=root)
    counter = iter(range(total))
    lock = threading.Lock()
    done = [0]
    failures: dict[int, int] = {}
    samples: list[tuple[int, float, float, float]] = []  # (done, s, rss, disk)
    t0 = time.monotonic()

    def sample() -> None:
        samples.append((done[0], time.monotonic() - t0, rss_mb(proxy.pid), dir_mb(data)))

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            path, body, stream = body_for(i, rng)
            try:
                r = session.post(url + path, json=body, stream=stream, timeout=120)
                for _ in r.iter_content(65536):
                    pass
                status = r.status_code
            except requests.RequestException:
                status = -1
            with lock:
                done[0] += 1
                if status != 200:
                    failures[status] = failures.get(status, 0) + 1
                if done[0] == REFERENCE_AT or done[0] % 1_000 == 0 or done[0] == total:
                    sample()

    try:
        threads = [threading.Thread(target=client, args=(k,), name=f"soak-{k}")
                   for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    finally:
        proxy.stop()
        worker.stop()
        sim.stop()
        shutil.rmtree(data, ignore_errors=True)
    ref = next((s for s in samples if s[0] >= REFERENCE_AT), samples[0])
    end = samples[-1]
    return {
        "label": label, "requests": total, "failed": failures, "seconds": elapsed,
        "rss_ref": ref[2], "rss_end": end[2], "rss_max": max(s[2] for s in samples),
        "disk_ref": ref[3], "disk_end": end[3], "disk_max": max(s[3] for s in samples),
        "samples": samples,
    }


def main(quick: bool = False) -> str:
    total = int(os.environ.get("OLOL_SOAK_REQUESTS", 5_000 if quick else 100_000))
    base_total = min(total, int(os.environ.get("OLOL_SOAK_BASELINE_REQUESTS", 2_000 if quick
                                               else 3_000)))
    rev = os.environ.get("OLOL_BENCH_BASELINE", "1c3beb0")
    load_before = os.getloadavg()
    results = [soak(None, total, "this tree")]
    if base_total > 0:  # 0: no baseline (experiments)
        tree = export_tree(rev)
        try:
            results.append(soak(tree, base_total, f"baseline {rev}"))
        finally:
            shutil.rmtree(tree, ignore_errors=True)
    load_after = os.getloadavg()
    rows = []
    for r in results:
        failed = sum(r["failed"].values())
        rows.append([
            r["label"], f"{r['requests']:,}", f"{failed} {dict(r['failed']) or ''}".strip(),
            f"{r['requests'] / r['seconds']:.0f}",
            f"{r['rss_ref']:.0f}", f"{r['rss_end']:.0f}", f"{r['rss_end'] - r['rss_ref']:+.0f}",
            f"{r['rss_max']:.0f}",
            f"{r['disk_ref']:.1f}", f"{r['disk_end']:.1f}", f"{r['disk_end'] - r['disk_ref']:+.1f}",
            f"{r['disk_max']:.1f}",
        ])
    cur = results[0]
    rss_ok = cur["rss_end"] - cur["rss_ref"] <= RSS_BAR_MB
    disk_ok = cur["disk_end"] - cur["disk_ref"] <= DISK_BAR_MB
    curve = [[f"{d:,}", f"{s:.0f}", f"{rss:.0f}", f"{disk:.1f}"]
             for d, s, rss, disk in cur["samples"][:: max(1, len(cur["samples"]) // 12)]]
    return "\n".join([
        "# Soak: memory and data folder under a long mixed load",
        "",
        f"`python -m tests.bench soak` — {THREADS} client threads; generate, chat, embed; "
        f"bodies log-uniform {MIN_BODY:,}–{MAX_BODY:,} bytes; a quarter of generate/chat "
        f"streamed; one simulator (instant), one agent, one proxy with a data folder on disk. "
        f"Reference point: after the first {REFERENCE_AT:,} requests. "
        f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} CPUs).",
        "",
        table(["run", "requests", "failed", "req/s", "RSS ref MB", "RSS end MB", "RSS Δ",
               "RSS max", "data ref MB", "data end MB", "data Δ", "data max"], rows),
        "",
        f"Bars for this tree: RSS Δ ≤ {RSS_BAR_MB:.0f} MB: "
        f"{'met' if rss_ok else 'NOT met'}; data folder Δ ≤ {DISK_BAR_MB:.0f} MB: "
        f"{'met' if disk_ok else 'NOT met'}.",
        "",
        "This tree over time:",
        "",
        table(["requests", "s", "RSS MB", "data MB"], curve),
    ])

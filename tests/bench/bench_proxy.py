"""Full-path benchmark: client -> olol proxy -> agent -> simulator, vs the simulator direct.

Every part runs as its own process (``olol sim``, ``olol worker``, ``olol proxy``);
this process is the load generator. Side by side in one run:

* added latency, non-streamed chat, concurrency 1 (p50/p99), and added time to
  first chunk for streamed chat;
* throughput at concurrency 64 with one agent, streamed and not, with errors;
* the mixed workload: 4 nodes that hold one model at a time and take 2 s to load
  one, 4 models requested at random, concurrency 8 — olol's ``smart`` strategy
  vs its ``round-robin`` baseline: requests/s and model loads.

Run: ``python -m tests.bench proxy`` (``--quick`` for a short run).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time

import requests

from tests.bench.common import bars_table, fmt, pct, table
from tests.bench.procs import start_proxy, start_sim, start_worker

MODELS4 = ["llama3.2:1b", "qwen2.5:0.5b", "gemma3:1b", "mistral:latest"]


def chat_body(model="llama3.2:1b", stream=False, seed=None, n=8):
    body = {"model": model, "messages": [{"role": "user", "content": "Say something short."}],
            "stream": stream, "options": {"num_predict": n}}
    if seed is not None:
        body["options"]["seed"] = seed
    return body


def one_call(session, base, body):
    t0 = time.perf_counter()
    r = session.post(base + "/api/chat", json=body, timeout=60)
    r.raise_for_status()
    r.json()
    return time.perf_counter() - t0


def ttft(session, base, body):
    t0 = time.perf_counter()
    with session.post(base + "/api/chat", json=body, stream=True, timeout=60) as r:
        r.raise_for_status()
        # chunk_size=None hands over each piece as it arrives (iter_lines would
        # wait for 512 bytes)
        pieces = r.iter_content(chunk_size=None)
        next(pieces)
        first = time.perf_counter() - t0
        for _ in pieces:
            pass
    return first


def latency(direct, proxy, n):
    s1, s2 = requests.Session(), requests.Session()
    for _ in range(30):  # warm up connections and the model
        one_call(s1, direct, chat_body())
        one_call(s2, proxy, chat_body())
    d, p, dt, pt = [], [], [], []
    for i in range(n):
        d.append(one_call(s1, direct, chat_body(seed=i)))
        p.append(one_call(s2, proxy, chat_body(seed=i)))
    for i in range(n):
        dt.append(ttft(s1, direct, chat_body(stream=True, seed=i)))
        pt.append(ttft(s2, proxy, chat_body(stream=True, seed=i)))
    return {
        "direct_p50": pct(d, .5) * 1e3, "proxy_p50": pct(p, .5) * 1e3,
        "direct_p99": pct(d, .99) * 1e3, "proxy_p99": pct(p, .99) * 1e3,
        "added_p50": (pct(p, .5) - pct(d, .5)) * 1e3, "added_p99": (pct(p, .99) - pct(d, .99)) * 1e3,
        "ttft_direct_p50": pct(dt, .5) * 1e3, "ttft_proxy_p50": pct(pt, .5) * 1e3,
        "ttft_added_p50": (pct(pt, .5) - pct(dt, .5)) * 1e3,
    }


def load(base, concurrency, total, stream, model_of=lambda i: "llama3.2:1b", n_predict=8):
    """(requests/s, errors, latencies) for `total` requests over `concurrency` threads."""
    counter = iter(range(total))
    lock = threading.Lock()
    errors: list[str] = []
    lat: list[float] = []

    def work():
        s = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = chat_body(model_of(i), stream=stream, n=n_predict)
            t0 = time.perf_counter()
            try:
                r = s.post(base + "/api/chat", json=body, timeout=120, stream=stream)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")
                    continue
                if stream:
                    last = None
                    for line in r.iter_lines():
                        last = json.loads(line)
                    if not last or "error" in last or not last.get("done"):
                        errors.append(f"bad stream end {last}")
                        continue
                else:
                    r.json()
                lat.append(time.perf_counter() - t0)
            except requests.RequestException as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, name=f"bench-load-{k}") for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - t0
    return (total - len(errors)) / elapsed, errors, lat


def sim_loads(urls):
    return sum(requests.get(u + "/_sim/stats", timeout=5).json().get("model_loads", 0) for u in urls)


def mixed(strategy, seconds, seed=7):
    """4 single-model nodes, 2 s loads, 4 models at random, concurrency 8."""
    procs = []
    tmp = tempfile.mkdtemp(prefix="olol-bench-")
    try:
        sims, workers = [], []
        spec = ",".join(f"{m}[tps=50,ttft=0.02]" for m in MODELS4)
        for _ in range(4):
            p, url = start_sim("--models", spec, "--max-loaded", "1", "--load-time", "2",
                               "--parallel", "4")
            procs.append(p)
            sims.append(url)
        for url in sims:
            p, addr = start_worker(url, "--parallel", "4")
            procs.append(p)
            workers.append(addr)
        p, base = start_proxy(workers, tmp, "--strategy", strategy)
        procs.append(p)
        before = sim_loads(sims)
        rnd = random.Random(seed)
        stop_at = time.monotonic() + seconds
        done, errors = [0], []
        lock = threading.Lock()

        def work():
            s = requests.Session()
            while time.monotonic() < stop_at:
                with lock:
                    model = rnd.choice(MODELS4)
                try:
                    r = s.post(base + "/api/chat", json=chat_body(model, n=30), timeout=120)
                    if r.status_code == 200:
                        with lock:
                            done[0] += 1
                    else:
                        errors.append(r.status_code)
                except requests.RequestException as exc:
                    errors.append(repr(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, name=f"bench-mixed-{k}") for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 180)
        elapsed = time.perf_counter() - t0
        loads = sim_loads(sims) - before
        return {"rps": done[0] / elapsed, "done": done[0], "errors": len(errors), "loads": loads}
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(quick: bool = False) -> str:
    n_lat = 150 if quick else 500
    total = 800 if quick else 3000
    seconds = 12 if quick else 30
    procs = []
    tmp = tempfile.mkdtemp(prefix="olol-bench-")
    try:
        sim, sim_url = start_sim("--parallel", "64", "--max-queue", "4096")
        procs.append(sim)
        worker, addr = start_worker(sim_url, "--parallel", "64")
        procs.append(worker)
        proxy, base = start_proxy([addr], tmp)
        procs.append(proxy)
        lat = latency(sim_url, base, n_lat)
        thr = {}
        for stream in (False, True):
            rps_d, err_d, _ = load(sim_url, 64, total, stream)
            rps_p, err_p, lat_p = load(base, 64, total, stream)
            thr[stream] = (rps_d, len(err_d), rps_p, len(err_p), err_p[:3], pct(lat_p, .5) * 1e3)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    smart = mixed("smart", seconds)
    rr = mixed("round-robin", seconds)

    lines = ["## Full path: proxy + agent + simulator vs the simulator direct", ""]
    lines.append("Each part is its own process on this 2-core machine; the simulator has no delays.")
    lines.append("")
    lines.append(table(["measure", "direct", "via olol", "added"], [
        ["non-streamed chat, concurrency 1, p50 (ms)", fmt(lat["direct_p50"], 2), fmt(lat["proxy_p50"], 2), fmt(lat["added_p50"], 2)],
        ["non-streamed chat, concurrency 1, p99 (ms)", fmt(lat["direct_p99"], 2), fmt(lat["proxy_p99"], 2), fmt(lat["added_p99"], 2)],
        ["streamed chat, time to first chunk, p50 (ms)", fmt(lat["ttft_direct_p50"], 2), fmt(lat["ttft_proxy_p50"], 2), fmt(lat["ttft_added_p50"], 2)],
    ]))
    lines.append("")
    rows = []
    for stream in (False, True):
        rps_d, e_d, rps_p, e_p, samples, p50 = thr[stream]
        rows.append([f"concurrency 64, {'streamed' if stream else 'non-streamed'}", fmt(rps_d), fmt(rps_p),
                     f"{e_p}" + (f" ({samples})" if samples else ""), fmt(p50, 1)])
    lines.append(table(["throughput (req/s)", "direct", "via olol", "errors via olol", "p50 latency via olol (ms)"], rows))
    lines.append("")
    lines.append("### Mixed workload (4 nodes x 1 model slot, 2 s loads, 4 models at random, concurrency 8, "
                 f"{seconds} s each)")
    lines.append("")
    lines.append(table(["strategy", "req/s", "requests", "errors", "model loads"], [
        ["smart (default)", fmt(smart["rps"], 2), smart["done"], smart["errors"], smart["loads"]],
        ["round-robin", fmt(rr["rps"], 2), rr["done"], rr["errors"], rr["loads"]],
    ]))
    lines.append("")
    ratio = smart["rps"] / rr["rps"] if rr["rps"] else float("inf")
    checks = [
        ("added latency p50 <= 3 ms", f"{lat['added_p50']:.2f} ms", lat["added_p50"] <= 3),
        ("added latency p99 <= 15 ms", f"{lat['added_p99']:.2f} ms", lat["added_p99"] <= 15),
        ("added time to first chunk p50 <= 3 ms", f"{lat['ttft_added_p50']:.2f} ms", lat["ttft_added_p50"] <= 3),
        ("concurrency 64 non-streamed >= 300 req/s, 0 errors", f"{thr[False][2]:.0f} req/s, {thr[False][3]} errors",
         thr[False][2] >= 300 and thr[False][3] == 0),
        ("concurrency 64 streamed >= 300 req/s, 0 errors", f"{thr[True][2]:.0f} req/s, {thr[True][3]} errors",
         thr[True][2] >= 300 and thr[True][3] == 0),
        ("mixed: smart >= 4x round-robin", f"{ratio:.1f}x", ratio >= 4),
        ("mixed: model loads <= 2x models (8)", f"{smart['loads']}", smart["loads"] <= 8),
    ]
    lines.append(bars_table(checks))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Placement quality: olol's ``smart`` strategy vs the ideal pinned plan and round-robin.

Real processes (``olol sim`` nodes, ``olol worker`` agents, one ``olol proxy`` per
run); this process sends the same seeded sequence of non-streamed chats to each
run, at a fixed concurrency, and counts model loads on the simulators. Side by
side in one run:

1. **4 models, 1-slot nodes** (4 nodes, one model resident and one call at a time,
   1 s loads, concurrency 8): smart vs round-robin vs the ideal pinned plan (each
   node offers one model only, so every request goes where its model stays).
2. **8 models, 1-slot nodes** (4 nodes: twice what fits; concurrency 16): smart vs
   round-robin, with the longest wait of a request.
3. **4-slot mixed** (4 nodes, 4 slots, one model resident, 2 s loads, 4 models,
   concurrency 8): smart vs round-robin vs the ideal pinned plan.

Bars (issue 11): 1. smart >= 0.9x ideal with <= 8 loads per 300 requests;
2. smart >= 1.8x round-robin with no request waiting over 30 s; 3. smart >= 0.9x ideal.

Run: ``python -m tests.bench placement`` (``--quick``: 120 requests per run, not 300).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time

import requests

from tests.bench.common import bars_table, fmt, table
from tests.bench.procs import start_proxy, start_sim, start_worker

MODELS8 = ["llama3.2:1b", "qwen2.5:0.5b", "gemma3:1b", "mistral:latest",
           "phi3:mini", "tinyllama:latest", "smollm2:135m", "qwen2.5:1.5b"]
TPS, TTFT, TOKENS = 50, 0.02, 20  # 0.42 s per answer


def _body(model: str, seed: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say something short."}],
            "stream": False, "options": {"num_predict": TOKENS, "seed": seed}}


def _sim_loads(urls: list[str]) -> int:
    return sum(requests.get(u + "/_sim/stats", timeout=5).json().get("model_loads", 0)
               for u in urls)


def _wait_ready(base: str, models: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tags = requests.get(base + "/api/tags", timeout=5).json().get("models", [])
            if models <= {m["name"] for m in tags}:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the proxy at {base} never listed {sorted(models)}")


def run(strategy: str, *, models: list[str], total: int, concurrency: int, slots: int,
        load_s: float, pinned: bool, seed: int = 7) -> dict:
    """One run: 4 nodes, ``total`` requests over ``models`` at random (seeded)."""
    procs = []
    tmp = tempfile.mkdtemp(prefix="olol-bench-")
    try:
        sims, agents = [], []
        for i in range(4):
            offered = [models[i]] if pinned else models
            spec = ",".join(f"{m}[tps={TPS},ttft={TTFT}]" for m in offered)
            p, url = start_sim("--models", spec, "--max-loaded", "1", "--load-time", str(load_s),
                               "--parallel", str(slots))
            procs.append(p)
            sims.append(url)
        for url in sims:
            p, addr = start_worker(url, "--parallel", str(slots))
            procs.append(p)
            agents.append(addr)
        p, base = start_proxy(agents, tmp, "--strategy", strategy)
        procs.append(p)
        _wait_ready(base, set(models))
        rnd = random.Random(seed)
        plan = [(i, rnd.choice(models)) for i in range(total)]
        lock = threading.Lock()
        waits: list[float] = []
        errors: list[str] = []
        before = _sim_loads(sims)

        def work() -> None:
            s = requests.Session()
            while True:
                with lock:
                    if not plan:
                        return
                    i, model = plan.pop(0)
                t0 = time.perf_counter()
                try:
                    r = s.post(base + "/api/chat", json=_body(model, i), timeout=300)
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(str(r.status_code))
                except requests.RequestException as exc:
                    ok = False
                    errors.append(repr(exc))
                if ok:
                    with lock:
                        waits.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, name=f"bench-placement-{k}")
                   for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        elapsed = time.perf_counter() - t0
        loads = _sim_loads(sims) - before
        return {"rps": len(waits) / elapsed, "done": len(waits), "errors": len(errors),
                "loads": loads, "max_wait": max(waits) if waits else float("nan"),
                "elapsed": elapsed}
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _rows(results: dict[str, dict]) -> list[list]:
    return [[name, fmt(r["rps"], 2), r["done"], r["errors"], r["loads"], fmt(r["max_wait"], 1)]
            for name, r in results.items()]


def main(quick: bool = False) -> str:
    total = 120 if quick else 300
    load_before = os.getloadavg()
    s1 = {
        "smart": run("smart", models=MODELS8[:4], total=total, concurrency=8, slots=1,
                     load_s=1.0, pinned=False),
        "ideal pinned plan": run("smart", models=MODELS8[:4], total=total, concurrency=8,
                                 slots=1, load_s=1.0, pinned=True),
        "round-robin": run("round-robin", models=MODELS8[:4], total=total, concurrency=8,
                           slots=1, load_s=1.0, pinned=False),
    }
    s2 = {
        "smart": run("smart", models=MODELS8, total=total, concurrency=16, slots=1,
                     load_s=1.0, pinned=False),
        "round-robin": run("round-robin", models=MODELS8, total=total, concurrency=16,
                           slots=1, load_s=1.0, pinned=False),
    }
    s3 = {
        "smart": run("smart", models=MODELS8[:4], total=total, concurrency=8, slots=4,
                     load_s=2.0, pinned=False),
        "ideal pinned plan": run("smart", models=MODELS8[:4], total=total, concurrency=8,
                                 slots=4, load_s=2.0, pinned=True),
        "round-robin": run("round-robin", models=MODELS8[:4], total=total, concurrency=8,
                           slots=4, load_s=2.0, pinned=False),
    }
    head = ["run", "req/s", "requests", "errors", "model loads", "longest wait (s)"]
    lines = ["## Placement: smart vs the ideal pinned plan and round-robin", ""]
    lines.append(f"{total} non-streamed chats per run ({TOKENS} tokens at {TPS} tokens/s), "
                 "models drawn at random (the same sequence in every run); 4 simulated nodes "
                 "that keep one model resident.")
    load_after = os.getloadavg()
    lines.append("")
    lines.append("2 CPUs; load average before " + " / ".join(f"{x:.2f}" for x in load_before)
                 + ", after " + " / ".join(f"{x:.2f}" for x in load_after)
                 + " (1 / 5 / 15 min).")
    lines.append("")
    lines.append("### 1. 4 models, 1-slot nodes, 1 s loads, concurrency 8")
    lines.append("")
    lines.append(table(head, _rows(s1)))
    lines.append("")
    lines.append("### 2. 8 models on 4 1-slot nodes (twice what fits), 1 s loads, concurrency 16")
    lines.append("")
    lines.append(table(head, _rows(s2)))
    lines.append("")
    lines.append("### 3. 4-slot mixed: 4 models, 4-slot nodes, 2 s loads, concurrency 8")
    lines.append("")
    lines.append(table(head, _rows(s3)))
    lines.append("")

    def ratio(a: dict, b: dict) -> float:
        return a["rps"] / b["rps"] if b["rps"] else float("inf")

    r1 = ratio(s1["smart"], s1["ideal pinned plan"])
    loads1 = s1["smart"]["loads"]
    r2 = ratio(s2["smart"], s2["round-robin"])
    r3 = ratio(s3["smart"], s3["ideal pinned plan"])
    errors = sum(r["errors"] for s in (s1, s2, s3) for r in s.values())
    lines.append(bars_table([
        ("1. 4 models: smart >= 0.9x ideal", f"{r1:.2f}x", r1 >= 0.9),
        # the bar is per 300 requests; a --quick run counts its 120 against the same 8
        (f"1. 4 models: <= 8 loads in {total} requests", f"{loads1}", loads1 <= 8),
        ("2. 8 models: smart >= 1.8x round-robin", f"{r2:.2f}x", r2 >= 1.8),
        ("2. 8 models: no wait over 30 s", f"{s2['smart']['max_wait']:.1f} s",
         s2["smart"]["max_wait"] <= 30),
        ("3. 4-slot mixed: smart >= 0.9x ideal", f"{r3:.2f}x", r3 >= 0.9),
        ("no errors", str(errors), errors == 0),
    ]))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

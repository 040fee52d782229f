"""Micro-benchmark: simulator per-request overhead (instant model, keep-alive client).

Run: ``python -m tests.bench sim`` (or ``python -m tests.bench.bench_sim [requests]
[threads]``). Reports numbers only; never asserts on timing.
"""

from __future__ import annotations

import sys
import threading
import time

import requests

from olol.sim import SimConfig, Simulator, parse_models_spec


def _worker(url: str, n: int, stream: bool, errors: list[int]) -> None:
    with requests.Session() as s:
        for _ in range(n):
            r = s.post(url + "/api/generate", timeout=10,
                       json={"model": "m", "prompt": "hi", "stream": stream,
                             "options": {"num_predict": 16}})
            if r.status_code != 200:
                errors.append(r.status_code)


def main(quick: bool = False, total: int = 2000, threads: int = 4) -> str:
    if quick:
        total = 500
    config = SimConfig(models=parse_models_spec("m"), parallel=threads, max_queue=4096)
    lines = ["## Simulator overhead (instant model, keep-alive clients, 16 tokens per answer)", ""]
    with Simulator(config) as sim:
        for stream in (False, True):
            errors: list[int] = []
            per = total // threads
            workers = [threading.Thread(target=_worker, args=(sim.url, per, stream, errors),
                                        name=f"bench-client-{i}") for i in range(threads)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=300)
            elapsed = time.perf_counter() - start
            lines.append(f"- {'streamed' if stream else 'non-streamed'}: {per * threads} requests "
                         f"from {threads} clients, {per * threads / elapsed:,.0f} req/s, "
                         f"errors {len(errors)}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(False, *(int(a) for a in sys.argv[1:3]))

"""Relay overhead of the node agent, measured side by side with the simulator called directly.

Run: ``python -m tests.bench.bench_agent [--quick]``. Bars: added latency of a
non-streamed chat p50 <= 1.5 ms and p99 <= 5 ms; added time to first streamed
chunk p50 <= 1.5 ms; GetCompleteNodeStatus p50 <= 20 ms; paced tokens relayed
one chunk per record, in order.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import time

import orjson

from olol.agent.agent import Agent, AgentConfig
from olol.rpc.client import NodeClient
from olol.sim import SimConfig, Simulator, parse_models_spec

MODEL = "llama3.2:1b"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _sim(tokens_per_second: float = 0.0) -> Simulator:
    cfg = SimConfig(models=parse_models_spec(MODEL), ttft=0.0, tokens_per_second=tokens_per_second,
                    load_time=0.0, parallel=4, max_loaded=3, max_queue=512)
    return Simulator(cfg, host="127.0.0.1", port=0).start()


class _Direct:
    """A keep-alive HTTP client straight to the simulator (the baseline)."""

    def __init__(self, sim: Simulator) -> None:
        host, port = sim.address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def first_and_all(self, path: str, body: bytes) -> tuple[float, list[float], list[bytes]]:
        t0 = time.perf_counter()
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        arrivals, lines = [], []
        while True:
            line = resp.readline()
            if not line:
                break
            arrivals.append(time.perf_counter() - t0)
            lines.append(line.rstrip(b"\n"))
        resp.read()
        return arrivals[0], arrivals, lines

    def close(self) -> None:
        self.conn.close()


def _via_agent(client: NodeClient, body: bytes) -> tuple[float, list[float], list[bytes]]:
    t0 = time.perf_counter()
    arrivals, lines = [], []
    for line in client.chat(body, raw=True):
        arrivals.append(time.perf_counter() - t0)
        lines.append(line)
    return arrivals[0], arrivals, lines


def main(quick: bool = False) -> str:
    n = 150 if quick else 1000
    sim = _sim()
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url)).start()
    client = NodeClient(agent.address, timeout=30)
    direct = _Direct(sim)
    rows = []
    try:
        unary = orjson.dumps({"model": MODEL, "stream": False, "options": {"num_predict": 8},
                              "messages": [{"role": "user", "content": "hi"}]})
        stream = orjson.dumps({"model": MODEL, "stream": True, "options": {"num_predict": 8},
                               "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(20):  # warm-up: model load, connections, code paths
            direct.first_and_all("/api/chat", unary)
            _via_agent(client, unary)
        d_total, a_total, d_first, a_first = [], [], [], []
        for _ in range(n):  # interleaved so that drift hits both sides alike
            d_total.append(direct.first_and_all("/api/chat", unary)[1][-1])
            a_total.append(_via_agent(client, unary)[1][-1])
            d_first.append(direct.first_and_all("/api/chat", stream)[0])
            a_first.append(_via_agent(client, stream)[0])
        ms = 1000.0
        add50 = (_pct(a_total, 0.5) - _pct(d_total, 0.5)) * ms
        add99 = (_pct(a_total, 0.99) - _pct(d_total, 0.99)) * ms
        ttft50 = (_pct(a_first, 0.5) - _pct(d_first, 0.5)) * ms
        rows.append(("non-streamed chat, added p50", f"{add50:.3f} ms", "<= 1.5 ms", add50 <= 1.5))
        rows.append(("non-streamed chat, added p99", f"{add99:.3f} ms", "<= 5 ms", add99 <= 5.0))
        rows.append(("streamed chat, added time to first chunk p50", f"{ttft50:.3f} ms",
                     "<= 1.5 ms", ttft50 <= 1.5))
        st = []
        for _ in range(n // 5 + 10):
            t0 = time.perf_counter()
            client.status()
            st.append(time.perf_counter() - t0)
        s50 = _pct(st, 0.5) * ms
        rows.append(("GetCompleteNodeStatus p50", f"{s50:.2f} ms", "<= 20 ms", s50 <= 20.0))
        baseline = (f"direct p50 {_pct(d_total, .5) * ms:.3f} ms / p99 {_pct(d_total, .99) * ms:.3f}"
                    f" ms; agent p50 {_pct(a_total, .5) * ms:.3f} ms / p99 "
                    f"{_pct(a_total, .99) * ms:.3f} ms; n={n}")
    finally:
        client.close()
        direct.close()
        agent.stop(0)
        sim.stop()

    # Coalescing check: tokens paced at 40/s must arrive one record per chunk.
    paced = _sim(tokens_per_second=40.0)
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=paced.url)).start()
    client = NodeClient(agent.address, timeout=30)
    direct = _Direct(paced)
    try:
        body = orjson.dumps({"model": MODEL, "stream": True,
                             "options": {"num_predict": 20, "seed": 3},
                             "messages": [{"role": "user", "content": "count"}]})
        _, d_arr, d_lines = direct.first_and_all("/api/chat", body)
        _, a_arr, a_lines = _via_agent(client, body)
        gaps = [b - a for a, b in zip(a_arr, a_arr[1:], strict=False)]
        coalesced = sum(1 for g in gaps[:-1] if g < 0.005)  # the final record may follow at once
        same = [orjson.loads(x)["message"] for x in a_lines] == [
            orjson.loads(x)["message"] for x in d_lines]
        ok = coalesced == 0 and same and len(a_lines) == len(d_lines)
        rows.append(("paced stream: records relayed one per chunk, in order",
                     f"{len(a_lines)} chunks, {coalesced} coalesced, median gap "
                     f"{statistics.median(gaps) * 1000:.1f} ms", "0 coalesced", ok))
    finally:
        client.close()
        direct.close()
        agent.stop(0)
        paced.stop()

    out = ["## Node agent relay overhead", "",
           f"Simulator with no delays, one client, loopback. Baseline: {baseline}.", "",
           "| measure | value | bar | ok |", "|---|---|---|---|"]
    out += [f"| {name} | {value} | {bar} | {'yes' if ok else 'NO'} |"
            for name, value, bar, ok in rows]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])

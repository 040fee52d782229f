"""Streaming path: the backends direct vs olol from this tree vs olol from a baseline revision.

Every part runs as its own process on this machine (``olol sim``, ``olol worker``,
``olol proxy``); this process is the load generator, an asyncio HTTP/1.1 client
over raw sockets (keep-alive, chunked transfer encoding, NDJSON lines counted,
only the last line of a response parsed) so that it costs little CPU. Three arms,
side by side in one run, never at the same time:

* ``direct``: the clients call the simulators themselves;
* ``current``: olol (agents + proxy) from the working tree, uncommitted changes
  included (or from ``$OLOL_BENCH_CURRENT=<rev>``, exported like the baseline);
* ``baseline``: olol from ``$OLOL_BENCH_BASELINE`` (default ``ca13e08``), exported
  with ``git archive`` into a temporary folder and run from there with the same
  interpreter.

The simulators are the same processes for all arms of a cell and come from a fixed
revision, ``$OLOL_BENCH_SIM_REV`` (default ``4a15d3b``, the first whose parallel
slots decode in step as Ollama's runner does and send the records of one step
together, from one thread; ``worktree`` for this tree), so that later changes to
the simulator do not move the reference. (``ea6bf96``, the default before, decoded
in step but let each generation's thread send its own record; on this loaded
2-core machine they left up to a few hundred microseconds apart.) Each olol arm gets
fresh agents and a fresh proxy with a new data folder.

Cells:

1. line rate: 4 simulators (4 slots, 200 tokens/s, 100 tokens per answer),
   one agent each, one proxy; 64 clients, streamed and not, for a fixed window
   after a warm-up; requests/s and records/s, errors, ratio to direct.
2. CPU per streamed record: utime+stime of the proxy and the 4 agents over the
   streamed window of cell 1, divided by the records the clients received.
3. zero latency: 1 simulator without delays, 1 agent, 1 proxy; concurrency 1
   added latency (non-streamed, 8 tokens) and added time to first record
   (streamed), p50/p99, each against the simulator direct measured alternately
   in the same run; and concurrency 64 throughput, streamed and not.

A stream counts as a success only if its last record has ``"done": true`` and no
``"error"``. A connection the server closes (``Connection: close``) is opened
again for the next request, and that connect counts in the next request's time.

Run: ``python -m tests.bench stream`` (``--quick`` for a short run, ``--no-write``
to print only).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.bench.common import bars_table, fmt, pct, table
from tests.bench.procs import ROOT, Proc, export_tree, git, start_proxy, start_sim, start_worker

DEFAULT_BASELINE = "ca13e08"
DEFAULT_SIM = "4a15d3b"
MODEL = "llama3.2:1b"
LINE_TOKENS = 100  # tokens per answer in the line-rate cell
LINE_TPS = 200
NODES = 4
CONCURRENCY = 64

# The simulator's answers are 16..48 tokens long and num_predict only shortens
# them; this launcher makes every answer exactly @TOKENS@ tokens before ``olol sim``
# starts.
SIM_LAUNCHER = """\
import sys
import olol.sim.cli as _cli
_build = _cli.build_config
def _build_config(args):
    config = _build(args)
    config.response_tokens = (@TOKENS@, @TOKENS@)
    return config
_cli.build_config = _build_config
from olol.cli import main
sys.exit(main())
"""


# --------------------------------------------------------------------------- client


class Stats:
    """Counters of one load run; only what happens inside the window counts."""

    def __init__(self):
        self.measuring = False
        self.stop = False
        self.ok = 0  # successful requests completed in the window
        self.records = 0  # NDJSON lines received in the window (any request)
        self.errors = 0  # failed requests, whole run (warm-up and drain included)
        self.samples: list[str] = []
        self.latencies: list[float] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(text[:160])


class Lines:
    """Counts NDJSON lines of a body fed in pieces; keeps the last one and the time of the first."""

    __slots__ = ("stats", "count", "tail", "last", "first")

    def __init__(self, stats: Stats | None):
        self.stats = stats
        self.count = 0
        self.tail = b""
        self.last = b""
        self.first = None

    def feed(self, data: bytes) -> None:
        n = data.count(b"\n")
        buf = self.tail + data if self.tail else data
        if not n:
            self.tail = buf
            return
        end = buf.rfind(b"\n")
        self.last = buf[buf.rfind(b"\n", 0, end) + 1:end]
        self.tail = buf[end + 1:]
        if self.first is None:
            self.first = time.perf_counter()
        self.count += n
        if self.stats is not None and self.stats.measuring:
            self.stats.records += n

    def finish(self) -> str | None:
        """None when the body ends with a done record without an error, else why not."""
        if self.tail.strip():
            self.feed(b"\n")
        try:
            rec = json.loads(self.last)
        except ValueError:
            return f"last record is not JSON: {self.last[:100]!r}"
        if not isinstance(rec, dict) or rec.get("done") is not True or "error" in rec:
            return f"bad last record: {self.last[:120]!r}"
        return None


_HEAD, _SIZE, _DATA, _TRAILER, _LENGTH, _EOF = range(6)


class _Response(asyncio.Protocol):
    """The socket side of a Conn: parses responses as bytes arrive, in the event loop's
    callback (no task wakes up per chunk, only once per response)."""

    def __init__(self):
        self.transport = None
        self.buf = bytearray()
        self.state = None  # None: no response expected
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.status = 0
        self.keep = True
        self.left = 0
        self.lines: Lines | None = None
        self.stats: Stats | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.state is not None:
            try:
                self._parse()
            except (ValueError, IndexError) as exc:
                self._fail(exc)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.state == _EOF:
            self._done()
        elif self.state is not None:
            self._fail(exc or ConnectionError("connection closed by the server"))

    def send(self, payload: bytes, stats: Stats | None) -> asyncio.Future:
        self.stats = stats
        self.state = _HEAD
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def _done(self) -> None:
        self.state = None
        if not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.state = None
        self.keep = False
        self.transport.close()
        if not self.waiter.done():
            self.waiter.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _DATA:
                if len(buf) < self.left + 2:
                    return
                self.lines.feed(bytes(buf[:self.left]))
                del buf[:self.left + 2]
                self.state = _SIZE
            elif state == _SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                self.left = int(bytes(buf[:i]).split(b";")[0], 16)
                del buf[:i + 2]
                self.state = _DATA if self.left else _TRAILER
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(buf[:i]).split(b"\r\n")
                del buf[:i + 4]
                self.status = int(head[0].split()[1])
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower()] = v.strip().lower()
                self.keep = headers.get(b"connection") != b"close"
                self.lines = Lines(self.stats if self.status == 200 else None)
                if headers.get(b"transfer-encoding") == b"chunked":
                    self.state = _SIZE
                elif b"content-length" in headers:
                    self.left = int(headers[b"content-length"])
                    self.state = _LENGTH
                else:  # delimited by the end of the connection
                    self.keep = False
                    self.state = _EOF
            elif state == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[:i + 2]
                if i == 0:
                    return self._done()
            elif state == _LENGTH:
                if self.left:
                    if not buf:
                        return
                    take = min(self.left, len(buf))
                    self.lines.feed(bytes(buf[:take]))
                    del buf[:take]
                    self.left -= take
                if not self.left:
                    return self._done()
            elif state == _EOF:
                if buf:
                    self.lines.feed(bytes(buf))
                    buf.clear()
                return
            else:
                return


class Conn:
    """One HTTP/1.1 keep-alive connection; opened again after the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.proto: _Response | None = None

    def close(self) -> None:
        if self.proto is not None:
            self.proto.transport.close()
        self.proto = None

    async def request(self, payload: bytes, stats: Stats | None) -> tuple[str | None, Lines]:
        """Send one request, read the whole response: (None or why it failed, its lines)."""
        if self.proto is None or self.proto.closed:
            _, self.proto = await asyncio.get_running_loop().create_connection(
                _Response, self.host, self.port)
        proto = self.proto
        await proto.send(payload, stats)
        if not proto.keep:
            self.close()
        lines = proto.lines
        if proto.status != 200:
            return f"HTTP {proto.status}: {lines.tail[:100]!r}{lines.last[:100]!r}", lines
        return lines.finish(), lines


def chat_payload(host: str, port: int, stream: bool, tokens: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say something."}],
                       "stream": stream, "options": {"num_predict": tokens}}).encode()
    return (f"POST /api/chat HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition("//")[2].rpartition(":")
    return host, int(port)


async def _load(urls, concurrency, stream, tokens, warmup, seconds, snapshot):
    stats = Stats()

    async def client(k: int) -> None:
        host, port = _addr(urls[k % len(urls)])
        payload = chat_payload(host, port, stream, tokens)
        conn = Conn(host, port)
        try:
            while not stats.stop:
                t0 = time.perf_counter()
                try:
                    err, _ = await conn.request(payload, stats)
                except (OSError, EOFError, ValueError, IndexError) as exc:
                    conn.close()
                    err = repr(exc)
                    await asyncio.sleep(0.05)
                if stats.stop:
                    break
                if err is not None:
                    stats.error(err)
                elif stats.measuring:
                    stats.ok += 1
                    stats.latencies.append(time.perf_counter() - t0)
        finally:
            conn.close()

    tasks = [asyncio.create_task(client(k)) for k in range(concurrency)]
    await asyncio.sleep(warmup)
    before, client0 = snapshot(), time.process_time()
    stats.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    stats.measuring = False
    elapsed = time.perf_counter() - t0
    after, client1 = snapshot(), time.process_time()
    # the window is over: the requests still running are of no use; let the short ones
    # end, then hang up on the others (not counted as errors)
    stats.stop = True
    _, pending = await asyncio.wait(tasks, timeout=0.5)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    return {"rps": stats.ok / elapsed, "records_s": stats.records / elapsed, "records": stats.records,
            "ok": stats.ok, "errors": stats.errors, "samples": stats.samples, "seconds": elapsed,
            "p50_ms": pct(stats.latencies, .5) * 1e3, "cpu": (before, after),
            "client_cpu": (client1 - client0) / elapsed}


def load(urls, concurrency, stream, tokens, warmup, seconds, snapshot=lambda: None) -> dict:
    """Closed loop: `concurrency` clients (spread round-robin over `urls`) for warm-up + window."""
    return asyncio.run(_load(urls, concurrency, stream, tokens, warmup, seconds, snapshot))


async def _latency(urls, n, tokens, warmup):
    conns = [Conn(*_addr(u)) for u in urls]
    payloads = {(i, s): chat_payload(*_addr(u), s, tokens) for i, u in enumerate(urls) for s in (False, True)}
    total = [[] for _ in urls]
    first = [[] for _ in urls]
    errors = [0 for _ in urls]

    async def one(i, stream):
        t0 = time.perf_counter()
        try:
            err, lines = await conns[i].request(payloads[i, stream], None)
        except (OSError, EOFError, ValueError, IndexError) as exc:
            conns[i].close()
            err, lines = repr(exc), None
        if err is not None:
            errors[i] += 1
            return None
        return time.perf_counter() - t0, lines.first - t0

    for _ in range(warmup):
        for i in range(len(urls)):
            await one(i, False)
            await one(i, True)
    for _ in range(n):  # alternate the targets, so that they see the same conditions
        for i in range(len(urls)):
            r = await one(i, False)
            if r:
                total[i].append(r[0])
    for _ in range(n):
        for i in range(len(urls)):
            r = await one(i, True)
            if r:
                first[i].append(r[1])
    for c in conns:
        c.close()
    return [{"p50": pct(total[i], .5) * 1e3, "p99": pct(total[i], .99) * 1e3,
             "first_p50": pct(first[i], .5) * 1e3, "first_p99": pct(first[i], .99) * 1e3,
             "errors": errors[i]} for i in range(len(urls))]


def latency(urls, n, tokens=8, warmup=30) -> list[dict]:
    """Concurrency 1, the targets in turn: non-streamed total time and streamed time to first record (ms)."""
    return asyncio.run(_latency(urls, n, tokens, warmup))


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parallel(fns):
    with ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        results, failure = [], None
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - reported after the others are stopped
                failure = failure or exc
        if failure:
            for r in results:
                r[0].stop()
            raise failure
        return results


class Olol:
    """One olol arm: agents (one per backend) + a proxy with a fresh data folder."""

    def __init__(self, root: Path, backends: list[str], parallel: int):
        self.procs: list[Proc] = []
        self.tmp = tempfile.mkdtemp(prefix="olol-bench-data-")  # fresh per arm
        try:
            agents = _parallel([lambda u=u: start_worker(u, "--parallel", str(parallel), root=root)
                                for u in backends])
            self.agents = [p for p, _ in agents]
            self.procs += self.agents
            self.proxy, self.url = start_proxy([a for _, a in agents], self.tmp, root=root)
            self.procs.append(self.proxy)
            self._wait_served()
        except BaseException:
            self.stop()
            raise

    def _wait_served(self, timeout: float = 30.0) -> None:
        """Until a chat through the proxy succeeds (its nodes are known healthy)."""
        async def probe():
            conn = Conn(*_addr(self.url))
            try:
                return (await conn.request(chat_payload(*_addr(self.url), False, 1), None))[0]
            finally:
                conn.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                err = asyncio.run(asyncio.wait_for(probe(), timeout))
            except (OSError, EOFError, ValueError, IndexError) as exc:  # TimeoutError is an OSError
                err = repr(exc)
            if err is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no chat served through the proxy after {timeout:g} s: {err}")
            time.sleep(0.1)

    def cpu(self) -> tuple[float, float] | None:
        """(proxy, agents) CPU seconds so far; None if a process is gone."""
        try:
            return cpu_seconds(self.proxy.pid), sum(cpu_seconds(a.pid) for a in self.agents)
        except OSError:
            return None

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_sims(count: int, root: Path, *extra: str, tokens: int | None = None) -> list[tuple[Proc, str]]:
    launcher = ["-c", SIM_LAUNCHER.replace("@TOKENS@", str(tokens))] if tokens is not None else None
    return _parallel([lambda: start_sim(*extra, root=root, launcher=launcher) for _ in range(count)])


def check_tokens(url: str, tokens: int) -> None:
    """The simulator answers with exactly `tokens` records plus the final one."""
    async def probe():
        conn = Conn(*_addr(url))
        err, lines = await conn.request(chat_payload(*_addr(url), True, tokens), None)
        conn.close()
        return err, lines
    err, lines = asyncio.run(probe())
    if err or lines.count != tokens + 1 or json.loads(lines.last).get("eval_count") != tokens:
        raise RuntimeError(f"simulator answered {lines.count} records ({err}), wanted {tokens + 1}")


# --------------------------------------------------------------------------- cells


def cell_line_rate(arms, sim_root, warmup, seconds) -> dict:
    sims = start_sims(NODES, sim_root, "--parallel", "4", "--tokens-per-second", str(LINE_TPS),
                      tokens=LINE_TOKENS)
    urls = [u for _, u in sims]
    out = {}
    try:
        for u in urls:
            check_tokens(u, LINE_TOKENS)
        out["direct"] = {s: load(urls, CONCURRENCY, s, LINE_TOKENS, warmup, seconds) for s in (True, False)}
        for name, root in arms:
            try:
                arm = Olol(root, urls, 4)
            except Exception as exc:  # noqa: BLE001 - a tree that does not start is a result
                out[name] = {"failed": str(exc)[:300]}
                continue
            try:
                out[name] = {s: load([arm.url], CONCURRENCY, s, LINE_TOKENS, warmup, seconds,
                                     snapshot=arm.cpu if s else lambda: None) for s in (True, False)}
            finally:
                arm.stop()
    finally:
        for p, _ in sims:
            p.stop()
    return out


def cell_zero(arms, sim_root, n_lat, warmup, seconds) -> dict:
    (sim, url), = start_sims(1, sim_root, "--parallel", "64", "--max-queue", "4096")
    out = {}
    try:
        out["direct"] = {s: load([url], CONCURRENCY, s, 8, warmup, seconds) for s in (True, False)}
        for name, root in arms:
            try:
                arm = Olol(root, [url], 64)
            except Exception as exc:  # noqa: BLE001
                out[name] = {"failed": str(exc)[:300]}
                continue
            try:
                d, p = latency([url, arm.url], n_lat)
                out[name] = {"lat": (d, p)}
                for s in (True, False):
                    out[name][s] = load([arm.url], CONCURRENCY, s, 8, warmup, seconds)
            finally:
                arm.stop()
    finally:
        sim.stop()
    return out


# --------------------------------------------------------------------------- report


def revision(env: str, default: str | None) -> tuple[str, Path | None, str]:
    """(label, root or None for the working tree, short hash) of an arm."""
    rev = os.environ.get(env) or default
    if rev is None:
        head = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain"))
        return f"`{head}`" + (" + uncommitted changes" if dirty else ""), None, head
    short = git("rev-parse", "--short", rev)
    return f"`{short}`", export_tree(rev), short


def main(quick: bool = False) -> str:
    lr_warm, lr_secs = (1.5, 3.0) if quick else (3.0, 12.0)
    z_warm, z_secs, n_lat = (1.0, 2.0, 100) if quick else (1.5, 6.0, 400)
    exports: list[Path] = []
    loads = []
    try:
        cur_label, cur_root, _ = revision("OLOL_BENCH_CURRENT", None)
        if cur_root is not None:
            exports.append(cur_root)
        base_label, base_root, base_short = revision("OLOL_BENCH_BASELINE", DEFAULT_BASELINE)
        exports.append(base_root)
        sim_rev = os.environ.get("OLOL_BENCH_SIM_REV", DEFAULT_SIM)
        if sim_rev == "worktree":
            sim_root, sim_label = ROOT, "the working tree"
        elif sim_rev == base_short:
            sim_root, sim_label = base_root, f"`{base_short}` (the baseline)"
        else:
            sim_root = export_tree(sim_rev)
            exports.append(sim_root)
            sim_label = f"`{git('rev-parse', '--short', sim_rev)}`"
        arms = [("current", cur_root or ROOT), ("baseline", base_root)]

        before = os.getloadavg()[0]
        line = cell_line_rate(arms, sim_root, lr_warm, lr_secs)
        loads.append(("1+2: line rate (and CPU per record)", before, os.getloadavg()[0]))
        before = os.getloadavg()[0]
        zero = cell_zero(arms, sim_root, n_lat, z_warm, z_secs)
        loads.append(("3: zero latency", before, os.getloadavg()[0]))
    finally:
        for d in exports:
            shutil.rmtree(d, ignore_errors=True)

    names = ["direct", "current", "baseline"]
    failed = {n: r["failed"] for cell in (line, zero) for n, r in cell.items() if "failed" in r}

    def get(cell, name, *keys):
        r = cell.get(name)
        if r is None or "failed" in r:
            return None
        for k in keys:
            r = r[k]
        return r

    def ratio(a, b):
        return a / b if a is not None and b else None

    def errs(cell, name, stream):
        r = get(cell, name, stream)
        if r is None:
            return "n/a"
        return str(r["errors"]) + (f" ({r['samples'][0]})" if r["samples"] else "")

    lines = ["## Streaming path: direct vs olol (current) vs olol (baseline)", ""]
    lines.append(f"Compared: current {cur_label}, baseline {base_label}; simulators from {sim_label}. "
                 f"Every part is its own process on this {os.cpu_count()}-core machine, with the load "
                 "generator (asyncio, raw HTTP/1.1); the arms run one after the other.")
    lines.append("")
    for name, why in failed.items():
        lines.append(f"**{name} arm did not start**: {why}")
        lines.append("")
    lines.append(table(["cell", "load avg (1 min) before", "after"],
                       [[c, fmt(b, 2), fmt(a, 2)] for c, b, a in loads]))
    lines.append("")

    # cell 1
    lines.append(f"### 1. Line rate: {NODES} simulators x 4 slots, {LINE_TPS} tokens/s, {LINE_TOKENS} "
                 f"tokens per answer, {NODES} agents, 1 proxy; {CONCURRENCY} clients, "
                 f"{lr_secs:g} s after {lr_warm:g} s of warm-up")
    lines.append("")
    lines.append("Direct: the clients are spread round-robin over the 4 simulators. "
                 f"Ceiling: {NODES * 4} slots x {LINE_TPS} tokens/s = {NODES * 4 * LINE_TPS:,} records/s, "
                 f"about {NODES * 4 * LINE_TPS / LINE_TOKENS:g} req/s. The slots start and end in step, "
                 "so req/s over a short window moves by whole batches of 16; records/s does not.")
    lines.append("")
    rows = []
    for stream in (True, False):
        kind = "streamed" if stream else "non-streamed"
        d = get(line, "direct", stream, "rps")
        rows.append([f"{kind}: req/s"] + [fmt(get(line, n, stream, "rps"), 1) for n in names])
        if stream:
            rows.append([f"{kind}: records/s"] + [fmt(get(line, n, stream, "records_s")) for n in names])
        rows.append([f"{kind}: p50 latency (ms)"] + [fmt(get(line, n, stream, "p50_ms")) for n in names])
        rows.append([f"{kind}: errors"] + [errs(line, n, stream) for n in names])
        rows.append([f"{kind}: load generator CPU (% of a core)"]
                    + [fmt(100 * get(line, n, stream, "client_cpu")) if get(line, n, stream) else "n/a"
                       for n in names])
        rows.append([f"{kind}: req/s vs direct"] + [fmt(ratio(get(line, n, stream, "rps"), d), 2) + "x"
                                                     if get(line, n, stream) else "n/a" for n in names])
    lines.append(table(["measure", "direct", "olol current", "olol baseline"], rows))
    lines.append("")

    # cell 2
    cpu = {}
    for n in ("current", "baseline"):
        r = get(line, n, True)
        if r is None or None in r["cpu"]:
            continue
        (p0, a0), (p1, a1) = r["cpu"]
        recs = r["records"]
        cpu[n] = {"proxy": p1 - p0, "agents": a1 - a0, "records": recs,
                  "proxy_ms": (p1 - p0) * 1e3 / recs if recs else None,
                  "agents_ms": (a1 - a0) * 1e3 / recs if recs else None,
                  "both_ms": (p1 - p0 + a1 - a0) * 1e3 / recs if recs else None}
    lines.append(f"### 2. CPU per streamed record (the streamed window of cell 1, {lr_secs:g} s)")
    lines.append("")
    lines.append("utime+stime from /proc/PID/stat of the proxy and of the 4 agents together.")
    lines.append("")
    rows = []
    for label, key, digits in (("proxy CPU (s)", "proxy", 2), ("agents CPU (s)", "agents", 2),
                               ("records received by the clients", "records", 0),
                               ("proxy ms CPU per record", "proxy_ms", 3),
                               ("agents ms CPU per record", "agents_ms", 3),
                               ("proxy + agents ms CPU per record", "both_ms", 3)):
        rows.append([label] + [fmt(cpu[n][key], digits) if n in cpu else "n/a"
                               for n in ("current", "baseline")])
    lines.append(table(["measure", "olol current", "olol baseline"], rows))
    lines.append("")

    # cell 3
    lines.append("### 3. Zero latency: 1 simulator without delays (64 slots), 1 agent, 1 proxy; 8 tokens")
    lines.append("")
    lines.append(f"Concurrency 1, {n_lat} requests of each kind per arm, the simulator direct called "
                 "in turn with the arm (so each arm has its own direct figures). Added = via olol - direct.")
    lines.append("")
    rows = []
    for label, key in (("non-streamed chat p50 (ms)", "p50"), ("non-streamed chat p99 (ms)", "p99"),
                       ("streamed, time to first record p50 (ms)", "first_p50"),
                       ("streamed, time to first record p99 (ms)", "first_p99")):
        row = [label]
        for n in ("current", "baseline"):
            lat = get(zero, n, "lat")
            if lat is None:
                row += ["n/a"] * 3
            else:
                d, p = lat[0][key], lat[1][key]
                row += [fmt(d, 2), fmt(p, 2), fmt(p - d, 2)]
        rows.append(row)
    row = ["errors"]
    for n in ("current", "baseline"):
        lat = get(zero, n, "lat")
        row += ["n/a"] * 3 if lat is None else [str(lat[0]["errors"]), str(lat[1]["errors"]), ""]
    rows.append(row)
    lines.append(table(["measure", "current: direct", "current: via olol", "current: added",
                        "baseline: direct", "baseline: via olol", "baseline: added"], rows))
    lines.append("")
    lines.append(f"Concurrency {CONCURRENCY}, {z_secs:g} s after {z_warm:g} s of warm-up:")
    lines.append("")
    rows = []
    for stream in (True, False):
        kind = "streamed" if stream else "non-streamed"
        rows.append([f"{kind}: req/s"] + [fmt(get(zero, n, stream, "rps")) for n in names]
                    + [fmt(ratio(get(zero, "current", stream, "rps"), get(zero, "baseline", stream, "rps")), 2)
                       + "x"])
        if stream:
            rows.append([f"{kind}: records/s"] + [fmt(get(zero, n, stream, "records_s")) for n in names] + [""])
        rows.append([f"{kind}: p50 latency (ms)"] + [fmt(get(zero, n, stream, "p50_ms"), 1) for n in names] + [""])
        rows.append([f"{kind}: errors"] + [errs(zero, n, stream) for n in names] + [""])
    lines.append(table(["measure", "direct", "olol current", "olol baseline", "current / baseline"], rows))
    lines.append("")

    # bars (current arm)
    def bar_ratio(value, limit):
        return (f"{value:.2f}x" if value is not None else "n/a"), value is not None and value >= limit

    lr_req = ratio(get(line, "current", True, "rps"), get(line, "direct", True, "rps"))
    lr_rec = ratio(get(line, "current", True, "records_s"), get(line, "direct", True, "records_s"))
    lr_err = get(line, "current", True, "errors")
    both = cpu.get("current", {}).get("both_ms")
    lat = get(zero, "current", "lat")
    added = {k: (lat[1][k] - lat[0][k]) if lat else None for k in ("p50", "p99", "first_p50", "first_p99")}

    def bar_ms(v, limit):
        return (f"{v:.2f} ms" if v is not None else "n/a"), v is not None and v <= limit

    checks = [
        ("line rate streamed >= 0.9x direct (records/s), 0 errors",
         f"{fmt(lr_rec, 2)}x records/s ({fmt(lr_req, 2)}x req/s), {lr_err} errors",
         lr_rec is not None and lr_rec >= 0.9 and lr_err == 0),
        ("CPU per streamed record, proxy + agents <= 0.15 ms",
         f"{both:.3f} ms" if both is not None else "n/a", both is not None and both <= 0.15),
        ("zero latency c=1 non-streamed added p50 <= 1.5 ms", *bar_ms(added["p50"], 1.5)),
        ("zero latency c=1 non-streamed added p99 <= 5 ms", *bar_ms(added["p99"], 5)),
        ("zero latency c=1 time to first record added p50 <= 1.5 ms", *bar_ms(added["first_p50"], 1.5)),
        ("zero latency c=1 time to first record added p99 <= 5 ms", *bar_ms(added["first_p99"], 5)),
        ("zero latency c=64 streamed >= 2x baseline",
         *bar_ratio(ratio(get(zero, "current", True, "rps"), get(zero, "baseline", True, "rps")), 2)),
        ("zero latency c=64 non-streamed >= 2x baseline",
         *bar_ratio(ratio(get(zero, "current", False, "rps"), get(zero, "baseline", False, "rps")), 2)),
    ]
    lines.append(bars_table(checks))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

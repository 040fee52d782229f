"""Sick nodes: olol from this tree vs olol from a baseline revision, side by side.

Three simulated nodes (``olol sim``) serve one model, each behind its own agent
(``olol worker``), behind one proxy (``olol proxy``); every part is its own
process. This process is the load: ``CONCURRENCY`` client threads, each sending
chat requests back to back over a keep-alive connection, streamed and not in
turn. A request succeeds when its answer is complete (``done: true``, no error)
within ``CLIENT_TIMEOUT_S``.

Once the load has warmed up, the node that served the most (where the model is
loaded and the scheduler keeps sending work) falls sick through the simulator's
fault knobs (``POST /_sim/faults``); its status calls keep working, so health
polls see nothing wrong:

* scenario A, ``fail_all``: its Ollama answers 500 to every inference. Measured:
  the share of ``N`` requests that succeed; how many inference calls the sick
  node failed before the proxy ejected it (the proxy's ``GET /olol/v1/nodes``
  and the simulator's ``GET /_sim/faults``, polled every 20 ms); then the node
  heals and the time until it serves a request again (re-admission);
* scenario B, ``hang_all``: it accepts every request and never answers.
  Measured: the share of ``N`` requests that succeed and their p99 latency,
  against the p99 of ``N`` requests on the same cluster before it fell sick.

Scenario C is different: a node *dies* while it streams. Under a steady
background load (``C_CONCURRENCY`` client threads, streamed and not), a probe
asks for a deterministic streamed chat answer (``temperature: 0``, a different
question each time, ``C_TPS`` tokens/s so it lasts a while); after a few
records (2 to 6) the agent of the node that serves it (found with the
simulators' ``GET /_sim/active``) is SIGKILLed, then started again on the same
port, and the next probe waits until the proxy sees all nodes healthy again;
``KILLS`` times. Measured: the share of the cut probe streams that complete
(``done: true``, no error line), whether each completed answer equals the
uninterrupted one (the same request asked of a simulator directly: text and
``eval_count``) and says it was resumed (``olol_resumed``), and the share of the
background requests that succeed.

The proxy runs with a first-record and a stall deadline of ``DEADLINE_S``
(patched into the dispatcher's arguments by a launcher where the revision has
them: the proxy passes its configuration's values, which the patch overrides); other settings are the defaults (health polls every 5 s, 3 attempts,
outlier detection's defaults). The simulators always come from this tree (they
carry the fault knobs); agents and proxy come from the arm's revision:

* ``current``: this working tree (uncommitted changes included);
* ``baseline``: ``$OLOL_BENCH_SICK_BASELINE`` (default ``343599f``, the code
  before outlier detection), exported with ``git archive``.

Run: ``python -m tests.bench sick`` (``--quick``: 200 requests per scenario A
and B, 10 kills in C).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.bench.common import bars_table, fmt, pct, table
from tests.bench.procs import Proc, export_tree, free_port, git, start_sim, start_worker

DEFAULT_BASELINE = "343599f"
MODEL = "llama3.2:1b"
NODES = 3
PARALLEL = 2
TPS = 200
TOKENS = 16
CONCURRENCY = 12
DEADLINE_S = 2.0
CLIENT_TIMEOUT_S = 60.0
HEAL_WAIT_S = 60.0
KILLS = 50
C_TPS = 50
C_CONCURRENCY = 4

PROXY_LAUNCHER = """\
import inspect
import sys
import olol.dispatcher as _d
_init = _d.Dispatcher.__init__
_known = inspect.signature(_init).parameters
_settings = {k: v for k, v in @SETTINGS@.items() if k in _known}
def _patched(self, *args, **kw):
    kw.update(_settings)  # over the proxy's own configuration, where it passes them
    _init(self, *args, **kw)
_d.Dispatcher.__init__ = _patched
from olol.cli import main
sys.exit(main())
"""


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    ok: bool
    seconds: float
    stream: bool
    error: str = ""


def chat(session: requests.Session, url: str, i: int, stream: bool) -> Result:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say something {i}."}],
            "stream": stream, "options": {"num_predict": TOKENS}}
    t0 = time.perf_counter()
    try:
        r = session.post(url + "/api/chat", json=body, stream=stream, timeout=CLIENT_TIMEOUT_S)
        if r.status_code != 200:
            return Result(False, time.perf_counter() - t0, stream, f"HTTP {r.status_code}: "
                          f"{r.text[:120]}")
        if stream:
            last = b""
            for line in r.iter_lines():
                if line:
                    last = line
        else:
            last = r.content
        record = json.loads(last) if last else {}
    except (requests.RequestException, ValueError) as exc:
        return Result(False, time.perf_counter() - t0, stream, repr(exc)[:160])
    seconds = time.perf_counter() - t0
    if not isinstance(record, dict) or record.get("done") is not True or "error" in record:
        return Result(False, seconds, stream, f"bad last record {str(record)[:120]}")
    return Result(True, seconds, stream)


class Load:
    """``CONCURRENCY`` named client threads sending requests back to back.

    :meth:`take` counts the next ``n`` requests *started* after it was called and
    waits until every one of them has finished (each within ``CLIENT_TIMEOUT_S``):
    a request that hangs counts as a failure, it is not left behind. Between
    takes the threads keep going (their results are dropped), so the load is
    steady while the benchmark looks elsewhere (e.g. waits for a healed node).
    """

    def __init__(self, url: str, concurrency: int = CONCURRENCY) -> None:
        self.url = url
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._round = 0  # bumped by each take()
        self._want = 0
        self._started = 0  # requests of the current round started so far
        self._got: list[Result] = []
        self._outside = 0  # requests in flight that the current round does not count
        self._seq = 0
        self._threads = [threading.Thread(target=self._run, name=f"bench-sick-client-{k}",
                                          daemon=True) for k in range(concurrency)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._lock:
                    self._seq += 1
                    i = self._seq
                    counted = self._started < self._want
                    if counted:
                        self._started += 1
                    else:
                        self._outside += 1
                    round_ = self._round
                result = chat(session, self.url, i, stream=bool(i % 2))
                with self._lock:
                    if counted and round_ == self._round:
                        self._got.append(result)
                    elif not counted:
                        self._outside -= 1
                    self._lock.notify_all()

    def take(self, n: int, timeout: float,
             then: Callable[[], None] | None = None) -> list[Result]:
        """The next ``n`` requests; ``then`` runs once the round has begun and the
        requests started before it have finished (a fault armed there hits requests
        of this round, not ones left out of it)."""
        with self._lock:
            self._round += 1
            self._got, self._want, self._started = [], n, 0
            if then is not None:
                settle = time.monotonic() + CLIENT_TIMEOUT_S
                while self._outside and time.monotonic() < settle:
                    self._lock.wait(timeout=0.1)
        if then is not None:
            then()
        with self._lock:
            deadline = time.monotonic() + timeout
            while len(self._got) < n and time.monotonic() < deadline:
                self._lock.wait(timeout=0.5)
            got, self._got, self._want = self._got, [], 0
        return got

    def during(self, work: Callable[[], None]) -> list[Result]:
        """Every request started while ``work()`` runs, each waited for."""
        with self._lock:
            self._round += 1
            self._got, self._want, self._started = [], 10**12, 0
        try:
            work()
        finally:
            with self._lock:
                self._want = self._started  # the ones started from now on are not counted
                deadline = time.monotonic() + CLIENT_TIMEOUT_S + 5
                while len(self._got) < self._want and time.monotonic() < deadline:
                    self._lock.wait(timeout=0.5)
                got, self._got, self._want = self._got, [], 0
        return got

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    sims: list[tuple[Proc, str]]
    workers: list[tuple[Proc, str]]
    proxy: tuple[Proc, str]
    data_dir: str
    extra: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy[1]

    def stop(self) -> None:
        for proc, _ in [self.proxy, *self.workers, *self.sims]:
            proc.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def sim_stats(self, i: int) -> dict:
        return requests.get(self.sims[i][1] + "/_sim/stats", timeout=5).json()

    def fault_counts(self, i: int) -> dict:
        return requests.get(self.sims[i][1] + "/_sim/faults", timeout=5).json()

    def faults(self, i: int, body: dict) -> None:
        requests.post(self.sims[i][1] + "/_sim/faults", json=body, timeout=5).raise_for_status()

    def nodes(self) -> list[dict]:
        return requests.get(self.url + "/olol/v1/nodes", timeout=5).json()["nodes"]

    def served(self, i: int) -> int:
        return int(self.sim_stats(i)["generations_completed"])

    def busiest(self) -> int:
        return max(range(len(self.sims)), key=self.served)

    def serving(self, prompt: str) -> int | None:
        """The node whose simulator is generating for ``prompt`` right now."""
        for i, (_, url) in enumerate(self.sims):
            try:
                active = requests.get(url + "/_sim/active", timeout=5).json()["prompts"]
            except (requests.RequestException, ValueError, KeyError):
                continue
            if any(prompt in p for p in active):
                return i
        return None

    def all_healthy(self) -> bool:
        try:
            return sum(1 for n in self.nodes()
                       if n.get("healthy") and not n.get("suspect")) == len(self.workers)
        except (requests.RequestException, ValueError, KeyError):
            return False


def start_cluster(root: Path | None, tps: int = TPS) -> Cluster:
    sims = [start_sim("--models", MODEL, "--parallel", str(PARALLEL),
                      "--tokens-per-second", str(tps)) for _ in range(NODES)]
    workers = [start_worker(url, "--parallel", str(PARALLEL), root=root) for _, url in sims]
    data_dir = tempfile.mkdtemp(prefix="olol-bench-sick-")
    settings = {"first_record_timeout_s": DEADLINE_S, "stall_timeout_s": DEADLINE_S}
    launcher = ["-c", PROXY_LAUNCHER.replace("@SETTINGS@", repr(settings))]
    port_proxy = _start_proxy([addr for _, addr in workers], data_dir, root, launcher)
    c = Cluster(sims, workers, port_proxy, data_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if sum(1 for n in c.nodes() if n.get("healthy") and not n.get("suspect")) == NODES:
                return c
        except requests.RequestException:
            pass
        time.sleep(0.2)
    c.stop()
    raise RuntimeError("the proxy did not see its nodes healthy within 30 s")


def _start_proxy(nodes: list[str], data_dir: str, root: Path | None,
                 launcher: list[str]) -> tuple[Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["proxy", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir]
    for n in nodes:
        args += ["--node", n]
    return Proc(args, ready_url=url + "/api/version", root=root, launcher=launcher), url


# --------------------------------------------------------------------------- scenarios


class Watch:
    """Polls the proxy's view of one node and the sick simulator's fault counts every
    20 ms on a named thread: when the node was first seen ejected, how many calls it
    had failed by then, and when it was seen in service again."""

    def __init__(self, c: Cluster, sick: int, kind: str) -> None:
        self.c, self.sick, self.kind = c, sick, kind
        self.address = c.workers[sick][1]
        self.ejected_at: float | None = None
        self.failed_at_ejection: int | None = None
        self.ejections_seen = 0
        self._was_ejected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sick-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                node = next((n for n in self.c.nodes() if n["address"] == self.address), {})
                ejected = bool(node.get("ejected"))
                if ejected and not self._was_ejected:
                    self.ejections_seen += 1
                    if self.ejected_at is None:
                        self.ejected_at = time.monotonic()
                        self.failed_at_ejection = self.c.fault_counts(self.sick)[self.kind]
                self._was_ejected = ejected
            except (requests.RequestException, ValueError, KeyError):
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _share(results: list[Result]) -> float:
    return 100.0 * sum(r.ok for r in results) / max(1, len(results))


def _errors(results: list[Result]) -> str:
    seen: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = r.error[:70]
            seen[key] = seen.get(key, 0) + 1
    return "; ".join(f"{n}× {k}" for k, n in list(seen.items())[:2]) or ""


def scenario_a(root: Path | None, n: int) -> dict:
    c = start_cluster(root)
    load = Load(c.url)
    try:
        load.take(max(30, n // 10), timeout=120)  # warm-up: the model loads where it is used
        sick = c.busiest()
        watch = Watch(c, sick, "fail")
        t_sick = time.monotonic()

        def fall_sick() -> None:
            nonlocal t_sick
            c.faults(sick, {"fail_all": True, "status": 500,
                            "error": "llama runner process has terminated"})
            t_sick = time.monotonic()

        results = load.take(n, timeout=n * CLIENT_TIMEOUT_S / CONCURRENCY + 60, then=fall_sick)
        failed_total = c.fault_counts(sick)["fail"]
        served_before = c.served(sick)
        c.faults(sick, {"clear": True})
        t_heal = time.monotonic()
        readmitted = None
        while time.monotonic() - t_heal < HEAL_WAIT_S:
            if c.served(sick) > served_before:
                readmitted = time.monotonic() - t_heal
                break
            time.sleep(0.05)
        watch.stop()
        return {
            "n": len(results), "ok_pct": _share(results), "errors": _errors(results),
            "failed_before_ejection": watch.failed_at_ejection,
            "to_ejection_s": (watch.ejected_at - t_sick) if watch.ejected_at else None,
            "failed_total": failed_total, "ejections": watch.ejections_seen,
            "readmitted_s": readmitted,
        }
    finally:
        load.stop()
        c.stop()


def scenario_b(root: Path | None, n: int) -> dict:
    c = start_cluster(root)
    load = Load(c.url)
    try:
        load.take(max(30, n // 10), timeout=120)
        healthy = load.take(n, timeout=n * CLIENT_TIMEOUT_S / CONCURRENCY + 60)
        sick = c.busiest()
        hung = load.take(n, timeout=n * CLIENT_TIMEOUT_S / CONCURRENCY + 60,
                         then=lambda: c.faults(sick, {"hang_all": True}))
        hits = c.fault_counts(sick)["hang"]
        c.faults(sick, {"clear": True})
        return {
            "n": len(hung), "ok_pct": _share(hung), "errors": _errors(hung),
            "healthy_ok_pct": _share(healthy),
            "healthy_p50": pct([r.seconds for r in healthy], 0.5),
            "healthy_p99": pct([r.seconds for r in healthy], 0.99),
            "p50": pct([r.seconds for r in hung], 0.5),
            "p99": pct([r.seconds for r in hung], 0.99),
            "max": max((r.seconds for r in hung), default=float("nan")),
            "slow": sum(1 for r in hung if not r.ok or r.seconds > pct(
                [x.seconds for x in healthy], 0.99) + DEADLINE_S + 1.0),
            "hung_calls": hits,
        }
    finally:
        load.stop()
        c.stop()


@dataclass
class Probe:
    cut: bool  # its node was killed while it streamed
    done: bool  # the client got done: true and no error line
    same: bool  # the text and eval_count of the uninterrupted answer
    resumed: int  # olol_resumed of the final record
    records: int  # records the client got before the kill
    error: str = ""


def probe_body(k: int) -> dict:
    return {"model": MODEL, "stream": True, "options": {"temperature": 0},
            "messages": [{"role": "user", "content": f"Probe {k}: tell me about rivers."}]}


def _read_probe(url: str, body: dict, seen: list, started: threading.Event) -> None:
    """Stream one probe; ``seen`` gets every record (or an exception)."""
    try:
        with requests.post(url + "/api/chat", json=body, stream=True,
                           timeout=CLIENT_TIMEOUT_S) as r:
            if r.status_code != 200:
                seen.append(RuntimeError(f"HTTP {r.status_code}: {r.text[:120]}"))
                return
            for line in r.iter_lines():
                if line:
                    seen.append(json.loads(line))
                    started.set()
    except (requests.RequestException, ValueError) as exc:
        seen.append(exc)
    finally:
        started.set()


def _kill_and_restart(c: Cluster, i: int, root: Path | None) -> None:
    proc, address = c.workers[i]
    proc.p.kill()  # SIGKILL: no goodbye to the proxy
    proc.p.wait(timeout=10)
    port = int(address.rsplit(":", 1)[1])
    sim_url = c.sims[i][1]
    deadline = time.monotonic() + 30
    while True:  # the port may take a moment to be free again
        try:
            new = Proc(["worker", "--listen", address, "--ollama-url", sim_url,
                        "--parallel", str(PARALLEL)], ready_port=port, root=root)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.workers[i] = (new, address)


def _one_probe(c: Cluster, k: int, root: Path | None) -> Probe:
    body = probe_body(k)
    reference = requests.post(c.sims[k % NODES][1] + "/api/chat", timeout=CLIENT_TIMEOUT_S,
                              json={**body, "stream": False}).json()
    seen: list = []
    started = threading.Event()
    reader = threading.Thread(target=_read_probe, args=(c.url, body, seen, started),
                              name=f"bench-sick-probe-{k}", daemon=True)
    reader.start()
    after = 2 + k % 5
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while len(seen) < after and reader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    node = c.serving(f"Probe {k}:")
    records = len(seen)
    if node is not None:
        _kill_and_restart(c, node, root)
    reader.join(timeout=CLIENT_TIMEOUT_S + 5)
    errors = [x for x in seen if isinstance(x, Exception) or (isinstance(x, dict) and "error" in x)]
    final = seen[-1] if seen and isinstance(seen[-1], dict) else {}
    done = not errors and final.get("done") is True
    text = "".join((x.get("message") or {}).get("content") or "" for x in seen
                   if isinstance(x, dict))
    same = done and text == (reference.get("message") or {}).get("content") and \
        final.get("eval_count") == reference.get("eval_count")
    return Probe(cut=node is not None, done=done, same=same,
                 resumed=int(final.get("olol_resumed") or 0), records=records,
                 error=str(errors[0])[:100] if errors else "")


def scenario_c(root: Path | None, kills: int) -> dict:
    c = start_cluster(root, tps=C_TPS)
    load = Load(c.url, concurrency=C_CONCURRENCY)
    probes: list[Probe] = []
    try:
        load.take(30, timeout=120)  # warm-up: the model loads where it is used

        def kill_mid_stream() -> None:
            k = 0
            while len([p for p in probes if p.cut]) < kills and k < kills * 3:
                deadline = time.monotonic() + HEAL_WAIT_S
                while not c.all_healthy() and time.monotonic() < deadline:
                    time.sleep(0.1)
                probes.append(_one_probe(c, k, root))
                k += 1

        background = load.during(kill_mid_stream)
    finally:
        load.stop()
        c.stop()
    cut = [p for p in probes if p.cut]
    completed = [p for p in cut if p.done]
    seen: dict[str, int] = {}
    for p in cut:
        if not p.done:
            seen[p.error[:70]] = seen.get(p.error[:70], 0) + 1
    return {
        "kills": len(cut), "probes": len(probes),
        "completed_pct": 100.0 * len(completed) / max(1, len(cut)),
        "same": sum(1 for p in completed if p.same), "completed": len(completed),
        "marked": sum(1 for p in completed if p.resumed >= 1),
        "records_before": pct([p.records for p in cut], 0.5) if cut else float("nan"),
        "background_ok_pct": _share(background), "background_n": len(background),
        "errors": "; ".join(f"{n}× {e}" for e, n in list(seen.items())[:2]),
    }


def _arms() -> list[tuple[str, Path | None, Callable[[], None]]]:
    rev = os.environ.get("OLOL_BENCH_SICK_BASELINE", DEFAULT_BASELINE)
    tree = export_tree(rev)
    return [("current", None, lambda: None),
            (f"baseline {git('rev-parse', '--short', rev)}", tree,
             lambda: shutil.rmtree(tree, ignore_errors=True))]


# --------------------------------------------------------------------------- report


def main(quick: bool = False) -> str:
    n = 200 if quick else 1000
    kills = 10 if quick else KILLS
    arms = _arms()
    a: dict[str, dict] = {}
    b: dict[str, dict] = {}
    cc: dict[str, dict] = {}
    load_before = os.getloadavg()
    try:
        for name, root, _ in arms:
            a[name] = scenario_a(root, n)
        for name, root, _ in arms:
            b[name] = scenario_b(root, n)
        load_c = os.getloadavg()
        for name, root, _ in arms:
            cc[name] = scenario_c(root, kills)
    finally:
        for _, _, cleanup in arms:
            cleanup()
    load_after = os.getloadavg()
    names = [name for name, _, _ in arms]
    cur = names[0]

    def s(x, digits=2):
        return fmt(x, digits) if isinstance(x, (int, float)) else "n/a"

    rows_a = [[name, a[name]["n"], f"{a[name]['ok_pct']:.1f} %",
               s(a[name]["failed_before_ejection"], 0), s(a[name]["to_ejection_s"]),
               a[name]["failed_total"], a[name]["ejections"], s(a[name]["readmitted_s"]),
               a[name]["errors"] or "-"] for name in names]
    rows_b = [[name, b[name]["n"], f"{b[name]['ok_pct']:.1f} %",
               s(b[name]["healthy_p50"]), s(b[name]["healthy_p99"]), s(b[name]["p50"]),
               s(b[name]["p99"]), s(b[name]["max"]), b[name]["slow"], b[name]["hung_calls"],
               b[name]["errors"] or "-"] for name in names]
    rows_c = [[name, cc[name]["kills"], f"{cc[name]['completed_pct']:.1f} %",
               f"{cc[name]['same']} / {cc[name]['completed']}",
               f"{cc[name]['marked']} / {cc[name]['completed']}",
               s(cc[name]["records_before"], 0),
               f"{cc[name]['background_ok_pct']:.1f} % of {cc[name]['background_n']}",
               cc[name]["errors"] or "-"] for name in names]
    ra, rb, rc = a[cur], b[cur], cc[cur]
    readmit = ra["readmitted_s"]
    checks = [
        (f"A: ≥ 99 % of {n} requests succeed", f"{ra['ok_pct']:.1f} %", ra["ok_pct"] >= 99.0),
        ("A: the sick node is ejected after ≤ 5 failures",
         s(ra["failed_before_ejection"], 0),
         ra["failed_before_ejection"] is not None and ra["failed_before_ejection"] <= 5),
        ("A: re-admitted ≤ 30 s after healing", f"{s(readmit)} s",
         readmit is not None and readmit <= 30.0),
        (f"B: ≥ 99 % of {n} requests succeed", f"{rb['ok_pct']:.1f} %", rb["ok_pct"] >= 99.0),
        (f"B: p99 ≤ healthy p99 + deadline ({DEADLINE_S:g} s) + 1 s",
         f"{rb['p99']:.2f} s vs {rb['healthy_p99'] + DEADLINE_S + 1:.2f} s",
         rb["p99"] <= rb["healthy_p99"] + DEADLINE_S + 1.0),
        (f"C: ≥ 95 % of the {rc['kills']} streams cut by a SIGKILL complete with done: true",
         f"{rc['completed_pct']:.1f} %", rc["kills"] > 0 and rc["completed_pct"] >= 95.0),
        ("C: every resumed deterministic answer equals the uninterrupted one",
         f"{rc['same']} / {rc['completed']}",
         rc["completed"] > 0 and rc["same"] == rc["completed"]),
    ]
    cores = os.cpu_count()
    return "\n".join([
        "## Sick nodes (`python -m tests.bench sick`)",
        "",
        "Scenarios A and B: sick nodes that stay up; C: nodes that die mid-stream.",
        "",
        f"{NODES} simulated nodes (`olol sim`, {PARALLEL} slots, {TPS} tokens/s, answers of "
        f"{TOKENS} tokens), one agent each, one proxy, {CONCURRENCY} client threads sending "
        f"chat requests back to back, streamed and not in turn; {n} requests per scenario. "
        f"Proxy deadlines (first record, stall): {DEADLINE_S:g} s; everything else the "
        "defaults. The node that served the most during the warm-up falls sick; its status "
        "calls keep working.",
        "",
        f"Machine: {cores} cores; load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} "
        f"before, {', '.join(f'{x:.2f}' for x in load_after)} after (every process of the "
        "bench runs on this machine).",
        "",
        "### A: one node answers 500 to every inference",
        "",
        "\"failed before ejection\": inference calls the sick node had failed when the "
        "proxy was first seen listing it ejected (polled every 20 ms); \"failed in all\": "
        "until it healed (re-admissions on probation included); \"re-admitted\": seconds "
        "from healing until it served a request again.",
        "",
        table(["arm", "requests", "succeeded", "failed before ejection", "to ejection (s)",
               "failed in all", "ejections seen", "re-admitted (s)", "errors"], rows_a),
        "",
        "### B: one node accepts every request and never answers",
        "",
        "Latencies in seconds, whole answer; \"healthy\": the same cluster, same load, before "
        "the node hung. \"late\": requests that failed or took longer than the healthy p99 "
        f"+ {DEADLINE_S:g} s + 1 s. \"hung calls\": requests the hung node accepted (a client "
        f"gives up after {CLIENT_TIMEOUT_S:g} s; the proxy's own limit is 600 s).",
        "",
        table(["arm", "requests", "succeeded", "healthy p50", "healthy p99", "p50", "p99",
               "max", "late", "hung calls", "errors"], rows_b),
        "",
        "### C: a worker SIGKILLed mid-stream",
        "",
        f"The simulators generate {C_TPS} tokens/s here; {C_CONCURRENCY} client threads keep "
        "a background load (chat, streamed and not). A probe asks a deterministic streamed "
        "chat question (`temperature: 0`); after 2 to 6 records the agent of the node "
        "serving it is SIGKILLed, then restarted on the same port; the next probe waits "
        "until the proxy sees all three nodes healthy. \"completed\": the client got "
        "`done: true` and no error line; \"= uninterrupted\": text and `eval_count` equal "
        "to the same request asked of a simulator directly; \"marked\": the final record "
        "has `olol_resumed`; \"records before\": median records the client had when the "
        "kill was sent. Load average when C began: "
        f"{', '.join(f'{x:.2f}' for x in load_c)}.",
        "",
        table(["arm", "streams cut", "completed", "= uninterrupted", "marked",
               "records before", "background load succeeded", "errors"], rows_c),
        "",
        bars_table(checks),
    ])


if __name__ == "__main__":
    print(main(quick=True))

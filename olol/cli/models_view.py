"""What ``olol models`` and ``olol jobs`` print: byte sizes, aligned tables, a model's
detail block, the placement plan, the jobs table, and the live pull progress view.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

BAR_WIDTH = 30
SPEED_WINDOW_S = 10.0  # pull speed is measured over this much of the latest progress


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "-"


def _names(value: Any) -> str:
    if isinstance(value, dict):
        value = sorted(value)
    if isinstance(value, list) and value:
        return ",".join(str(v) for v in value)
    return "-"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    everything = [header, *rows]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
        .rstrip() for r in everything)


def _get(entry: dict, *keys: str) -> Any:
    for key in keys:
        if key in entry:
            return entry[key]
    return None


def model_rows(models: list[dict]) -> str:
    header = ("NAME", "SIZE", "NODES", "LOADED", "PULLING", "STALE", "USES", "LAST USED")
    rows = []
    for m in models:
        rows.append((
            str(_get(m, "name", "model") or "?"),
            human_bytes(_get(m, "size", "size_bytes")),
            _names(_get(m, "nodes", "present", "servers")),
            _names(_get(m, "loaded", "loaded_on")),
            _names(_get(m, "pulling", "being_pulled")),
            _names(_get(m, "stale", "stale_nodes")),
            str(_get(m, "usage_count") or 0),
            str(_get(m, "last_used") or "never"),
        ))
    return table(header, rows)


def model_block(m: dict) -> str:
    lines = [str(_get(m, "name", "model") or "?")]
    for key in sorted(m):
        if key in ("name",):
            continue
        value = m[key]
        if isinstance(value, list | dict):
            value = _names(value) if value else "-"
        elif key.startswith("size") and isinstance(value, int):
            value = f"{human_bytes(value)} ({value} bytes)"
        lines.append(f"  {key:<16} {value}")
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))

class ProgressView:
    """Renders aggregated pull progress: one bar per node in a terminal (redrawn in
    place), or a plain line per status change otherwise."""

    def __init__(self, out: TextIO, tty: bool, clock: Callable[[], float] = time.monotonic):
        self.out, self.tty, self.clock = out, tty, clock
        self.nodes: dict[str, dict[str, Any]] = {}
        self._drawn = 0
        self._last_plain: dict[str, str] = {}

    def feed(self, record: dict) -> None:
        node = record.get("node")
        if not isinstance(node, str) or not node:
            node = "cluster"
        state = self.nodes.setdefault(node, {"status": "", "completed": 0, "total": 0,
                                             "samples": deque(maxlen=64)})
        if isinstance(record.get("status"), str):
            state["status"] = record["status"]
        if isinstance(record.get("total"), int):
            completed = record.get("completed") or 0
            if record["total"] != state["total"] or completed < state["completed"]:
                state["samples"].clear()  # a new layer: its own speed
            state["total"] = record["total"]
            state["completed"] = completed
            state["samples"].append((self.clock(), completed))
        if "error" in record:
            state["status"] = f"error: {record['error']}"
        if self.tty:
            self._draw()
        else:
            self._plain(node, state)

    def _rate(self, state: dict) -> str:
        """`` 12.3 MB/s, 1m05s left`` over the last ~10 s of this layer, or ''."""
        samples = state["samples"]
        now = self.clock()
        while len(samples) > 2 and now - samples[0][0] > SPEED_WINDOW_S:
            samples.popleft()
        if len(samples) < 2 or not state["total"]:
            return ""
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        if t1 <= t0 or c1 <= c0:
            return ""
        speed = (c1 - c0) / (t1 - t0)
        left = max(0, state["total"] - state["completed"]) / speed
        return f", {human_bytes(int(speed))}/s, {_duration(left)} left"

    def _cluster_row(self) -> dict | None:
        """The cluster's row from its nodes' (the proxy's own records say little while
        the nodes pull): bytes summed, how many nodes are done."""
        nodes = {n: st for n, st in self.nodes.items() if n != "cluster"}
        cluster = self.nodes.get("cluster")
        if not nodes or cluster is None:
            return cluster
        status = cluster["status"]
        if status == "success" or status.startswith("error"):
            return cluster
        done = sum(1 for st in nodes.values()
                   if st["status"] in ("success", "node succeeded"))
        total = sum(st["total"] for st in nodes.values())
        completed = sum(min(st["completed"], st["total"]) for st in nodes.values())
        return {"status": f"pulling on {len(nodes)} node(s), {done} done",
                "total": total, "completed": completed, "samples": deque()}

    @staticmethod
    def _percent(state: dict) -> int | None:
        total = state["total"]
        if not total:
            return None
        return min(100, int(100 * (state["completed"] or 0) / total))

    def _plain(self, node: str, state: dict) -> None:
        pct = self._percent(state)
        bucket = "" if pct is None else f" {pct // 10 * 10}%"
        line = f"{node}: {state['status']}{bucket}"
        if self._last_plain.get(node) != line:
            self._last_plain[node] = line
            self.out.write(line + "\n")
            self.out.flush()

    def _draw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}A")
        width = max(len(n) for n in self.nodes)
        for node, state in self.nodes.items():
            if node == "cluster":
                state = self._cluster_row() or state
            pct = self._percent(state)
            if pct is None:
                bar = " " * (BAR_WIDTH + 7)
            else:
                filled = BAR_WIDTH * pct // 100
                bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {pct:3d}%"
            sizes = (f" {human_bytes(state['completed'])}/{human_bytes(state['total'])}"
                     f"{self._rate(state)}" if state["total"] else "")
            self.out.write(f"\x1b[2K{node.ljust(width)}  {bar}  {state['status']}{sizes}\n")
        self._drawn = len(self.nodes)
        self.out.flush()

def plan_lines(plan: dict) -> list[str]:
    actions = plan.get("actions") or []
    if not actions:
        return ["nothing to change"]
    header = ("ACTION", "MODEL", "NODE", "REASON")
    rows = [(str(a.get("action", "?")), str(a.get("model", "?")), str(a.get("node", "?")),
             str(a.get("reason", ""))) for a in actions]
    return table(header, rows).splitlines()

def jobs_table(jobs: list[dict]) -> str:
    header = ("JOB", "EVERY", "LAST RUN", "OUTCOME", "RUNS", "FAILURES", "NEXT RUN")
    rows = []
    for j in jobs:
        outcome = j.get("outcome") or "not run yet"
        if outcome == "error" and j.get("error"):
            outcome = f"error: {j['error']}"
        rows.append((
            str(j.get("id", "?")), f"{j.get('interval_s', 0):g}s",
            str(j.get("last_run") or "-"), outcome[:60], str(j.get("runs", 0)),
            str(j.get("failures", 0)), str(j.get("next_run") or "-"),
        ))
    return table(header, rows)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"

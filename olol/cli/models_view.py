"""What ``olol models`` and ``olol maintenance`` print: byte sizes, aligned tables, a
model's detail block, the placement plan and the jobs table. (A pull's live progress is
``olol.cli.progress``.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


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


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
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


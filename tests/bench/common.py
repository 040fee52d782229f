"""Small shared helpers for the benchmarks."""

from __future__ import annotations

import os
import statistics
import tempfile
import time


def median(values):
    return statistics.median(values)


def pct(values, q):
    """The q-quantile (0..1) of values, nearest rank."""
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(q * (len(data) - 1))))]


def fsync_rate(seconds: float = 1.0, directory: str | None = None) -> float:
    """Appends of 1 KB + fdatasync per second on this disk, right now."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        fd = os.open(os.path.join(d, "probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                os.write(fd, b"x" * 1024)
                os.fdatasync(fd)
                n += 1
            return n / (time.perf_counter() - t0)
        finally:
            os.close(fd)


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    out[1] = "|---" + "|---:" * (len(headers) - 1) + "|"
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def fmt(x, digits=0):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def bars_table(checks) -> str:
    """The "### Bars" section: (bar, measured, met) rows."""
    rows = [[bar, value, "yes" if ok else "**NO**"] for bar, value, ok in checks]
    return "### Bars\n\n" + table(["bar", "measured", "met"], rows)

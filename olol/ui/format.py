"""Jinja filters of the dashboard: sizes, durations, times and the small SVG charts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CHART_W, CHART_H = 300, 60


def size(value: Any) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (``1.5 GB``)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    n = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def seconds(value: Any) -> str:
    """A duration in seconds, shortly: ``850 ms``, ``12.3 s``, ``4 min``, ``2 h``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    v = float(value)
    if v < 1:
        return f"{v * 1000:.0f} ms"
    if v < 60:
        return f"{v:.1f} s"
    if v < 3600:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def ms(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return seconds(value / 1000.0)


def clock(value: Any) -> str:
    """An epoch time or an ISO string as ``HH:MM:SS`` (UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%H:%M:%S")


def hhmm(value: Any) -> str:
    return clock(value)[:5]


def num(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def spark(points: list[dict], field: str) -> dict[str, Any]:
    """A polyline of ``field`` over ``points`` (None: no figure that minute) scaled to the
    chart box: ``{"line": "x,y x,y ...", "max": top, "last": latest figure}``."""
    values = [p.get(field) for p in points]
    known = [v for v in values if isinstance(v, int | float)]
    top = max(known) if known else 0
    scale = top if top > 0 else 1
    step = CHART_W / max(1, len(values) - 1)
    coords = []
    for i, v in enumerate(values):
        y = CHART_H - (float(v or 0) / scale) * (CHART_H - 4) - 2
        coords.append(f"{i * step:.1f},{y:.1f}")
    last = next((v for v in reversed(values) if isinstance(v, int | float)), None)
    return {"line": " ".join(coords), "max": top, "last": last, "w": CHART_W, "h": CHART_H}


FILTERS = {"size": size, "seconds": seconds, "ms": ms, "clock": clock, "hhmm": hhmm, "num": num,
           "spark": spark}

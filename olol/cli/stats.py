"""``olol stats``: which models, nodes and keys used what, per hour, day or week
(``GET /olol/v1/stats``; ``--servers``: the nodes' samples, ``/olol/v1/stats/servers``).
The admin key comes from ``$OLOL_API_KEY``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from olol.cli.client import EXIT_OK, Api, _run, proxy_arguments
from olol.cli.models_view import table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stats", parents=[proxy_arguments()], help="request statistics of the running proxy",
        description=__doc__ + " docs/operations.md (Statistics) says what is counted.")
    p.add_argument("--period", choices=("hourly", "daily", "weekly"), default="daily",
                   help="rows per hour, UTC day or ISO week (default daily)")
    p.add_argument("--by", default="model",
                   help="model, node, key, several comma-separated, or total (default model)")
    p.add_argument("--since", default=None,
                   help="7d, 24h, 2w or an ISO date (default: 2 days, 31 days or 12 weeks "
                        "back, by period)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
    p.add_argument("--servers", action="store_true",
                   help="the nodes' samples instead (health, load, slots, GPU)")
    p.add_argument("--node", default=None, help="with --servers: only this node")
    p.set_defaults(func=cmd_stats)


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


def _count(n: Any) -> str:
    n = int(n or 0)
    if n >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 100_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _errors(row: dict) -> str:
    kinds = row.get("errors_by_kind") or {}
    if not row.get("errors"):
        return "0"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{row['errors']} ({detail})"


def _who(row: dict, dim: str) -> str:
    if dim == "key":
        name = row.get("key_name")
        key = row.get("key")
        if key is None:
            return "-"
        return f"{name} ({key[:8]})" if name else key
    value = row.get(dim)
    return "-" if value is None else str(value)


def render(data: dict) -> str:
    """The table of a ``GET /olol/v1/stats`` answer."""
    rows = data.get("rows") or []
    if not rows:
        return f"no requests counted since {data.get('since', '?')}"
    dims = [d for d in data.get("by", []) if d != "total"]
    head = ("PERIOD", *(d.upper() for d in dims), "REQUESTS", "ERRORS", "TOKENS IN",
            "TOKENS OUT", "QUEUE p50/p99", "TTFT p50/p99")
    lines = []
    for r in sorted(rows, key=lambda r: (r["start"], -int(r.get("requests") or 0))):
        q, t = r.get("queue_ms") or {}, r.get("ttft_ms") or {}
        lines.append((r.get("label") or r["start"], *(_who(r, d) for d in dims),
                      _count(r.get("requests")), _errors(r), _count(r.get("tokens_in")),
                      _count(r.get("tokens_out")),
                      f"{_ms(q.get('p50'))}/{_ms(q.get('p99'))}",
                      f"{_ms(t.get('p50'))}/{_ms(t.get('p99'))}"))
    return table(head, lines)


def render_servers(samples: list[dict]) -> str:
    if not samples:
        return "no samples"
    lines = []
    for s in samples:
        value, total = s.get("value"), s.get("total")
        if not isinstance(value, int | float):
            shown = "-" if value is None else str(value)
        elif s.get("type") == "gpu_memory":
            shown = f"{value / 2**30:.1f} GiB" + (f" / {total / 2**30:.1f} GiB" if total else "")
        elif s.get("type") == "gpu_util":
            shown = f"{value}%"
        elif s.get("type") == "load":
            shown = f"{100 * float(value):.0f}% CPU"
        elif s.get("type") == "latency":
            shown = f"{value} ms"
        else:
            shown = f"{value}" + (f" / {total}" if total is not None else "")
        lines.append((s.get("timestamp", "?"), s.get("node", "?"), s.get("type", "?"), shown))
    return table(("TIME", "NODE", "TYPE", "VALUE"), lines)


def cmd_stats(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        if args.servers:
            params = {"limit": str(args.limit)}
            if args.node:
                params["node"] = args.node
            if args.since:
                params["since"] = args.since
            _, data = api.call("GET", "/stats/servers", params=params)
            samples = data.get("samples", []) if isinstance(data, dict) else []
            print(json.dumps(samples, indent=2) if args.json else render_servers(samples))
            return EXIT_OK
        params = {"period": args.period, "by": args.by, "limit": str(args.limit)}
        if args.since:
            params["since"] = args.since
        _, data = api.call("GET", "/stats", params=params)
        data = data if isinstance(data, dict) else {}
        print(json.dumps(data, indent=2) if args.json else render(data))
        return EXIT_OK

    return _run(args, action)

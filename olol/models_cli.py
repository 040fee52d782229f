"""``olol models ls|status|pull|rm|optimize`` and ``olol jobs ls``.

Both talk to a running proxy's admin API (``--url``, default ``$OLOL_URL`` or
http://127.0.0.1:11435; the admin key comes from ``$OLOL_API_KEY``). ``--json`` prints
what the API answered (``pull --json``: one progress record per line). A pull shows a
live progress bar per node when stdout is a terminal, plain lines otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO
from urllib.parse import quote

from olol.clientconf import proxy_url

DEFAULT_URL = "http://127.0.0.1:11435"
API = "/olol/v1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
BAR_WIDTH = 30
MAX_LINE_BYTES = 1024 * 1024


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- parser ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="proxy URL (default: $OLOL_URL, else listen in $OLOL_CONFIG or olol.toml, else "
                        f"{DEFAULT_URL})")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the proxy's answer (default 30)")
    common.add_argument("--json", action="store_true", help="print JSON")

    models = subparsers.add_parser("models", help="where models live; pull, remove, place")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser("ls", parents=[common], help="list the models of the cluster")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("status", parents=[common], help="details of one model or of all")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("pull", parents=[common], help="pull a model onto the cluster")
    p.add_argument("name", help="model name, e.g. llama3.2:1b")
    p.add_argument("--node", action="append", default=[], metavar="ADDR",
                   help="pull onto this node (repeatable; default: placement decides)")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="give up when no progress arrives for this long (default 600 s)")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("rm", parents=[common], help="remove a model")
    p.add_argument("name", help="model name")
    p.add_argument("--node", action="append", default=[], metavar="ADDR",
                   help="remove from this node only (repeatable; default: every node)")
    p.add_argument("--force", action="store_true", help="even the last copy in the cluster")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("optimize", parents=[common],
                       help="show the placement plan (changes nothing without --apply)")
    p.add_argument("--apply", action="store_true", help="run the plan")
    p.set_defaults(func=cmd_optimize)

    jobs = subparsers.add_parser("jobs", help="the proxy's maintenance jobs")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = sub.add_parser("ls", parents=[common], help="each job, its last run and next run")
    p.set_defaults(func=cmd_jobs_ls)


# -- HTTP -----------------------------------------------------------------------------------


class Api:
    """The proxy's admin API over ``requests``."""

    def __init__(self, args: argparse.Namespace) -> None:
        import requests

        self.requests = requests
        self.url = proxy_url(args.url)
        self.timeout = args.timeout
        key = os.environ.get("OLOL_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _error(self, method: str, path: str, resp: Any) -> CliError:
        try:
            data = resp.json()
        except ValueError:
            data = None
        message = data.get("error") if isinstance(data, dict) else None
        if not isinstance(message, str):
            message = resp.text[:200] or resp.reason
        if resp.status_code == 404 and not isinstance(data, dict):
            message = f"the proxy at {self.url} has no models admin API"
        return CliError(message)

    def call(self, method: str, path: str, body: dict | None = None,
             params: dict | None = None, ok: tuple[int, ...] = ()) -> tuple[int, Any]:
        try:
            resp = self.requests.request(method, self.url + API + path, json=body,
                                         params=params, headers=self.headers,
                                         timeout=self.timeout)
        except self.requests.RequestException as exc:
            raise CliError(f"cannot reach the olol proxy at {self.url}: {exc}") from None
        if resp.status_code >= 400 and resp.status_code not in ok:
            raise self._error(method, path, resp)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            raise CliError(f"{method} {path}: the proxy answered no JSON") from None

    def stream(self, path: str, body: dict, idle_s: float) -> Iterator[dict]:
        try:
            resp = self.requests.post(self.url + API + path, json=body, headers=self.headers,
                                      stream=True, timeout=(self.timeout, idle_s))
        except self.requests.RequestException as exc:
            raise CliError(f"cannot reach the olol proxy at {self.url}: {exc}") from None
        with resp:
            if resp.status_code >= 400:
                raise self._error("POST", path, resp)
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if not line:
                        continue
                    if len(line) > MAX_LINE_BYTES:
                        raise CliError("the proxy sent an oversized progress record")
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise CliError(f"bad progress record: {line[:80]!r}") from None
                    if isinstance(record, dict):
                        yield record
            except self.requests.RequestException as exc:
                raise CliError(f"the progress stream broke: {exc}") from None


def _run(args: argparse.Namespace, action: Callable[[Api], int]) -> int:
    try:
        return action(Api(args))
    except CliError as exc:
        print(f"olol {args.command}: {exc}", file=sys.stderr)
        return exc.status


# -- formatting ----------------------------------------------------------------------------


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


# -- models ---------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("GET", "/models")
        models = data.get("models", []) if isinstance(data, dict) else []
        if args.json:
            _print_json(models)
        elif not models:
            print("no models")
        else:
            print(model_rows(models))
        return EXIT_OK

    return _run(args, action)


def cmd_status(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        if args.name:
            _, data = api.call("GET", "/models/" + quote(args.name, safe=":/"))
            models = [data] if isinstance(data, dict) else []
        else:
            _, data = api.call("GET", "/models")
            models = data.get("models", []) if isinstance(data, dict) else []
        if args.json:
            _print_json(models[0] if args.name and models else models)
        elif not models:
            print("no models")
        else:
            print("\n\n".join(model_block(m) for m in models))
        return EXIT_OK

    return _run(args, action)


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
        state = self.nodes.setdefault(node, {"status": "", "completed": 0, "total": 0})
        if isinstance(record.get("status"), str):
            state["status"] = record["status"]
        if isinstance(record.get("total"), int):
            state["total"] = record["total"]
            state["completed"] = record.get("completed") or 0
        if "error" in record:
            state["status"] = f"error: {record['error']}"
        if self.tty:
            self._draw()
        else:
            self._plain(node, state)

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
            pct = self._percent(state)
            if pct is None:
                bar = " " * (BAR_WIDTH + 7)
            else:
                filled = BAR_WIDTH * pct // 100
                bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {pct:3d}%"
            sizes = (f" {human_bytes(state['completed'])}/{human_bytes(state['total'])}"
                     if state["total"] else "")
            self.out.write(f"\x1b[2K{node.ljust(width)}  {bar}  {state['status']}{sizes}\n")
        self._drawn = len(self.nodes)
        self.out.flush()


def cmd_pull(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        body: dict[str, Any] = {"model": args.name, "stream": True}
        if args.node:
            body["nodes"] = args.node
        view = None if args.json else ProgressView(sys.stdout, sys.stdout.isatty())
        outcome = None
        for record in api.stream("/models/pull", body, args.idle_timeout):
            if view is None:
                print(json.dumps(record, sort_keys=True), flush=True)
            else:
                view.feed(record)
            if "error" in record:
                outcome = f"error: {record['error']}"
            elif record.get("status") == "success" and "node" not in record:
                outcome = "success"
        if outcome == "success":
            if view is not None:
                print(f"pulled {args.name}")
            return EXIT_OK
        message = outcome or "the pull ended without an outcome"
        print(f"olol models: pull {args.name}: {message}", file=sys.stderr)
        return EXIT_FAILED

    return _run(args, action)


def cmd_rm(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        params: dict[str, str] = {}
        if args.force:
            params["force"] = "1"
        if args.node:
            params["nodes"] = ",".join(args.node)
        status, data = api.call("DELETE", "/models/" + quote(args.name, safe=":/"),
                                params=params, ok=(409,))
        if status == 409:
            message = data.get("error") if isinstance(data, dict) else None
            if args.json:
                _print_json(data)
            print(f"olol models: {message or 'refused'} (use --force to remove it anyway)",
                  file=sys.stderr)
            return EXIT_FAILED
        results = data.get("results", {}) if isinstance(data, dict) else {}
        failed = [n for n, r in results.items() if isinstance(r, dict) and r.get("error")]
        if args.json:
            _print_json(data)
        else:
            for node in sorted(results):
                outcome = results[node]
                text = (f"error: {outcome['error']}" if isinstance(outcome, dict)
                        and outcome.get("error") else
                        (outcome.get("status") if isinstance(outcome, dict) else str(outcome)))
                print(f"{node}: {text}")
            if not results:
                print(f"{args.name}: nothing removed")
        return EXIT_FAILED if failed else EXIT_OK

    return _run(args, action)


def plan_lines(plan: dict) -> list[str]:
    actions = plan.get("actions") or []
    if not actions:
        return ["nothing to change"]
    header = ("ACTION", "MODEL", "NODE", "REASON")
    rows = [(str(a.get("action", "?")), str(a.get("model", "?")), str(a.get("node", "?")),
             str(a.get("reason", ""))) for a in actions]
    return table(header, rows).splitlines()


def cmd_optimize(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("POST", "/models/optimize", {"apply": bool(args.apply)})
        if args.json:
            _print_json(data)
            return EXIT_OK
        plan = data.get("plan") or {}
        print("\n".join(plan_lines(plan)))
        if args.apply:
            print()
            results = data.get("results")
            print("applied:" if results is not None else "applied")
            if isinstance(results, dict):
                for key in sorted(results):
                    print(f"  {key}: {json.dumps(results[key], sort_keys=True)}")
        elif plan.get("actions"):
            print("\n(plan only: run with --apply to carry it out)")
        return EXIT_OK

    return _run(args, action)


# -- jobs -----------------------------------------------------------------------------------


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


def cmd_jobs_ls(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("GET", "/maintenance")
        jobs = data.get("jobs", []) if isinstance(data, dict) else []
        if args.json:
            _print_json(jobs)
        elif not jobs:
            print("no maintenance jobs")
        else:
            print(jobs_table(jobs))
        return EXIT_OK

    return _run(args, action)

"""``olol models ls|status|pull|rm|optimize`` and ``olol jobs ls``.

Both talk to a running proxy's admin API (``--url``, default ``$OLOL_URL`` or
http://127.0.0.1:11435; the admin key comes from ``$OLOL_API_KEY``). ``--json`` prints
what the API answered (``pull --json``: one progress record per line). A pull shows a
live progress bar per node and one for the cluster (bytes, speed, time left) when stdout
is a terminal, plain lines otherwise; Ctrl-C stops watching, not the pull.

This module holds the parser and the commands; the admin API client lives in
``olol.cli.client`` and the output formatting in ``olol.cli.models_view`` (their
public names are re-exported here).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from olol.cli.client import (
    API,
    DEFAULT_URL,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_LINE_BYTES,
    Api,
    CliError,
    _run,
    proxy_arguments,
)
from olol.cli.models_view import (
    _print_json,
    human_bytes,
    jobs_table,
    model_block,
    model_rows,
    plan_lines,
    table,
)
from olol.cli.progress import BAR_WIDTH, ProgressView, Waiting, is_terminal

__all__ = [
    "API", "BAR_WIDTH", "DEFAULT_URL", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK",
    "EXIT_USAGE",
    "MAX_LINE_BYTES", "Api", "CliError", "ProgressView", "cmd_jobs_ls", "cmd_ls",
    "cmd_optimize", "cmd_pull", "cmd_rm", "cmd_status", "human_bytes", "jobs_table",
    "model_block", "model_rows", "plan_lines", "register", "table",
]


# -- parser ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    common = proxy_arguments(30.0)

    models = subparsers.add_parser("models", help="where models live; pull, remove, place")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser("ls", parents=[common], help="list the models of the cluster")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("status", parents=[common], help="details of one model or of all")
    p.add_argument("name", nargs="?", help="model name (default: every model)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "pull", parents=[common], help="pull a model onto the cluster",
        description="Pull a model onto the cluster (the nodes that placement picks, or "
        "--node). In a terminal: a bar per node and one for the cluster, with bytes, speed "
        "and time left; elsewhere one plain line per change. Ctrl-C stops watching, not "
        "the pull: it goes on in the cluster (olol models status NAME follows it).")
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

    jobs = subparsers.add_parser("maintenance", help="the proxy's maintenance jobs")
    sub = jobs.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    p = sub.add_parser("ls", parents=[common], help="each job, its last run and next run")
    p.set_defaults(func=cmd_jobs_ls)
    p = sub.add_parser("run", parents=[common],
                       help="run a job now and wait for its outcome (exit 1 if it failed)")
    p.add_argument("job", help="the job's name (as `olol maintenance ls` lists it)")
    p.set_defaults(func=cmd_jobs_run)


def cmd_jobs_run(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        with Waiting(sys.stderr, is_terminal(sys.stderr), ticking=False) as waiting:
            if waiting.tty:
                waiting.show(f"running {args.job}...")
            _, entry = api.call("POST", f"/maintenance/{quote(args.job, safe='')}/run")
        if args.json:
            _print_json(entry)
        else:
            print(jobs_table([entry]))
        return EXIT_FAILED if isinstance(entry, dict) and entry.get("outcome") == "error" \
            else EXIT_OK

    return _run(args, action)


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


def cmd_pull(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        body: dict[str, Any] = {"model": args.name, "stream": True}
        if args.node:
            body["nodes"] = args.node
        view = None if args.json else ProgressView(sys.stdout, is_terminal(sys.stdout))
        outcome = None
        try:
            for record in api.stream("/models/pull", body, args.idle_timeout):
                if view is None:
                    print(json.dumps(record, sort_keys=True), flush=True)
                else:
                    view.feed(record)
                if "error" in record:
                    outcome = f"error: {record['error']}"
                elif record.get("status") == "success" and "node" not in record:
                    outcome = "success"
        except KeyboardInterrupt:
            if view is not None:
                view.close()
            print(interrupted_pull(args.name), file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        finally:
            if view is not None:
                view.close()
        if outcome == "success":
            if view is not None:
                print(f"pulled {args.name}")
            return EXIT_OK
        message = outcome or "the pull ended without an outcome"
        print(f"olol models: pull {args.name}: {message}", file=sys.stderr)
        return EXIT_FAILED

    return _run(args, action)


def interrupted_pull(name: str) -> str:
    """What Ctrl-C during ``olol models pull`` says: the proxy goes on pulling (the pull
    belongs to the cluster, not to this command) and no API stops a running pull."""
    return (f"olol models pull: stopped watching; the pull of {name} goes on in the "
            f"cluster (follow it: olol models status {name}; nothing cancels it, but once "
            f"it ends olol models rm {name} --force deletes it)")


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


def cmd_optimize(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        if args.apply:
            with Waiting(sys.stderr, is_terminal(sys.stderr), ticking=False) as waiting:
                waiting.show("applying the placement plan (pulls and removals)...")
                _, data = api.call("POST", "/models/optimize", {"apply": True})
        else:
            _, data = api.call("POST", "/models/optimize", {"apply": False})
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

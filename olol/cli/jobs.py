"""``olol jobs submit|get|wait|cancel|ls``: asynchronous inference jobs through a running
proxy (``/olol/v1/jobs``). A job is a generate, chat or embed request queued durably:
its id comes back at once, it survives a proxy restart, and its result is kept for
``retention_hours``. (The proxy's maintenance jobs are ``olol maintenance``.)"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from olol.cli.client import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Api,
    CliError,
    _run,
    proxy_arguments,
)
from olol.cli.models_view import table
from olol.cli.progress import Waiting, is_terminal

FINISHED = ("completed", "failed", "interrupted", "cancelled")


def register(subparsers: argparse._SubParsersAction) -> None:
    jobs = subparsers.add_parser(
        "jobs", help="asynchronous inference jobs (submit, get, wait, cancel, ls)",
        description=__doc__)
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    common = proxy_arguments()

    p = sub.add_parser("submit", parents=[common], help="queue a request; prints its id")
    p.add_argument("endpoint", choices=["generate", "chat", "embed", "embeddings"],
                   help="the Ollama endpoint the body is for (/api/ENDPOINT)")
    p.add_argument("body", help="the request body as JSON (@FILE reads a file, - stdin)")
    p.add_argument("--priority", type=int, default=None, help="queue priority, -100..100 (default: the key's)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("get", parents=[common], help="a job's state (and result)")
    p.add_argument("job_id", help="the id `olol jobs submit` printed")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser(
        "wait", parents=[common], help="wait until a job finishes",
        description="Wait until a job finishes, then print it as `olol jobs get` does "
        "(exit 1 unless it completed). While it waits, its state is shown on stderr: a "
        "line redrawn in a terminal, one line per change elsewhere. Ctrl-C stops waiting, "
        "not the job.")
    p.add_argument("job_id", help="the id `olol jobs submit` printed")
    p.add_argument("--max-wait", type=float, default=3600.0,
                   help="give up after this many seconds (default 3600)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("cancel", parents=[common], help="cancel a pending or running job")
    p.add_argument("job_id", help="the id `olol jobs submit` printed")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("ls", parents=[common], help="recent jobs, newest first")
    p.add_argument("--status", choices=["pending", "processing", *FINISHED],
                   help="only jobs in this state (default: any)")
    p.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    p.set_defaults(func=cmd_ls)


def _read_body(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read {text[1:]}: {exc.strerror or exc}", 2) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"the body is not JSON: {exc}", 2) from None


def _show(job: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=2, sort_keys=True))
        return
    print(f"id:       {job.get('id')}")
    print(f"status:   {job.get('status')}")
    print(f"model:    {job.get('model')} ({job.get('endpoint')})")
    if job.get("server_assigned"):
        print(f"node:     {job['server_assigned']}")
    if job.get("error"):
        print(f"error:    {job['error']}")
    result = job.get("result")
    if isinstance(result, dict):
        text = result.get("response")
        if text is None and isinstance(result.get("message"), dict):
            text = result["message"].get("content")
        if isinstance(text, str):
            print("result:")
            print(text)
        else:
            print("result:   " + json.dumps(result)[:400])


def cmd_submit(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        envelope: dict[str, Any] = {"endpoint": args.endpoint, "body": _read_body(args.body)}
        if args.priority is not None:
            envelope["priority"] = args.priority
        _, data = api.call("POST", "/jobs", envelope)
        if args.json:
            print(json.dumps(data, sort_keys=True))
        else:
            print(data.get("id"))
        return EXIT_OK

    return _run(args, action)


def cmd_get(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("GET", f"/jobs/{args.job_id}")
        _show(data, args.json)
        return EXIT_OK if data.get("status") != "failed" else EXIT_FAILED

    return _run(args, action)


def cmd_wait(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        deadline = time.monotonic() + args.max_wait
        delay = 0.2
        waiting = Waiting(sys.stderr, is_terminal(sys.stderr))
        try:
            while True:
                _, data = api.call("GET", f"/jobs/{args.job_id}")
                if data.get("status") in FINISHED:
                    waiting.close()
                    _show(data, args.json)
                    return EXIT_OK if data["status"] == "completed" else EXIT_FAILED
                if time.monotonic() >= deadline:
                    raise CliError(f"job {args.job_id} still {data.get('status')} after "
                                   f"{args.max_wait:g} s")
                waiting.show(f"job {args.job_id}: {data.get('status')}")
                waiting.sleep(delay)
                delay = min(2.0, delay * 1.5)
        except KeyboardInterrupt:
            waiting.close()
            print(f"olol jobs wait: stopped waiting; job {args.job_id} goes on in the proxy "
                  f"(olol jobs get {args.job_id} shows it, olol jobs cancel {args.job_id} "
                  "stops it)", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        finally:
            waiting.close()

    return _run(args, action)


def cmd_cancel(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("DELETE", f"/jobs/{args.job_id}")
        _show(data, args.json)
        return EXIT_OK

    return _run(args, action)


def cmd_ls(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        params = {"limit": str(max(1, args.limit))}
        if args.status:
            params["status"] = args.status
        _, data = api.call("GET", "/jobs", params=params)
        jobs = data.get("jobs", []) if isinstance(data, dict) else []
        if args.json:
            print(json.dumps(jobs, indent=2, sort_keys=True))
        elif not jobs:
            print("no jobs")
        else:
            print(table(("ID", "STATUS", "MODEL", "ENDPOINT", "NODE", "CREATED"), [
                (str(j.get("id")), str(j.get("status")), str(j.get("model")),
                 str(j.get("endpoint")), str(j.get("server_assigned") or "-"),
                 str(j.get("created_at") or "-")) for j in jobs]))
        return EXIT_OK

    return _run(args, action)

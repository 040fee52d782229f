"""The HTTP side of ``olol models`` and ``olol jobs``: a small client of a running proxy's
admin API (``/olol/v1``) and the error type the commands report with.

The proxy URL comes from ``--url``, else ``$OLOL_URL`` (see ``olol.cli.clientconf``); the
admin key from ``$OLOL_API_KEY``. A failure becomes a ``CliError`` carrying the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from olol.cli.clientconf import proxy_url, unreachable

DEFAULT_URL = "http://127.0.0.1:11435"
API = "/olol/v1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
MAX_LINE_BYTES = 1024 * 1024


def proxy_arguments(timeout_s: float = 10.0) -> argparse.ArgumentParser:
    """The options every command that talks to a running proxy takes (a parent parser):
    ``--url``, ``--timeout`` and ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="proxy URL (default: $OLOL_URL, else listen in $OLOL_CONFIG or "
                             "olol.toml, else http://127.0.0.1:11435)")
    common.add_argument("--timeout", type=float, default=timeout_s,
                        help=f"seconds to wait for each answer of the proxy "
                             f"(default {timeout_s:g})")
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


class CliError(Exception):
    """A failure to report on stderr in one line, with the exit status to end with."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """The proxy's admin API over ``requests``.

    :param args: the parsed options of :func:`proxy_arguments` (``url``, ``timeout``);
        or give ``url`` and ``timeout`` directly.
    """

    def __init__(self, args: argparse.Namespace | None = None, *, url: str | None = None,
                 timeout: float = 10.0) -> None:
        import requests

        self.requests = requests
        self.url = proxy_url(getattr(args, "url", None) if args is not None else url)
        self.timeout = getattr(args, "timeout", timeout) if args is not None else timeout
        key = os.environ.get("OLOL_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _error(self, method: str, path: str, resp: Any) -> CliError:
        try:
            data = resp.json()
        except ValueError:
            data = None
        message = data.get("error") if isinstance(data, dict) else None
        if isinstance(message, dict):  # the OpenAI shape
            message = message.get("message")
        if not isinstance(message, str):
            message = resp.text[:200].strip() or resp.reason
        if resp.status_code == 404 and not isinstance(data, dict):
            # gin's plain "404 page not found": not an olol proxy, or an older one
            message = f"no {API}{path.split('?')[0]} here (is this an olol proxy?)"
        if resp.status_code in (401, 403):
            message = f"{message} (set OLOL_API_KEY to an admin key)"
        return CliError(f"the proxy at {self.url} answered {resp.status_code}: {message}")

    def call(self, method: str, path: str, body: dict | None = None,
             params: dict | None = None, ok: tuple[int, ...] = ()) -> tuple[int, Any]:
        try:
            resp = self.requests.request(method, self.url + API + path, json=body,
                                         params=params, headers=self.headers,
                                         timeout=self.timeout)
        except self.requests.RequestException as exc:
            raise CliError(unreachable(self.url, exc)) from None
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
            raise CliError(unreachable(self.url, exc)) from None
        with resp:
            if resp.status_code >= 400:
                raise self._error("POST", path, resp)
            try:
                # chunk_size None: each line as soon as it arrives (the stubs want an int)
                for line in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]
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

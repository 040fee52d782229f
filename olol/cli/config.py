"""``olol config get|set|reset|history``: the proxy's settings, changed while it serves
(``/olol/v1/config``; the admin key comes from ``$OLOL_API_KEY``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from olol.cli.client import EXIT_OK, Api, CliError, _run, proxy_arguments
from olol.cli.models_view import table
from olol.context import from_text


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser(
        "config", help="read and change the running proxy's settings",
        description=__doc__ + " docs/config.md lists every setting and says which can "
        "change while the proxy runs.")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    common = proxy_arguments()

    p = sub.add_parser("get", parents=[common], help="settings and their values")
    p.add_argument("names", nargs="*", help="only these settings")
    p.add_argument("--live", action="store_true", help="only those that can change live")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("set", parents=[common], help="change settings: NAME=VALUE ...")
    p.add_argument("pairs", nargs="+", metavar="NAME=VALUE",
                   help="values as in the environment: numbers, true/false, lists "
                        "comma-separated, tables as JSON")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("reset", parents=[common], help="back to the boot value")
    p.add_argument("names", nargs="+", metavar="NAME", help="the settings to reset")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("history", parents=[common], help="who changed what, newest first")
    p.add_argument("--limit", type=int, default=20, help="at most this many changes (default 20)")
    p.set_defaults(func=cmd_history)


def _patch(api: Api, changes: dict[str, Any], as_json: bool) -> int:
    _, data = api.call("PATCH", "/config", changes)
    changed = data.get("changed", {}) if isinstance(data, dict) else {}
    if as_json:
        print(json.dumps(changed, sort_keys=True))
    else:
        for name, value in sorted(changed.items()):
            print(f"{name} = {json.dumps(value)}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("GET", "/config")
        settings = data.get("settings", {}) if isinstance(data, dict) else {}
        unknown = [n for n in args.names if n not in settings]
        if unknown:
            raise CliError(f"unknown setting(s): {', '.join(unknown)}", 2)
        chosen = {n: s for n, s in sorted(settings.items())
                  if (not args.names or n in args.names) and (not args.live or s["live"])}
        if args.json:
            print(json.dumps(chosen, indent=2, sort_keys=True))
            return EXIT_OK
        print(table(("SETTING", "VALUE", "LIVE", "CHANGED"), [
            (name, json.dumps(s["value"])[:60], "yes" if s["live"] else "restart",
             f"{s['changed_at']} by {s.get('changed_by') or '?'}" if s.get("changed_at")
             else "-") for name, s in chosen.items()]))
        return EXIT_OK

    return _run(args, action)


def cmd_set(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        changes: dict[str, Any] = {}
        for pair in args.pairs:
            name, sep, text = pair.partition("=")
            if not sep or not name:
                raise CliError(f"expected NAME=VALUE, got {pair!r}", 2)
            name = name.strip().replace("-", "_")
            try:
                changes[name] = from_text(name, text)
            except StopIteration:
                raise CliError(f"unknown setting {name!r}", 2) from None
        return _patch(api, changes, args.json)

    return _run(args, action)


def cmd_reset(args: argparse.Namespace) -> int:
    return _run(args, lambda api: _patch(api, {n.replace("-", "_"): None for n in args.names},
                                         args.json))


def cmd_history(args: argparse.Namespace) -> int:
    def action(api: Api) -> int:
        _, data = api.call("GET", "/config/history", params={"limit": str(args.limit)})
        changes = data.get("changes", []) if isinstance(data, dict) else []
        if args.json:
            print(json.dumps(changes, indent=2, sort_keys=True))
        elif not changes:
            print("no changes")
        else:
            print(table(("AT", "SETTING", "FROM", "TO", "BY"), [
                (c.get("at", "?"), c.get("key", "?"), json.dumps(c.get("old"))[:30],
                 json.dumps(c.get("new"))[:30], str(c.get("by") or "?")) for c in changes]))
        return EXIT_OK

    return _run(args, action)

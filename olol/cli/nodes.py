"""``olol nodes add|rm|ls``: manage cluster membership.

By default the command talks to a running proxy's admin API (``--url``, default
``$OLOL_URL`` or http://127.0.0.1:11435; the admin key comes from
``$OLOL_API_KEY``). With ``--data-dir`` it edits the store directly, which only
works while no proxy owns that folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from olol.cli.client import Api, CliError

DEFAULT_URL = "http://127.0.0.1:11435"
NODES_PATH = "/olol/v1/nodes"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:
    nodes = subparsers.add_parser("nodes", help="add, remove and list inference nodes")
    sub = nodes.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="proxy URL (default: $OLOL_URL, else listen in $OLOL_CONFIG or olol.toml, else "
                        f"{DEFAULT_URL})")
    common.add_argument("--data-dir", default=None,
                        help="edit this data folder directly instead (no proxy may be running)")
    common.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the proxy (default 10)")
    p = sub.add_parser("add", parents=[common], help="add a node agent (host:port)")
    p.add_argument("address", help="node agent address, host:port")
    p.set_defaults(func=cmd_add)
    p = sub.add_parser("rm", parents=[common], help="remove a node")
    p.add_argument("address", help="node agent address, host:port")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("ls", parents=[common], help="list nodes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_ls)


# -- back ends ----------------------------------------------------------------------------


class _HttpBackend:
    """The nodes admin API of a running proxy (:class:`olol.cli.client.Api`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.api = Api(url=args.url, timeout=args.timeout)
        self.url = self.api.url

    def add(self, address: str) -> dict:
        _, data = self.api.call("POST", "/nodes", {"address": address})
        return data

    def remove(self, address: str) -> bool:
        status, _ = self.api.call("DELETE", f"/nodes/{quote(address, safe=':')}", ok=(404,))
        return status < 400

    def list(self) -> list[dict]:
        _, data = self.api.call("GET", "/nodes")
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise CliError(f"the proxy at {self.url} answered no list of nodes")
        return data["nodes"]

    def close(self) -> None:
        pass


class _StoreBackend:
    def __init__(self, args: argparse.Namespace) -> None:
        from olol.cluster import ClusterManager
        from olol.store import DatabaseManager, StoreError, StoreLockedError
        from olol.store.database import default_data_dir

        folder = default_data_dir(args.data_dir)
        try:
            self.db = DatabaseManager(folder, background_checkpoints=False)
        except StoreLockedError as exc:
            raise CliError(f"{folder} is in use (is a proxy running? use --url instead): {exc}",
                           EXIT_STORE) from None
        except StoreError as exc:
            raise CliError(f"cannot open the store in {folder}: {exc}", EXIT_STORE) from None
        self.cluster = ClusterManager(self.db)

    def add(self, address: str) -> dict:
        return self.cluster.add_node(address, source="cli").to_dict()

    def remove(self, address: str) -> bool:
        return self.cluster.remove_node(address)

    def list(self) -> list[dict]:
        from olol.node_state import plain_reason

        # what the last proxy recorded: its last check and error (not polled from here)
        rows = {r["address"]: r for r in self.db.all("servers")}
        out = []
        for node in self.cluster.list_nodes():
            d = node.to_dict()
            row: dict[str, Any] = rows.get(node.address) or {}
            if d.get("last_check") is None and row.get("last_check"):
                d["last_check"] = row["last_check"]
                d["last_error"] = row.get("last_error")
                d["suspect"], d["suspect_reason"] = False, None
                d["reason"] = None if d["healthy"] else plain_reason(
                    row.get("last_error") or "not healthy at the last check")
            out.append(d)
        return out

    def close(self) -> None:
        self.cluster.close()
        self.db.close()


def _backend(args: argparse.Namespace) -> _HttpBackend | _StoreBackend:
    if args.data_dir and args.url:
        raise CliError("give either --url or --data-dir, not both", EXIT_USAGE)
    return _StoreBackend(args) if args.data_dir else _HttpBackend(args)


def _run(args: argparse.Namespace, action) -> int:
    try:
        backend = _backend(args)
        try:
            return action(backend)
        finally:
            backend.close()
    except CliError as exc:
        print(f"olol nodes: {exc}", file=sys.stderr)
        return exc.status
    except ValueError as exc:  # bad address
        print(f"olol nodes: {exc}", file=sys.stderr)
        return EXIT_USAGE


# -- commands -----------------------------------------------------------------------------


def _check_address(address: str) -> str:
    from olol.cluster import normalize_address

    try:
        return normalize_address(address)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def cmd_add(args: argparse.Namespace) -> int:
    def action(backend) -> int:
        node = backend.add(_check_address(args.address))
        print(f"added {node.get('address', args.address)}")
        return EXIT_OK

    return _run(args, action)


def cmd_rm(args: argparse.Namespace) -> int:
    def action(backend) -> int:
        if not backend.remove(args.address.strip()):
            print(f"olol nodes: no such node {args.address.strip()!r}", file=sys.stderr)
            return EXIT_FAILED
        print(f"removed {args.address.strip()}")
        return EXIT_OK

    return _run(args, action)


def _reason(n: dict) -> str:
    """Why a node is not serving, for the table (a proxy of an older version sends no
    ``reason``: it is worked out from the raw errors)."""
    if n.get("healthy") and not n.get("suspect"):
        return "-"
    reason = n.get("reason")
    if not reason:
        from olol.node_state import plain_reason

        if not n.get("healthy"):
            raw = n.get("last_error") if n.get("last_check") or n.get("last_error") else None
            reason = plain_reason(raw) if raw else "not checked yet"
        else:
            reason = plain_reason(n.get("suspect_reason") or n.get("last_error") or "suspect")
    return str(reason)


def format_table(nodes: list[dict]) -> str:
    """A plain-text table of nodes, one per line, with a header; REASON says why a node
    that is not healthy (or suspect) is not serving."""
    header = ("ADDRESS", "HEALTHY", "SOURCE", "SLOTS", "MODELS", "LOADED", "LAST CHECK",
              "REASON")
    rows = [header]
    for n in nodes:
        healthy = "yes" if n.get("healthy") else "no"
        if n.get("suspect") and n.get("healthy"):
            healthy = "suspect"
        rows.append((
            str(n.get("address", "")), healthy, str(n.get("source") or ""),
            f"{n.get('in_flight', 0)}/{n.get('parallel', 1)}",
            ",".join(n.get("models") or []) or "-", ",".join(n.get("loaded") or []) or "-",
            str(n.get("last_check") or "never"), _reason(n),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def cmd_ls(args: argparse.Namespace) -> int:
    def action(backend) -> int:
        nodes = backend.list()
        if args.json:
            print(json.dumps(nodes, indent=2))
        elif not nodes:
            print("no nodes")
        else:
            print(format_table(nodes))
        return EXIT_OK

    return _run(args, action)

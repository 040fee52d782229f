"""``olol keys create|ls|revoke``: manage API keys.

Without ``--url`` the commands open the data folder directly (that is how the first
admin key is made, before the proxy runs). When a running proxy owns the folder, or
with ``--url``, they go through that proxy's admin API instead (``/olol/v1/keys``, with
the admin key in ``$OLOL_API_KEY``): keys are created and revoked while it serves, and a
revoked key is refused on its next request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from olol.cli.client import Api, CliError
from olol.keys import KeyStore
from olol.store import journal as jr
from olol.store.database import DatabaseManager, default_data_dir

if TYPE_CHECKING:
    from olol.interfaces import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys (offline or through the proxy)")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data folder (default: $OLOL_DATA_DIR, else $XDG_DATA_HOME/olol)"
    )
    common.add_argument(
        "--url", help="manage the keys of the proxy running at this URL (admin key from "
        "$OLOL_API_KEY); also used when a running proxy owns the data folder"
    )
    common.add_argument(
        "--store", default=os.environ.get("OLOL_STORE") or None,
        help="the proxies' shared store, a postgresql:// URL (default: $OLOL_STORE); "
        "works while proxies run (docs/postgresql.md)"
    )

    p = sub.add_parser("create", parents=[common], help="create a key and print it once")
    p.add_argument("name", help="a label for the key (who or what uses it)")
    p.add_argument("--admin", action="store_true", help="allow the admin API")
    p.add_argument(
        "--priority", type=int, default=0,
        help="default queue priority of its requests, -100..100 (default 0)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("ls", parents=[common], help="list keys (never the secrets)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("key_id", help="the key's id (as `olol keys ls` lists it)")
    p.set_defaults(func=cmd_revoke)


class _Remote(Api):
    """The keys admin API of a running proxy (:class:`olol.cli.client.Api`)."""

    def __init__(self, url: str | None) -> None:
        super().__init__(url=url, timeout=10.0)

    def call(self, method: str, path: str, body: dict | None = None,  # type: ignore[override]
             params: dict | None = None, ok: tuple[int, ...] = ()) -> tuple[int, Any]:
        return super().call(method, "/keys" + path, body, params, ok)


_Failed = CliError


def _open(args: argparse.Namespace) -> Store | _Remote | None:
    """The store, or the running proxy that owns it (or that ``--url`` names)."""
    if args.url:
        return _Remote(args.url)
    if args.store:
        from olol.address import redact_url
        from olol.store import open_store

        try:
            return open_store(args.store)
        except (jr.StoreError, ValueError) as exc:
            print(f"olol keys: cannot open the store at {redact_url(args.store)}: {exc}",
                  file=sys.stderr)
            return None
    try:
        return DatabaseManager(default_data_dir(args.data_dir), background_checkpoints=False)
    except jr.StoreLockedError as exc:
        remote = _Remote(None)
        print(f"olol keys: {exc}; asking the proxy at {remote.url} instead", file=sys.stderr)
        return remote
    except jr.StoreError as exc:
        print(f"olol keys: cannot open the store: {exc}", file=sys.stderr)
    return None


def _run(args: argparse.Namespace, offline: Any, online: Any) -> tuple[int, Any]:
    """``offline(KeyStore)`` on the store, or ``online(_Remote)`` through the proxy."""
    where = _open(args)
    if where is None:
        return 1, None
    try:
        if isinstance(where, _Remote):
            return 0, online(where)
        try:
            return 0, offline(KeyStore(where))
        finally:
            where.close()
    except _Failed as exc:
        print(f"olol keys: {exc}", file=sys.stderr)
        return 1, None
    except ValueError as exc:
        print(f"olol keys: {exc}", file=sys.stderr)
        return 2, None


def cmd_create(args: argparse.Namespace) -> int:
    def offline(store: KeyStore) -> dict:
        key_id, token = store.create(args.name, admin=args.admin,
                                     default_priority=args.priority)
        return {"id": key_id, "key": token, "name": args.name.strip(), "admin": args.admin,
                "default_priority": args.priority}

    def online(remote: _Remote) -> dict:
        _, data = remote.call("POST", "", {"name": args.name, "admin": args.admin,
                                           "default_priority": args.priority})
        return data

    rc, made = _run(args, offline, online)
    if rc:
        return rc
    if args.json:
        print(json.dumps({k: made[k] for k in ("id", "key", "name", "admin",
                                                "default_priority")}))
    else:
        print(f"id:  {made['id']}")
        print(f"key: {made['key']}")
        print("Store the key now: it is not shown again.")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rc, infos = _run(args, lambda store: [i.to_dict() for i in store.list()],
                     lambda remote: remote.call("GET", "")[1]["keys"])
    if rc:
        return rc
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    if not infos:
        print("no keys")
        return 0
    print(f"{'ID':<21} {'PREFIX':<13} {'ADMIN':<5} {'PRIO':>4} {'STATE':<7} "
          f"{'LAST USED':<32} NAME")
    for info in infos:
        state = "revoked" if info["revoked"] else "active"
        print(f"{info['id']:<21} {info['prefix']:<13} {'yes' if info['admin'] else 'no':<5} "
              f"{info['default_priority']:>4} {state:<7} {info['last_used_at'] or '-':<32} "
              f"{info['name']}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    def online(remote: _Remote) -> bool:
        try:
            remote.call("DELETE", "/" + args.key_id)
        except _Failed as exc:
            if "answered 404" in str(exc):
                return False
            raise
        return True

    rc, ok = _run(args, lambda store: store.revoke(args.key_id), online)
    if rc:
        return rc
    if not ok:
        print(f"olol keys: no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0

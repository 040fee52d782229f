"""``olol keys create|ls|revoke``: manage API keys in a data folder.

These commands open the store directly, so the proxy that owns the folder must be
stopped (the store's lock says so otherwise). That is how the first admin key is made.
"""

from __future__ import annotations

import argparse
import json
import sys

from olol.keys import KeyStore
from olol.store import journal as jr
from olol.store.database import DatabaseManager, default_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys (the proxy must be stopped)")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data folder (default: $OLOL_DATA_DIR, else $XDG_DATA_HOME/olol)"
    )

    p = sub.add_parser("create", parents=[common], help="create a key and print it once")
    p.add_argument("name", help="a label for the key (who or what uses it)")
    p.add_argument("--admin", action="store_true", help="allow the admin API")
    p.add_argument(
        "--priority", type=int, default=0, help="default queue priority of its requests"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("ls", parents=[common], help="list keys (never the secrets)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_revoke)


def _open(args: argparse.Namespace) -> DatabaseManager | None:
    try:
        return DatabaseManager(default_data_dir(args.data_dir), background_checkpoints=False)
    except jr.StoreLockedError as exc:
        print(f"olol keys: {exc}", file=sys.stderr)
    except jr.StoreError as exc:
        print(f"olol keys: cannot open the store: {exc}", file=sys.stderr)
    return None


def cmd_create(args: argparse.Namespace) -> int:
    db = _open(args)
    if db is None:
        return 1
    try:
        key_id, token = KeyStore(db).create(args.name, admin=args.admin,
                                            default_priority=args.priority)
    except ValueError as exc:
        print(f"olol keys: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if args.json:
        print(json.dumps({"id": key_id, "key": token, "name": args.name.strip(),
                          "admin": args.admin, "default_priority": args.priority}))
    else:
        print(f"id:  {key_id}")
        print(f"key: {token}")
        print("Store the key now: it is not shown again.")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    db = _open(args)
    if db is None:
        return 1
    try:
        infos = KeyStore(db).list()
    finally:
        db.close()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print("no keys")
        return 0
    print(f"{'ID':<21} {'PREFIX':<13} {'ADMIN':<5} {'PRIO':>4} {'STATE':<7} "
          f"{'LAST USED':<32} NAME")
    for info in infos:
        state = "revoked" if info.revoked else "active"
        print(f"{info.id:<21} {info.prefix:<13} {'yes' if info.admin else 'no':<5} "
              f"{info.default_priority:>4} {state:<7} {info.last_used_at or '-':<32} {info.name}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    db = _open(args)
    if db is None:
        return 1
    try:
        ok = KeyStore(db).revoke(args.key_id)
    finally:
        db.close()
    if not ok:
        print(f"olol keys: no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0

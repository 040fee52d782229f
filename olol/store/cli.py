"""``olol db check|compact|dump``: inspect and maintain a data folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from olol.store import journal as jr
from olol.store.database import DatabaseManager, default_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="inspect and maintain the store")
    sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data folder (default: $OLOL_DATA_DIR, else $XDG_DATA_HOME/olol)"
    )
    p = sub.add_parser("check", parents=[common], help="verify the snapshot and every journal")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser(
        "compact", parents=[common], help="force a checkpoint (the folder must not be in use)"
    )
    p.set_defaults(func=cmd_compact)
    p = sub.add_parser("dump", parents=[common], help="print a table (or all) as JSON")
    p.add_argument("table", nargs="?", help="table name (default: every table)")
    p.set_defaults(func=cmd_dump)


def _dir(args: argparse.Namespace) -> Path:
    return default_data_dir(args.data_dir)


def check_data_dir(data_dir: Path) -> tuple[bool, list[str]]:
    """Read-only verification; safe while a proxy owns the folder."""
    lines: list[str] = []
    ok = True
    if not data_dir.is_dir():
        return False, [f"{data_dir}: no such folder"]
    snap = data_dir / jr.SNAPSHOT
    if snap.exists():
        try:
            tables, meta = jr.read_snapshot(snap)
            rows = sum(len(r) for r in tables.values())
            lines.append(
                f"snapshot {snap.name}: ok, {len(tables)} tables, {rows} rows, "
                f"covers journals from generation {meta.get('generation', 0)}"
            )
            from tinydb import TinyDB

            with TinyDB(snap, access_mode="r") as stock:
                stock.tables()
            lines.append("snapshot opens with stock TinyDB: ok")
        except Exception as exc:  # report every failure, never a traceback
            ok = False
            lines.append(f"snapshot {snap.name}: BAD: {exc}")
    else:
        lines.append("snapshot: none yet")
    try:
        journals = jr.list_journals(data_dir)
    except jr.StoreError as exc:
        return False, lines + [f"BAD: {exc}"]
    for _gen, path in journals:
        try:
            records, good, size = jr.scan_journal(path)
        except jr.StoreCorruptError as exc:
            ok = False
            lines.append(f"{path.name}: BAD: {exc}")
            continue
        state = "ok" if good == size else f"torn tail of {size - good} bytes (cut at next open)"
        lines.append(f"{path.name}: {len(records)} records, {size} bytes, {state}")
    if (data_dir / (jr.SNAPSHOT + ".tmp")).exists():
        lines.append(f"{jr.SNAPSHOT}.tmp: unfinished checkpoint (removed at next open)")
    try:
        rec = jr.recover(data_dir, repair=False)
        lines.append(f"recovery: ok, {sum(len(r) for r in rec.tables.values())} rows")
    except jr.StoreError as exc:
        ok = False
        lines.append(f"recovery: BAD: {exc}")
    return ok, lines


def cmd_check(args: argparse.Namespace) -> int:
    ok, lines = check_data_dir(_dir(args))
    for line in lines:
        print(line)
    print("store is healthy" if ok else "store has problems")
    return 0 if ok else 1


def cmd_compact(args: argparse.Namespace) -> int:
    try:
        db = DatabaseManager(_dir(args), background_checkpoints=False)
    except jr.StoreError as exc:
        print(f"olol db: {exc}", file=sys.stderr)
        return 1
    try:
        result = db.checkpoint()
    finally:
        db.close()
    print(json.dumps(result))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    try:
        rec = jr.recover(_dir(args), repair=False)
    except jr.StoreError as exc:
        print(f"olol db: {exc}", file=sys.stderr)
        return 1
    tables = rec.tables
    if args.table:
        if args.table not in tables:
            print(f"olol db: no table {args.table!r}; tables: {', '.join(sorted(tables))}",
                  file=sys.stderr)
            return 1
        out = {str(k): v for k, v in sorted(tables[args.table].items())}
    else:
        out = {t: {str(k): v for k, v in sorted(r.items())} for t, r in sorted(tables.items())}
    json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0

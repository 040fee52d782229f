"""Restart consistency, crash recovery, damaged files and folder ownership."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinydb import Query, TinyDB

from olol.store import DatabaseManager, StoreCorruptError, StoreLockedError
from olol.store import journal as jr
from olol.store.cli import check_data_dir

Q = Query()
ROOT = Path(__file__).resolve().parents[2]


def fill(db, n=50):
    ids = db.insert_many(
        "inference_queue",
        [{"id": f"r{i}", "model": "llama3", "status": "pending", "priority": i % 3} for i in range(n)],
    )
    db.update("inference_queue", {"status": "processing", "server_assigned": "n1:50051"}, ids[:10])
    db.remove("inference_queue", ids[-5:])
    return {d["id"]: dict(d) for d in db.all("inference_queue")}


def snapshot_of(db):
    return {d["id"]: dict(d) for d in db.all("inference_queue")}


def test_close_and_reopen_gives_the_same_data(tmp_path):
    with DatabaseManager(tmp_path) as db:
        expected = fill(db)
    with DatabaseManager(tmp_path) as db:
        assert snapshot_of(db) == expected
        assert db.insert("servers", {"address": "a:1"}) == 1


def test_reopen_without_close_replays_the_journal(tmp_path):
    """Write, drop without close (the process exits abruptly), reopen: same data."""
    code = (
        "import os, json, sys\n"
        "from olol.store import DatabaseManager\n"
        "from tests.store.test_durability import fill\n"
        "db = DatabaseManager(sys.argv[1])\n"
        "print(json.dumps(fill(db)), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    expected = json.loads(out.stdout)
    assert not (tmp_path / jr.SNAPSHOT).exists()  # nothing but the journal was written
    with DatabaseManager(tmp_path) as db:
        assert snapshot_of(db) == expected
        assert db.recovery.replayed > 0


def test_snapshot_is_a_stock_tinydb_file(tmp_path):
    with DatabaseManager(tmp_path) as db:
        expected = fill(db)
        db.checkpoint()
    with TinyDB(tmp_path / jr.SNAPSHOT, access_mode="r") as stock:
        rows = {d["id"]: dict(d) for d in stock.table("inference_queue").all()}
    assert rows == expected
    assert [p for _, p in jr.list_journals(tmp_path)]  # the current journal
    assert len(jr.list_journals(tmp_path)) == 1  # older generations were dropped


def test_ids_survive_restart_even_when_the_highest_was_removed(tmp_path):
    with DatabaseManager(tmp_path) as db:
        ids = db.insert_many("servers", [{"address": "a:1"}, {"address": "b:1"}])
        db.remove("servers", ids[-1])
    with DatabaseManager(tmp_path) as db:
        assert db.insert("servers", {"address": "c:1"}) > ids[-1]


def test_torn_journal_tail_is_cut_and_the_prefix_recovered(tmp_path):
    db = DatabaseManager(tmp_path, background_checkpoints=False)
    for i in range(20):
        db.insert("servers", {"address": f"h{i}:1"})
    db._journal.flush()
    gen, path = jr.list_journals(tmp_path)[-1]
    db._stop.set()
    db._journal.close()
    db._dirlock.release()
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    rng = random.Random(7)
    for cut_case in range(6):
        cut = rng.randrange(len(data) - len(lines[-1]) + 1, len(data))
        torn = data[:cut] if cut_case % 2 else data[: len(data) - len(lines[-1])] + b"deadbeef {garb"
        path.write_bytes(torn)
        with DatabaseManager(tmp_path, background_checkpoints=False) as again:
            addresses = {d["address"] for d in again.all("servers")}
        # every complete record survives, the torn one does not
        assert {f"h{i}:1" for i in range(19)} <= addresses
        assert "h19:1" not in addresses
        # restore for the next case (the reopen checkpointed; rebuild from scratch)
        for f in tmp_path.iterdir():
            if f.name != "LOCK":
                f.unlink()
        path.write_bytes(data)


def test_damage_in_the_middle_of_the_journal_is_a_hard_error(tmp_path):
    db = DatabaseManager(tmp_path, background_checkpoints=False)
    for i in range(10):
        db.insert("servers", {"address": f"h{i}:1"})
    db._journal.close()
    db._dirlock.release()
    _, path = jr.list_journals(tmp_path)[-1]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"h", b"H", 1)  # CRC no longer matches
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(StoreCorruptError, match="damaged"):
        DatabaseManager(tmp_path)
    assert path.read_bytes() == damaged  # nothing was "repaired" away


def test_leftover_temp_snapshot_is_ignored_and_removed(tmp_path):
    with DatabaseManager(tmp_path) as db:
        expected = fill(db)
    (tmp_path / (jr.SNAPSHOT + ".tmp")).write_bytes(b'{"inference_queue": {"1": {"id": "half')
    with DatabaseManager(tmp_path) as db:
        assert snapshot_of(db) == expected
    assert not (tmp_path / (jr.SNAPSHOT + ".tmp")).exists()


@pytest.mark.parametrize(
    "content,match",
    [
        (b'{"servers": {"1": {"address": "a:1"}}', "does not parse"),
        (b"[1, 2, 3]", "not an olol/TinyDB database"),
        (b'{"servers": {"x": {}}}', "non-numeric id"),
        (b"\x00\xff\xfe garbage", "does not parse"),
    ],
)
def test_foreign_or_broken_snapshot_refuses_to_open_and_is_kept(tmp_path, content, match):
    (tmp_path / jr.SNAPSHOT).write_bytes(content)
    with pytest.raises(StoreCorruptError, match=match):
        DatabaseManager(tmp_path)
    assert (tmp_path / jr.SNAPSHOT).read_bytes() == content
    # the folder is not left locked
    DatabaseManager.memory()
    ok, lines = check_data_dir(tmp_path)
    assert not ok and any("BAD" in line for line in lines)


def test_unrelated_files_in_the_folder_are_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with DatabaseManager(tmp_path) as db:
        fill(db)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(Exception, match="not a folder"):
        DatabaseManager(target)


def test_second_opener_gets_a_clear_error_naming_folder_and_pid(tmp_path):
    with DatabaseManager(tmp_path):
        with pytest.raises(StoreLockedError) as err:
            DatabaseManager(tmp_path)
        assert str(tmp_path) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    DatabaseManager(tmp_path).close()  # released after close


def test_second_process_is_refused(tmp_path):
    with DatabaseManager(tmp_path):
        code = (
            "import sys\nfrom olol.store import DatabaseManager, StoreLockedError\n"
            "try:\n    DatabaseManager(sys.argv[1])\nexcept StoreLockedError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, timeout=60
        )
    assert out.returncode == 3
    assert f"pid {os.getpid()}" in out.stdout.decode()


def test_writes_are_durable_before_they_return(tmp_path):
    """Count fsyncs: a returned write has been synced (sync hook sees it first)."""
    synced = []
    db = DatabaseManager(tmp_path, sync=lambda fd: synced.append(os.fstat(fd).st_size))
    before = len(synced)
    db.insert("servers", {"address": "a:1"})
    assert len(synced) == before + 1
    _, path = jr.list_journals(tmp_path)[-1]
    assert synced[-1] == path.stat().st_size
    db.close()


def test_insert_without_wait_does_not_sync_and_a_later_waited_write_covers_it(tmp_path):
    """The sync hook sees no fsync for ``wait=False``; the next waited write's one
    fsync takes the earlier line with it (one append-only file, written in order)."""
    synced = []
    db = DatabaseManager(tmp_path, background_checkpoints=False,
                         sync=lambda fd: synced.append(os.fstat(fd).st_size))
    _, path = jr.list_journals(tmp_path)[-1]
    before, size = len(synced), path.stat().st_size
    db.insert("servers", {"address": "a:1"}, wait=False)
    assert len(synced) == before and path.stat().st_size == size  # still in the buffer
    db.insert("models", {"name": "m"})
    assert len(synced) == before + 1
    lines = path.read_bytes()[size:].splitlines()
    assert [jr.decode_line(line + b"\n")[0][1] for line in lines] == ["servers", "models"]
    db.close()


UNSYNCED_THEN_CRASH = (
    "import os, sys\n"
    "from olol.store import DatabaseManager\n"
    "db = DatabaseManager(sys.argv[1], background_checkpoints=False)\n"
    "db.insert('servers', {'address': 'synced:1'})\n"
    "db.insert('servers', {'address': 'unsynced:1'}, wait=False)\n"
    "if sys.argv[2] == 'then-wait':\n"
    "    db.insert('models', {'name': 'after'})\n"
    "os._exit(0)\n"
)


@pytest.mark.parametrize("then", ["crash", "then-wait"])
def test_an_unsynced_insert_is_lost_in_a_crash_unless_a_later_write_waited(tmp_path, then):
    out = subprocess.run([sys.executable, "-c", UNSYNCED_THEN_CRASH, str(tmp_path), then],
                         cwd=ROOT, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    with DatabaseManager(tmp_path, background_checkpoints=False) as db:
        addresses = {d["address"] for d in db.all("servers")}
        models = [d["name"] for d in db.all("models")]
        if then == "crash":
            assert addresses == {"synced:1"} and models == []
            # its id is free again: nothing on disk refers to the lost document
            assert db.insert("servers", {"address": "next:1"}) == 2
        else:
            assert addresses == {"synced:1", "unsynced:1"} and models == ["after"]


def run_crash_rounds(tmp_path, kills, seed):
    rng = random.Random(seed)
    issued: dict[str, int] = {}
    acked: dict[str, int] = {}
    deleted: set[str] = set()
    deleting: set[str] = set()  # issued, maybe applied, maybe not
    for run in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.crash_writer", str(tmp_path), str(run)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout.readline().strip() == b"READY", proc.stderr.read().decode()
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        for raw in out.decode().splitlines():
            parts = raw.split()
            if len(parts) < 2 or not raw.endswith(parts[-1]):
                continue
            if parts[0] == "I" and len(parts) == 3:
                issued[parts[1]] = max(issued.get(parts[1], 0), int(parts[2]))
            elif parts[0] == "A" and len(parts) == 3:
                acked[parts[1]] = max(acked.get(parts[1], 0), int(parts[2]))
            elif parts[0] == "D":
                deleted.add(parts[1])
            elif parts[0] == "X":
                deleting.add(parts[1])
        # every file parses
        snap = tmp_path / jr.SNAPSHOT
        if snap.exists():
            json.loads(snap.read_bytes())
            with TinyDB(snap, access_mode="r") as stock:
                stock.tables()
        ok, lines = check_data_dir(tmp_path)
        assert ok, lines
        with DatabaseManager(tmp_path, background_checkpoints=False) as db:
            docs = [d for d in db.all("config") if d["key"] != "schema_version"]
        # the content is the one written with that version, never a mix
        for d in docs:
            assert d["value"]["pad"] == ("x" if d["value"]["v"] == 1 else "y") * 300, d["key"]
        state = {d["key"]: d["value"]["v"] for d in docs}
        for key, v in acked.items():
            if key in deleted or key in deleting:
                continue
            assert key in state, f"acknowledged write of {key} lost after kill {run}"
            assert state[key] >= v, f"{key}: acknowledged v{v}, recovered v{state[key]}"
        for key in deleted:
            assert key not in state, f"acknowledged delete of {key} undone after kill {run}"
        for key, v in state.items():
            assert v <= issued.get(key, 0), f"{key}: v{v} was never issued"
    return len(acked)


def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    assert run_crash_rounds(tmp_path, kills=3, seed=1) > 50


@pytest.mark.slow
def test_sigkill_many_times(tmp_path):
    assert run_crash_rounds(tmp_path, kills=25, seed=2) > 500


def test_db_cli_check_compact_dump(tmp_path, capsys):
    from olol.cli import main

    with DatabaseManager(tmp_path) as db:
        expected = fill(db)
    assert main(["db", "check", "--data-dir", str(tmp_path)]) == 0
    assert "store is healthy" in capsys.readouterr().out
    assert main(["db", "compact", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpointed"] is True
    assert main(["db", "dump", "inference_queue", "--data-dir", str(tmp_path)]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert {d["id"]: d for d in dumped.values()} == expected
    assert main(["db", "dump", "nope", "--data-dir", str(tmp_path)]) == 1
    assert "no table 'nope'" in capsys.readouterr().err
    assert main(["db", "dump", "--data-dir", str(tmp_path / "missing")]) == 1
    with DatabaseManager(tmp_path):
        assert main(["db", "compact", "--data-dir", str(tmp_path)]) == 1
        assert "in use" in capsys.readouterr().err


@pytest.mark.parametrize(
    "snapshot,match",
    [
        (b'{"__olol_meta__": {"1": {"generation": "x"}}}', "damaged"),
        (b'{"__olol_meta__": {"1": 5}}', "not an object"),
        (b'{"servers": {"1": 5}}', "document 1 of table 'servers' is not an object"),
    ],
)
def test_damaged_snapshot_contents_are_refused_clearly(tmp_path, snapshot, match, capsys):
    from olol.cli import main

    (tmp_path / jr.SNAPSHOT).write_bytes(snapshot)
    with pytest.raises(StoreCorruptError, match=match):
        DatabaseManager(tmp_path)
    assert main(["db", "check", "--data-dir", str(tmp_path)]) == 1
    assert "store has problems" in capsys.readouterr().out
    assert main(["db", "dump", "--data-dir", str(tmp_path)]) == 1
    assert match in capsys.readouterr().err
    assert (tmp_path / jr.SNAPSHOT).read_bytes() == snapshot


def test_an_unreadable_journal_is_a_clear_error(tmp_path, capsys):
    from olol.cli import main

    with DatabaseManager(tmp_path) as db:
        fill(db)
    (tmp_path / jr.journal_name(99)).mkdir()  # a folder where a journal file should be
    with pytest.raises(StoreCorruptError, match="cannot read journal"):
        DatabaseManager(tmp_path)
    assert main(["db", "check", "--data-dir", str(tmp_path)]) == 1
    assert "cannot read journal" in capsys.readouterr().out

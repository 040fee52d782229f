"""SyncManager: the store first, then RAM; the store wins a disagreement."""

import threading

import pytest
from tinydb import Query

from olol.store import DatabaseManager, SchemaError, SyncManager

Q = Query()


def test_load_write_read(db):
    db.insert("servers", {"address": "seed:1", "healthy": True})
    sync = SyncManager(db, tables=["servers", "models"])
    assert sync.load_initial_state() == {"servers": 1, "models": 0}
    doc_id = sync.write_and_sync("servers", {"address": "b:1", "healthy": False})
    assert db.get("servers", doc_id)["address"] == "b:1"  # in the store
    rows = sync.read_from_ram("servers", Q.healthy == False)  # noqa: E712
    assert [r["address"] for r in rows] == ["b:1"] and rows[0]["doc_id"] == doc_id
    sync.write_and_sync("servers", {"healthy": True}, doc_id=doc_id)
    assert len(sync.read_from_ram("servers", {"healthy": True})) == 2
    with pytest.raises(KeyError):
        sync.write_and_sync("servers", {"healthy": True}, doc_id=999)


def test_a_failed_store_write_leaves_ram_untouched(db):
    sync = SyncManager(db, tables=["servers"])
    sync.load_initial_state()
    with pytest.raises(SchemaError):
        sync.write_and_sync("servers", {"address": 12})
    assert sync.read_from_ram("servers") == []


def test_ram_rows_are_copies(db):
    sync = SyncManager(db, tables=["servers"])
    sync.write_and_sync("servers", {"address": "a:1", "hardware_info": {"gpu": []}})
    sync.read_from_ram("servers")[0]["hardware_info"]["gpu"].append("x")
    assert sync.read_from_ram("servers")[0]["hardware_info"] == {"gpu": []}


def test_force_sync_reports_and_corrects_drift(db):
    sync = SyncManager(db, tables=["servers"])
    a = sync.write_and_sync("servers", {"address": "a:1"})
    b = sync.write_and_sync("servers", {"address": "b:1"})
    # someone writes to the store behind the manager's back
    db.update("servers", {"healthy": False}, a)
    db.remove("servers", b)
    db.insert("servers", {"address": "c:1"})
    report = sync.force_sync("servers")
    assert report == {"servers": {"added": 1, "removed": 1, "changed": 1}}
    assert sorted(r["address"] for r in sync.read_from_ram("servers")) == ["a:1", "c:1"]
    assert sync.force_sync() == {"servers": {"added": 0, "removed": 0, "changed": 0}}


def test_ram_state_survives_restart_through_the_store(tmp_path):
    with DatabaseManager(tmp_path) as db:
        SyncManager(db, tables=["models"]).write_and_sync("models", {"name": "llama3", "usage_count": 3})
    with DatabaseManager(tmp_path) as db:
        sync = SyncManager(db, tables=["models"])
        sync.load_initial_state()
        assert sync.read_from_ram("models", {"name": "llama3"})[0]["usage_count"] == 3


def test_concurrent_write_and_sync_keeps_ram_equal_to_store(db):
    sync = SyncManager(db, tables=["servers"])
    sync.load_initial_state()

    def work(n):
        for i in range(100):
            sync.write_and_sync("servers", {"address": f"t{n}-{i}:1"})

    threads = [threading.Thread(target=work, args=(n,), name=f"sync-{n}") for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(sync.read_from_ram("servers")) == 800
    assert sync.force_sync("servers") == {"servers": {"added": 0, "removed": 0, "changed": 0}}


def test_get_db_returns_the_configured_default(tmp_path, monkeypatch):
    from olol.store import configure_db, default_data_dir, get_db, reset_default_db

    monkeypatch.setenv("OLOL_DATA_DIR", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert default_data_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("OLOL_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "olol"
    mem = DatabaseManager.memory()
    try:
        assert configure_db(mem) is mem and get_db() is mem
        assert SyncManager().db is mem
        reset_default_db()
        db = get_db()  # opens the default folder
        assert db.data_dir == tmp_path / "xdg" / "olol"
        db.close()
    finally:
        reset_default_db()

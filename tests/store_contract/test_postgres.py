"""What only the PostgreSQL store does: several processes (here: several stores) on one
database, row locks that skip, change notices between them, and a server that goes away.
"""

from __future__ import annotations

import sys
import threading

import pytest

from olol.store import (
    DatabaseManager,
    PostgresStore,
    SchemaError,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from olol.store.schema import SCHEMA_VERSION
from tests.pgserver import free_port
from tests.support import FakeClock, wait_until


def server(addr, **kw):
    return {"address": addr, "healthy": True, **kw}


@pytest.fixture
def stores(pg_dsn):
    """Opens PostgresStores on one fresh database; closes them afterwards."""
    opened = []

    def open_(**kw):
        store = PostgresStore(pg_dsn, **{"min_size": 1, "max_size": 8, **kw})
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_two_stores_see_each_others_writes_and_notices(stores):
    a, b = stores(origin="proxy-a"), stores(origin="proxy-b")
    seen_by_b = []
    b.watch("servers", lambda *args: seen_by_b.append(args))
    seen_by_a = []
    a.watch("servers", lambda *args: seen_by_a.append(args))
    ids = a.insert_many("servers", [server("a:1"), server("b:1")])
    assert [d["address"] for d in b.all("servers")] == ["a:1", "b:1"]
    assert wait_until(lambda: ("servers", ids, "proxy-a") in seen_by_b)
    b.update("servers", {"load": 0.5}, ids[1])
    assert a.get("servers", ids[1])["load"] == 0.5
    assert wait_until(lambda: ("servers", [ids[1]], "proxy-b") in seen_by_a)
    with b.transaction():
        b.truncate("servers")
    assert wait_until(lambda: ("servers", None, "proxy-b") in seen_by_a)
    # each store announced its own changes once, after the commit, in the writing thread
    assert seen_by_a.count(("servers", ids, "proxy-a")) == 1
    assert ("servers", [ids[1]], "proxy-b") in seen_by_b


def test_large_changes_are_sent_in_chunks(stores):
    a, b = stores(), stores()
    got: list = []
    payloads: list = []
    receive = b._receive_many
    b._receive_many = lambda batch: (payloads.extend(batch), receive(batch))
    b.watch("servers", lambda table, ids, origin: got.append(ids))
    ids = a.insert_many("servers", [server(f"h{i}:1") for i in range(3000)])
    assert wait_until(lambda: sum(len(x) for x in got) >= len(ids))
    # more than one notice, each below PostgreSQL's 8,000 bytes; received together,
    # they reach the watcher as few calls as possible
    assert len(payloads) >= 2 and all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(i for chunk in got for i in chunk) == ids


def test_a_transaction_is_isolated_until_its_commit(stores):
    a, b = stores(), stores()
    seen = []
    with a.transaction():
        a.insert("servers", server("a:1"))
        reader = threading.Thread(target=lambda: seen.append(b.count("servers")),
                                  name="reader", daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert seen == [0]
    assert b.count("servers") == 1


def test_skip_locked_leaves_out_rows_another_transaction_holds(stores):
    a, b = stores(), stores()
    ids = a.insert_many("servers", [server("a:1"), server("b:1"), server("c:1")])
    holding, release = threading.Event(), threading.Event()
    errors = []

    def hold():
        try:
            with a.transaction():
                assert [d.doc_id for d in a.lock("servers", [ids[0]])] == [ids[0]]
                holding.set()
                release.wait(timeout=30)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=hold, name="holder", daemon=True)
    t.start()
    try:
        assert holding.wait(timeout=30)
        with b.transaction():
            got = b.lock("servers", ids, skip_locked=True)
            assert [d.doc_id for d in got] == ids[1:]
        with a.transaction():  # another thread of the holder's store: skipped too
            assert [d.doc_id for d in a.lock("servers", ids, skip_locked=True)] == ids[1:]
    finally:
        release.set()
        t.join(timeout=30)
    assert not errors and not t.is_alive()
    with b.transaction():
        assert [d.doc_id for d in b.lock("servers", ids, skip_locked=True)] == ids


def test_ids_are_unique_under_concurrent_inserts(stores):
    a, b = stores(max_size=8), stores(max_size=8)
    got: list[int] = []
    errors = []
    lock = threading.Lock()

    def work(store):
        try:
            for k in range(25):
                ids = (store.insert_many("servers", [server("x:1"), server("y:1")]) if k % 2
                       else [store.insert("servers", server("z:1"))])
                with lock:
                    got.extend(ids)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=((a, b)[n % 2],), name=f"ins-{n}")
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(got) == len(set(got)) == 8 * (12 * 2 + 13)
    assert a.count("servers") == len(got)


def test_concurrent_upserts_of_one_record_insert_it_once(stores):
    a, b = stores(), stores()
    errors = []
    start = threading.Barrier(8)

    def work(store, n):
        try:
            start.wait(timeout=30)
            store.upsert("config", {"key": "shared", "value": n}, {"key": "shared"})
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=((a, b)[n % 2], n), name=f"ups-{n}")
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert a.count("config", {"key": "shared"}) == 1


def test_stores_starting_together_create_the_schema_once(pg_dsn):
    opened, errors = [], []
    start = threading.Barrier(4)

    def open_one():
        try:
            start.wait(timeout=30)
            opened.append(PostgresStore(pg_dsn, min_size=1, max_size=2))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, name=f"open-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors and len(opened) == 4
        assert all(s.schema_version() == SCHEMA_VERSION for s in opened)
    finally:
        for s in opened:
            s.close()


def test_text_with_nul_characters_is_a_schema_error(stores):
    db = stores()
    with pytest.raises(SchemaError, match="table 'servers'.*NUL"):
        db.insert("servers", server("a\x00:1"))
    doc_id = db.insert("servers", server("a:1"))
    with pytest.raises(SchemaError, match="NUL"):
        db.update("servers", {"hardware_info": {"x": "\x00"}}, doc_id)
    assert db.get("servers", doc_id)["address"] == "a:1"


def test_stats_name_the_pool_and_the_listener(stores):
    db = stores(origin="me")
    db.watch("servers", lambda *a: None)
    stats = db.stats()
    assert stats["backend"] == "postgresql" and stats["origin"] == "me"
    assert stats["listen_connected"] is True
    assert stats["pool_size"] >= 1 and stats["pool_in_use"] >= 0
    assert db.checkpoint()["checkpointed"] is False


def test_open_store_picks_the_backend(pg_dsn, tmp_path):
    clock = FakeClock()
    for spec in (pg_dsn, pg_dsn.replace("postgresql://", "postgres://", 1)):
        store = open_store(spec, clock=clock, min_size=1)
        try:
            assert isinstance(store, PostgresStore) and store.clock is clock
        finally:
            store.close()
    mem = open_store(":memory:", clock=clock)
    assert isinstance(mem, DatabaseManager) and not mem.durable
    folder = open_store(str(tmp_path / "data"), clock=clock)
    try:
        assert isinstance(folder, DatabaseManager) and folder.durable
    finally:
        folder.close()


def test_an_unreachable_server_names_host_and_port_but_never_the_password():
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailableError) as err:
        PostgresStore(f"postgresql://olol:s3cret-pw@127.0.0.1:{port}/olol", connect_timeout=1.0)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
    assert "refused" in message.lower()


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(StoreError, match=r"pip install 'olol\[postgresql\]'"):
        PostgresStore("postgresql://127.0.0.1:1/x")


def test_a_stopped_server_gives_unavailable_errors_then_recovers(pg_own_server):
    dsn = pg_own_server.create_database("olol")
    db = PostgresStore(dsn, min_size=1, max_size=4, connect_timeout=0.5, origin="me")
    try:
        notices = []
        db.watch("servers", lambda *args: notices.append(args))
        keep = db.insert("servers", server("a:1"))
        pg_own_server.stop()
        for call in (lambda: db.get("servers", keep),
                     lambda: db.insert("servers", server("b:1")),
                     lambda: db.update("servers", {"load": 1.0}, keep)):
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{pg_own_server.port}"):
                call()
        pg_own_server.start()
        assert wait_until(lambda: _works(db), timeout=60, step=0.2)
        assert [d["address"] for d in db.all("servers")] == ["a:1"]  # nothing half-applied
        assert db.get("servers", keep).get("load") is None
        # the listener reconnected: its watchers are told to reload the table
        assert wait_until(lambda: ("servers", None, "*") in notices, timeout=30)
    finally:
        db.close()


def test_idle_connections_survive_a_server_restart(pg_own_server):
    """The pool's idle connections die with the server; the first calls after it is back
    work all the same (a dead connection found at the first statement is replaced)."""
    dsn = pg_own_server.create_database("olol")
    db = PostgresStore(dsn, min_size=2, max_size=4, connect_timeout=5.0)
    try:
        doc_id = db.insert("servers", server("a:1"))
        pg_own_server.stop()
        pg_own_server.start()
        assert db.get("servers", doc_id)["address"] == "a:1"
        assert db.insert("servers", server("b:1")) > doc_id
        pg_own_server.stop()
        pg_own_server.start()
        with db.transaction():
            assert db.count("servers") == 2
    finally:
        db.close()


def test_a_transaction_cut_by_the_server_is_rolled_back(pg_own_server):
    dsn = pg_own_server.create_database("olol")
    db = PostgresStore(dsn, min_size=1, max_size=4, connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailableError):
            with db.transaction():
                db.insert("servers", server("a:1"))
                pg_own_server.stop()
                db.insert("servers", server("b:1"))
        pg_own_server.start()
        assert wait_until(lambda: _works(db), timeout=60, step=0.2)
        assert db.count("servers") == 0
    finally:
        db.close()


def _works(db) -> bool:
    try:
        db.count("servers")
    except StoreUnavailableError:
        return False
    return True

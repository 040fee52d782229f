"""One store contract, three backends: memory, TinyDB (journal + snapshot), PostgreSQL.

Every test runs on each backend (the ``db`` and ``backend`` fixtures of conftest.py);
what differs between them is said where a test looks at it.
"""

from __future__ import annotations

import threading

import pytest
from tinydb import Query

from olol.store import (
    SchemaError,
    StoreClosedError,
    StoreError,
    TableSchema,
    UnknownTableError,
)
from olol.store.schema import SCHEMA_VERSION, Field

Q = Query()
T0 = "2023-11-14T22:13:20.000000+00:00"  # FakeClock's start


def server(addr, **kw):
    return {"address": addr, "healthy": True, **kw}


def addresses(docs):
    return [d["address"] for d in docs]


# ---------------------------------------------------------------------- writes and reads
def test_insert_get_and_stamps(db, clock):
    doc_id = db.insert("servers", server("a:1"))
    got = db.get("servers", doc_id)
    assert got == {"address": "a:1", "healthy": True, "created_at": T0, "updated_at": T0}
    assert got.doc_id == doc_id
    clock.advance(60)
    db.update("servers", {"load": 0.5}, doc_id)
    got = db.get("servers", doc_id)
    assert got["created_at"] == T0
    assert got["updated_at"] == "2023-11-14T22:14:20.000000+00:00"
    assert got["load"] == 0.5
    assert db.get("servers", 999) is None


def test_an_explicit_created_at_is_kept(db):
    doc_id = db.insert("servers", server("a:1", created_at="2020-01-01T00:00:00+00:00"))
    got = db.get("servers", doc_id)
    assert got["created_at"] == "2020-01-01T00:00:00+00:00" and got["updated_at"] == T0


def test_insert_many_gives_increasing_ids_in_order(db):
    ids = db.insert_many("servers", [server(f"h{i}:1") for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert addresses(db.all("servers")) == [f"h{i}:1" for i in range(5)]
    assert [db.get("servers", i)["address"] for i in ids] == [f"h{i}:1" for i in range(5)]
    assert db.insert_many("servers", []) == []


def test_values_round_trip(db):
    info = {"gpu": [{"name": "x", "mem": 8.5}], "n": 3, "flag": False, "none": None,
            "text": "é ✓ \\u0000 \"q\""}
    doc_id = db.insert("servers", server("a:1", hardware_info=info, load=1.0))
    got = db.get("servers", doc_id)
    assert got["hardware_info"] == info and got["load"] == 1.0


def test_search_with_query_callable_and_mapping(db):
    db.insert_many("servers", [server("a:1", load=0.1), server("b:1", load=0.9), server("c:1")])
    assert addresses(db.search("servers", Q.load > 0.5)) == ["b:1"]
    assert addresses(db.search("servers", lambda d: "load" not in d)) == ["c:1"]
    assert addresses(db.search("servers", {"address": "a:1"})) == ["a:1"]
    assert addresses(db.search("servers", {"address": "a:1", "load": 0.9})) == []
    assert addresses(db.search("servers", {})) == ["a:1", "b:1", "c:1"]
    assert db.search_one("servers", Q.address == "c:1")["address"] == "c:1"
    assert db.search_one("servers", {"healthy": True})["address"] == "a:1"
    assert db.search_one("servers", Q.address == "zz") is None
    assert db.count("servers") == 3
    assert db.count("servers", Q.load.exists()) == 2
    assert db.count("servers", {"healthy": True}) == 3
    assert db.count("servers", {"address": "nope"}) == 0


def test_mapping_matches_json_values(db):
    """A mapping matches equal JSON values: numbers by value, ``None`` only where the
    field is present and null, objects and lists exactly (not by containment)."""
    hw = {"gpu": [{"name": "x"}], "cpu": 8}
    a = db.insert("servers", server("a:1", load=1.0, hardware_info=hw))
    b = db.insert("servers", server("b:1", load=None, hardware_info={"gpu": [{"name": "x"}]}))
    db.insert("servers", server("c:1"))
    assert [d.doc_id for d in db.search("servers", {"load": 1})] == [a]
    assert [d.doc_id for d in db.search("servers", {"load": None})] == [b]
    assert [d.doc_id for d in db.search("servers", {"hardware_info": hw})] == [a]
    assert [d.doc_id for d in db.search("servers", {"hardware_info": {"cpu": 8}})] == []
    assert [d.doc_id for d in db.search("servers", {"hardware_info": {"gpu": [{"name": "x"}]}})
            ] == [b]
    assert db.count("servers", {"hardware_info": {"gpu": []}}) == 0
    assert db.search("servers", {"missing": None}) == []


def test_bad_conditions_are_type_errors(db):
    doc_id = db.insert("servers", server("a:1"))
    with pytest.raises(TypeError):
        db.search("servers", 42)
    with pytest.raises(TypeError):
        db.update("servers", {"load": 1}, True)
    with pytest.raises(TypeError):
        db.update("servers", {"load": 1}, "a:1")
    with pytest.raises(TypeError):
        db.remove("servers", [doc_id, "x"])
    with pytest.raises(TypeError):
        db.update("servers", 42, doc_id)
    assert db.count("servers") == 1


def test_update_by_ids_by_query_and_with_a_callable(db):
    ids = db.insert_many("servers", [server(f"h{i}:1", load=0.0) for i in range(4)])
    assert db.update("servers", {"healthy": False}, ids[:2]) == ids[:2]
    assert db.count("servers", Q.healthy == False) == 2  # noqa: E712
    assert db.update("servers", {"load": 1.0}, Q.healthy == True) == ids[2:]  # noqa: E712
    assert db.update("servers", {"load": 3.0}, {"healthy": False}) == ids[:2]
    assert db.update("servers", {"load": 4.0}, [ids[3], ids[1]]) == [ids[3], ids[1]]

    def bump(doc):
        doc["hardware_info"] = {"cpu": {"cores": 8}}
        doc["load"] += 0.5

    assert db.update("servers", bump, ids[0]) == [ids[0]]
    got = db.get("servers", ids[0])
    assert got["load"] == 3.5 and got["hardware_info"] == {"cpu": {"cores": 8}}
    assert db.update("servers", {"load": 2.0}, 12345) == []
    assert db.update("servers", {"load": 2.0}, [12345]) == []
    assert db.update("servers", bump, lambda d: False) == []


def test_a_callable_update_can_remove_fields(db):
    doc_id = db.insert("servers", server("a:1", load=0.3))
    db.update("servers", lambda d: d.pop("load"), doc_id)
    assert "load" not in db.get("servers", doc_id)


def test_upsert_inserts_then_updates(db):
    [first] = db.upsert("config", {"key": "retry", "value": {"max": 3}}, Q.key == "retry")
    [again] = db.upsert("config", {"key": "retry", "value": {"max": 5}}, {"key": "retry"})
    assert first == again
    assert db.search_one("config", Q.key == "retry")["value"] == {"max": 5}
    assert db.count("config", {"key": "retry"}) == 1


def test_remove_and_truncate(db):
    ids = db.insert_many("servers", [server(f"h{i}:1") for i in range(5)])
    assert db.remove("servers", ids[0]) == [ids[0]]
    assert db.remove("servers", Q.address == "h1:1") == [ids[1]]
    assert db.remove("servers", {"address": "h2:1"}) == [ids[2]]
    assert db.remove("servers", [ids[3], 999]) == [ids[3]]
    assert db.remove("servers", 999) == []
    assert db.count("servers") == 1
    db.truncate("servers")
    assert db.count("servers") == 0 and db.all("servers") == []


def test_ids_are_never_reused(db):
    ids = db.insert_many("servers", [server("a:1"), server("b:1")])
    db.remove("servers", ids[-1])
    after_remove = db.insert("servers", server("c:1"))
    assert after_remove > ids[-1]
    db.truncate("servers")
    assert db.insert("servers", server("d:1")) > after_remove


def test_results_are_copies(db):
    doc_id = db.insert("servers", server("a:1", hardware_info={"gpu": [{"name": "x"}]}))
    got = db.get("servers", doc_id)
    got["hardware_info"]["gpu"].append({"name": "y"})
    got["address"] = "mutated"
    for doc in db.search("servers", Q.address == "a:1"):
        doc["hardware_info"]["gpu"].clear()
    db.all("servers")[0]["address"] = "again"
    fresh = db.get("servers", doc_id)
    assert fresh["address"] == "a:1" and fresh["hardware_info"] == {"gpu": [{"name": "x"}]}


def test_caller_mutating_its_input_does_not_change_the_store(db):
    doc = server("a:1", hardware_info={"gpu": []})
    doc_id = db.insert("servers", doc)
    doc["hardware_info"]["gpu"].append("late")
    fields = {"hardware_info": {"gpu": ["x"]}}
    db.update("servers", fields, doc_id)
    fields["hardware_info"]["gpu"].append("late")
    assert db.get("servers", doc_id)["hardware_info"] == {"gpu": ["x"]}


# ---------------------------------------------------------------------- schemas
@pytest.mark.parametrize("bad", [["a"], "text", 42, None])
def test_non_mapping_documents_are_refused(db, bad):
    with pytest.raises(SchemaError, match="table 'servers'.*mapping"):
        db.insert("servers", bad)
    assert db.count("servers") == 0


def test_unknown_table(db):
    with pytest.raises(UnknownTableError, match="unknown table 'nope'"):
        db.insert("nope", {"a": 1})
    for call in (lambda: db.search("nope", Q.a == 1), lambda: db.get("nope", 1),
                 lambda: db.count("nope"), lambda: db.remove("nope", 1),
                 lambda: db.update("nope", {"a": 1}, 1), lambda: db.all("nope")):
        with pytest.raises(UnknownTableError):
            call()


@pytest.mark.parametrize(
    "table,doc,field",
    [
        ("servers", {"healthy": True}, "address"),
        ("servers", {"address": 5}, "address"),
        ("servers", {"address": "a:1", "healthy": "yes"}, "healthy"),
        ("servers", {"address": "a:1", "load": True}, "load"),
        ("server_stats", {"server": "a", "timestamp": "t", "type": "bogus", "value": 1}, "type"),
        ("inference_queue", {"id": "r1", "model": "m", "status": "done?"}, "status"),
        ("models", {"name": "llama3", "usage_count": "many"}, "usage_count"),
        ("servers", {"address": "a:1", "hardware_info": {1, 2}}, "hardware_info"),
    ],
)
def test_schema_violations_name_table_and_field(db, table, doc, field):
    with pytest.raises(SchemaError) as err:
        db.insert(table, doc)
    assert f"table {table!r}" in str(err.value) and f"field {field!r}" in str(err.value)
    assert db.count(table) == 0


def test_a_bad_document_in_insert_many_inserts_none(db):
    with pytest.raises(SchemaError, match="field 'address'"):
        db.insert_many("servers", [server("a:1"), {"healthy": True}])
    assert db.count("servers") == 0


def test_invalid_update_changes_nothing(db):
    ids = db.insert_many("servers", [server("a:1", load=0.1), server("b:1", load=0.2)])
    with pytest.raises(SchemaError, match="field 'healthy'"):
        db.update("servers", {"healthy": "no"}, ids)
    with pytest.raises(SchemaError, match="field 'healthy'"):
        db.update("servers", {"healthy": "no"}, Q.load > 0)
    with pytest.raises(SchemaError):
        db.update("servers", {"load": object()}, ids[0])

    def breaks_the_second(doc):
        doc["load"] = 9.0
        if doc["address"] == "b:1":
            doc["address"] = None

    with pytest.raises(SchemaError, match="field 'address'"):
        db.update("servers", breaks_the_second, ids)
    assert [d["load"] for d in db.all("servers")] == [0.1, 0.2]
    # as the TinyDB store: an invalid value that changes no row is no error
    assert db.update("servers", {"healthy": "no"}, 999) == []


def test_an_exception_in_a_callable_update_changes_nothing(db):
    ids = db.insert_many("servers", [server("a:1", load=0.1), server("b:1", load=0.2)])

    def fails_on_the_second(doc):
        doc["load"] = 5.0
        if doc["address"] == "b:1":
            raise ValueError("no")

    with pytest.raises(ValueError):
        db.update("servers", fails_on_the_second, ids)
    assert [d["load"] for d in db.all("servers")] == [0.1, 0.2]


def test_register_table(backend, db):
    schema = TableSchema("things", {"name": Field("str", required=True)})
    db.register_table(schema)
    db.register_table(schema)  # twice is fine
    doc_id = db.insert("things", {"name": "x"})
    with pytest.raises(SchemaError, match="table 'things': field 'name'"):
        db.insert("things", {"name": 5})
    assert "things" in db.tables() and "servers" in db.tables()
    if backend.reopenable:
        db.close()
        again = backend.open()
        again.register_table(schema)
        assert again.get("things", doc_id)["name"] == "x"


# ---------------------------------------------------------------------- closing
def test_closed_store_refuses_writes(db):
    doc_id = db.insert("servers", server("a:1"))
    db.close()
    db.close()  # twice is fine
    assert db.closed
    with pytest.raises(StoreClosedError):
        db.insert("servers", server("b:1"))
    with pytest.raises(StoreClosedError):
        db.update("servers", {"load": 1.0}, doc_id)
    with pytest.raises(StoreClosedError):
        db.remove("servers", doc_id)
    with pytest.raises(StoreClosedError):
        with db.transaction():
            pass


def test_reopen_keeps_the_data(backend, db):
    if not backend.reopenable:
        pytest.skip("an in-memory store keeps nothing")
    ids = db.insert_many("servers", [server("a:1", load=0.5), server("b:1")])
    with db.transaction(wait=False):
        db.update("servers", {"healthy": False}, ids[1])
    db.close()
    again = backend.open()
    assert addresses(again.all("servers")) == ["a:1", "b:1"]
    assert again.get("servers", ids[1])["healthy"] is False
    assert again.insert("servers", server("c:1")) > ids[-1]


def stored_schema_version(backend, db):
    if backend.name == "postgresql":
        return db.schema_version()
    return db.search_one("config", Q.key == "schema_version")["value"]


def test_schema_version_is_stored(backend, db):
    assert stored_schema_version(backend, db) == SCHEMA_VERSION


def test_a_newer_schema_version_is_refused(backend, db):
    if not backend.reopenable:
        pytest.skip("an in-memory store keeps nothing")
    if backend.name == "postgresql":
        with db._pooled() as conn:
            conn.execute("UPDATE olol_meta SET value = '99' WHERE key = 'schema_version'")
    else:
        db.update("config", {"value": 99}, {"key": "schema_version"})
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        backend.open()


def test_stats_checkpoint_and_durability(backend, db):
    db.insert("servers", server("a:1"))
    stats = db.stats()
    assert stats["backend"] == backend.name
    assert stats["durable"] is db.durable is (backend.name != "memory")
    assert isinstance(stats["rows"], dict) and "servers" in stats["rows"]
    assert isinstance(db.checkpoint(), dict)
    assert db.origin


# ---------------------------------------------------------------------- transactions
def test_transaction_commits_together_and_rolls_back(db):
    with db.transaction():
        a = db.insert("servers", server("a:1"))
        db.update("servers", {"load": 0.3}, a)
        assert db.get("servers", a)["load"] == 0.3  # reads its own writes
        assert db.count("servers", {"address": "a:1"}) == 1
    assert db.get("servers", a)["load"] == 0.3
    with pytest.raises(RuntimeError, match="boom"):
        with db.transaction():
            db.update("servers", {"load": 0.9}, a)
            db.insert("servers", server("b:1"))
            db.remove("servers", a)
            assert db.get("servers", a) is None
            raise RuntimeError("boom")
    assert db.get("servers", a)["load"] == 0.3
    assert addresses(db.all("servers")) == ["a:1"]


def test_nested_transactions_join_the_outer_one(db):
    with pytest.raises(ValueError):
        with db.transaction():
            db.insert("servers", server("a:1"))
            with db.transaction():
                db.insert("servers", server("b:1"))
            assert db.count("servers") == 2
            raise ValueError("outer fails")
    assert db.count("servers") == 0
    with pytest.raises(ValueError):
        with db.transaction():
            db.insert("servers", server("a:1"))
            with db.transaction():
                db.insert("servers", server("b:1"))
                raise ValueError("inner fails")
    assert db.count("servers") == 0


def test_upsert_and_a_failing_write_inside_a_transaction(db):
    with pytest.raises(SchemaError):
        with db.transaction():
            db.upsert("config", {"key": "k", "value": 1}, {"key": "k"})
            db.insert("servers", {"healthy": True})  # no address: refused
    assert db.count("config", {"key": "k"}) == 0


def test_transaction_without_wait_is_visible_at_once(db):
    with db.transaction(wait=False):
        doc_id = db.insert("servers", server("a:1"))
    assert db.get("servers", doc_id)["address"] == "a:1"
    ids = db.insert_many("servers", [server("b:1")], wait=False)
    assert db.get("servers", ids[0])["address"] == "b:1"
    with db.transaction(wait=False):  # inside a transaction, the transaction decides
        db.insert("servers", server("c:1"), wait=True)
    assert db.count("servers") == 3


# ---------------------------------------------------------------------- lock
def test_lock_inside_a_transaction(db):
    ids = db.insert_many("servers", [server("a:1"), server("b:1"), server("c:1")])
    db.remove("servers", ids[1])
    with db.transaction():
        got = db.lock("servers", [ids[2], ids[1], ids[0], 999])
        assert [d.doc_id for d in got] == [ids[0], ids[2]]
        assert addresses(got) == ["a:1", "c:1"]
        assert db.lock("servers", [], skip_locked=True) == []
        db.update("servers", {"load": 1.0}, [d.doc_id for d in got])
    assert db.count("servers", {"load": 1.0}) == 2


def test_lock_outside_a_transaction_is_an_error(db):
    doc_id = db.insert("servers", server("a:1"))
    with pytest.raises(RuntimeError, match="transaction"):
        db.lock("servers", [doc_id])
    with pytest.raises(UnknownTableError):
        with db.transaction():
            db.lock("nope", [doc_id])


# ---------------------------------------------------------------------- compare and set
@pytest.mark.parametrize("in_transaction", [False, True])
@pytest.mark.parametrize("wait", [True, False])
def test_update_if_writes_only_rows_that_pass_and_bumps_counters(db, in_transaction, wait):
    ids = db.insert_many("config", [
        {"key": "a", "value": "pending", "n": 2},
        {"key": "b", "value": "done", "n": 5},
        {"key": "c", "value": "pending"},  # no counter yet: counts as 0
        {"key": "d", "value": "pending", "n": 1.5, "who": "x"},  # not an integer: 0
    ])
    calls = []
    db.watch("config", lambda *a: calls.append(a))
    if in_transaction:
        with db.transaction(wait=wait):
            got = db.update_if("config", [ids[3], ids[2], ids[1], ids[0], 999],
                               {"value": "taken"}, when={"value": ["pending"],
                                                         "who": [None, "y"]},
                               incr=("n",), wait=wait)
    else:
        got = db.update_if("config", [ids[3], ids[2], ids[1], ids[0], 999],
                           {"value": "taken"}, when={"value": ["pending"], "who": [None, "y"]},
                           incr=("n",), wait=wait)
    assert [(d.doc_id, d["value"], d["n"]) for d in got] == [(ids[0], "taken", 3),
                                                              (ids[2], "taken", 1)]
    assert db.get("config", ids[0])["n"] == 3 and db.get("config", ids[0])["value"] == "taken"
    assert db.get("config", ids[1])["value"] == "done"  # did not pass: untouched
    assert db.get("config", ids[3])["value"] == "pending"  # "who" is "x"
    assert calls == [("config", [ids[0], ids[2]], db.origin)]
    assert db.update_if("config", [ids[0]], {"value": "again"}, when={"value": ["pending"]}) == []
    assert db.update_if("config", [], {"value": "x"}, when={}) == []


def test_update_if_checks_the_schema(db):
    doc_id = db.insert("servers", server("a:1"))
    with pytest.raises(SchemaError):
        db.update_if("servers", [doc_id], {"healthy": "yes"}, when={})


# ---------------------------------------------------------------------- watch
def test_watch_fires_after_each_commit(db):
    calls = []
    db.watch("servers", lambda *a: calls.append(a))
    ids = db.insert_many("servers", [server("a:1"), server("b:1")])
    db.update("servers", {"load": 0.1}, ids[0])
    db.update("servers", {"load": 0.1}, 999)  # nothing changed: no call
    db.remove("servers", ids[1])
    db.insert("config", {"key": "k", "value": 1})  # another table: no call
    db.truncate("servers")
    assert calls == [("servers", ids, db.origin), ("servers", [ids[0]], db.origin),
                     ("servers", [ids[1]], db.origin), ("servers", None, db.origin)]


def test_watch_reports_a_transaction_once_and_a_rollback_never(db):
    calls = []
    db.watch("servers", lambda *a: calls.append(a))
    with db.transaction():
        a = db.insert("servers", server("a:1"))
        b = db.insert("servers", server("b:1"))
        db.update("servers", {"load": 0.5}, a)
        assert calls == []  # not before the commit
    assert calls == [("servers", [a, b], db.origin)]
    calls.clear()
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.insert("servers", server("c:1"))
            raise RuntimeError("rolled back")
    assert calls == []


def test_a_failing_watcher_does_not_fail_the_write_or_the_others(db):
    calls = []

    def broken(*_):
        raise RuntimeError("watcher bug")

    db.watch("servers", broken)
    db.watch("servers", lambda *a: calls.append(a))
    doc_id = db.insert("servers", server("a:1"))
    assert db.get("servers", doc_id) is not None
    assert calls == [("servers", [doc_id], db.origin)]


def test_watch_an_unknown_table(db):
    with pytest.raises(UnknownTableError):
        db.watch("nope", lambda *a: None)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_updates_lose_nothing(db):
    """8 threads x 40 read-modify-write updates of shared documents."""
    ids = db.insert_many("models", [{"name": f"m{i}", "usage_count": 0} for i in range(4)])
    errors = []

    def inc(doc):
        doc["usage_count"] += 1

    def work(n):
        try:
            for k in range(40):
                db.update("models", inc, ids[(n + k) % len(ids)])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,), name=f"writer-{n}") for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert [db.get("models", i)["usage_count"] for i in ids] == [80, 80, 80, 80]

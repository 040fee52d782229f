"""One contract, two implementations: in-memory and durable (journal + snapshot).

What every backend must do, PostgreSQL included, is in tests/store_contract/; these are
the checks that go further on the two TinyDB-side stores (stress, journal waits)."""

import threading

import pytest
from tinydb import Query

from olol.store import SchemaError

Q = Query()


def server(addr, **kw):
    return {"address": addr, "healthy": True, **kw}


def test_insert_get_and_timestamps(db, clock):
    doc_id = db.insert("servers", server("a:1"))
    got = db.get("servers", doc_id)
    assert got["address"] == "a:1"
    assert got.doc_id == doc_id
    assert got["created_at"] == "2023-11-14T22:13:20.000000+00:00"
    assert got["updated_at"] == got["created_at"]
    clock.advance(60)
    db.update("servers", {"load": 0.5}, doc_id)
    got = db.get("servers", doc_id)
    assert got["created_at"] == "2023-11-14T22:13:20.000000+00:00"
    assert got["updated_at"] == "2023-11-14T22:14:20.000000+00:00"
    assert got["load"] == 0.5
    assert db.get("servers", 999) is None


def test_insert_many_gives_increasing_ids(db):
    ids = db.insert_many("servers", [server(f"h{i}:1") for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [d["address"] for d in db.all("servers")] == [f"h{i}:1" for i in range(5)]


def test_search_with_query_callable_and_mapping(db):
    db.insert_many("servers", [server("a:1", load=0.1), server("b:1", load=0.9), server("c:1")])
    assert {d["address"] for d in db.search("servers", Q.load > 0.5)} == {"b:1"}
    assert {d["address"] for d in db.search("servers", lambda d: "load" not in d)} == {"c:1"}
    assert [d["address"] for d in db.search("servers", {"address": "a:1"})] == ["a:1"]
    assert db.search_one("servers", Q.address == "c:1")["address"] == "c:1"
    assert db.search_one("servers", Q.address == "zz") is None
    assert db.count("servers") == 3
    assert db.count("servers", Q.load.exists()) == 2


def test_update_by_ids_by_query_and_with_a_callable(db):
    ids = db.insert_many("servers", [server(f"h{i}:1", load=0.0) for i in range(4)])
    assert db.update("servers", {"healthy": False}, ids[:2]) == ids[:2]
    assert db.count("servers", Q.healthy == False) == 2  # noqa: E712
    assert db.update("servers", {"load": 1.0}, Q.healthy == True) == ids[2:]  # noqa: E712

    def bump(doc):
        doc["hardware_info"] = {"cpu": {"cores": 8}}
        doc["load"] += 0.5

    assert db.update("servers", bump, ids[0]) == [ids[0]]
    got = db.get("servers", ids[0])
    assert got["load"] == 0.5 and got["hardware_info"] == {"cpu": {"cores": 8}}
    assert db.update("servers", {"load": 2.0}, 12345) == []


def test_upsert_inserts_then_updates(db):
    [first] = db.upsert("config", {"key": "retry_policy", "value": {"max": 3}}, Q.key == "retry_policy")
    [again] = db.upsert("config", {"key": "retry_policy", "value": {"max": 5}}, Q.key == "retry_policy")
    assert first == again
    assert db.search_one("config", Q.key == "retry_policy")["value"] == {"max": 5}


def test_remove_and_truncate(db):
    ids = db.insert_many("servers", [server(f"h{i}:1") for i in range(4)])
    assert db.remove("servers", ids[0]) == [ids[0]]
    assert db.remove("servers", Q.address == "h1:1") == [ids[1]]
    assert db.count("servers") == 2
    db.truncate("servers")
    assert db.count("servers") == 0 and db.all("servers") == []


@pytest.mark.parametrize(
    "table,doc,field",
    [
        ("servers", {"healthy": True}, "address"),
        ("servers", {"address": 5}, "address"),
        ("servers", {"address": "a:1", "healthy": "yes"}, "healthy"),
        ("servers", {"address": "a:1", "load": True}, "load"),
        ("server_stats", {"server": "a", "timestamp": "t", "type": "bogus", "value": 1}, "type"),
        ("inference_queue", {"id": "r1", "model": "m", "status": "done?"}, "status"),
        ("inference_queue", {"id": "r1", "model": "m", "status": "pending", "priority": 1.5}, "priority"),
        ("models", {"name": "llama3", "usage_count": "many"}, "usage_count"),
        ("servers", {"address": "a:1", "hardware_info": {1, 2}}, "hardware_info"),
    ],
)
def test_schema_violations_name_table_and_field(db, table, doc, field):
    with pytest.raises(SchemaError) as err:
        db.insert(table, doc)
    assert f"table {table!r}" in str(err.value) and f"field {field!r}" in str(err.value)
    assert db.count(table) == 0


def test_invalid_update_changes_nothing(db):
    doc_id = db.insert("servers", server("a:1", load=0.1))
    with pytest.raises(SchemaError, match="field 'healthy'"):
        db.update("servers", {"healthy": "no"}, doc_id)
    with pytest.raises(SchemaError):
        db.update("servers", {"load": object()}, doc_id)

    def breaks(doc):
        doc["address"] = None

    with pytest.raises(SchemaError, match="field 'address'"):
        db.update("servers", breaks, doc_id)
    assert db.get("servers", doc_id)["load"] == 0.1


def test_schema_version_is_recorded(db):
    assert db.search_one("config", Q.key == "schema_version")["value"] == 1


def test_concurrent_updates_lose_nothing(db):
    """16 threads x 1,000 read-modify-write updates of shared documents."""
    ids = db.insert_many("models", [{"name": f"m{i}", "usage_count": 0} for i in range(4)])
    errors = []

    def work(n):
        try:
            for k in range(1000):
                doc_id = ids[(n + k) % len(ids)]

                def inc(doc):
                    doc["usage_count"] += 1

                db.update("models", inc, doc_id)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,), name=f"writer-{n}") for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    counts = [db.get("models", i)["usage_count"] for i in ids]
    assert sum(counts) == 16_000
    assert counts == [4000, 4000, 4000, 4000]


def test_concurrent_readers_never_see_torn_state(db):
    stop = threading.Event()
    problems = []
    db.insert("servers", server("seed:1"))

    def reader():
        while not stop.is_set():
            try:
                rows = db.all("servers")
                if any("address" not in r for r in rows):
                    problems.append("torn row")
            except Exception as exc:
                problems.append(repr(exc))

    t = threading.Thread(target=reader, name="reader")
    t.start()
    try:
        for i in range(300):
            db.insert("servers", server(f"h{i}:1"))
            if i % 3 == 0:
                db.remove("servers", Q.address == f"h{i}:1")
    finally:
        stop.set()
        t.join(timeout=30)
    assert problems == []
    assert db.count("servers") == 201


def test_transaction_without_wait_is_visible_at_once_and_durable_after_the_next_wait(db):
    with db.transaction(wait=False):
        doc_id = db.insert("servers", server("a:1"))
    assert db.get("servers", doc_id)["address"] == "a:1"
    db.insert("servers", server("b:1"))  # a waited write covers everything before it
    if db.durable:
        assert db._journal._durable == db._journal._seq


def test_insert_without_wait_is_visible_at_once_and_durable_after_the_next_wait(db):
    ids = db.insert_many("servers", [server("a:1"), server("b:1")], wait=False)
    doc_id = db.insert("servers", server("c:1"), wait=False)
    assert [db.get("servers", i)["address"] for i in (*ids, doc_id)] == ["a:1", "b:1", "c:1"]
    if db.durable:
        assert db._journal._durable < db._journal._seq  # queued, not synced yet
    db.update("servers", {"load": 0.5}, doc_id)  # a waited write covers everything before it
    if db.durable:
        assert db._journal._durable == db._journal._seq
    with db.transaction(wait=False):  # inside a transaction, the transaction decides
        db.insert("servers", server("d:1"), wait=True)
    assert db.count("servers") == 4

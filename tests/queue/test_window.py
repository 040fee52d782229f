"""pending_window: the head of the dispatch order, and whether it changed since a version."""

from __future__ import annotations

import pytest

from tests.queue.conftest import make_request


def test_unchanged_until_a_change(q, clock):
    assert q.pending_window(8) == (q.pending_window(8)[0], [], {})
    a, _ = q.enqueue(make_request(id="a"))
    version, ids, fresh = q.pending_window(8)
    assert ids == ["a"] and fresh["a"]["model_key"] == "llama3.2:1b"
    assert fresh["a"] == q.peek_summaries(1)[0]
    assert q.pending_window(8, version) is None  # nothing happened
    clock.advance(3600.0)
    assert q.pending_window(8, version) is None  # time alone changes no order

    changes = [
        lambda: q.enqueue(make_request(id="b", priority=2)),
        lambda: q.dequeue(1, ids=["b"]),
        lambda: q.requeue("b"),
        lambda: q.cancel("b"),
        lambda: q.enqueue(make_request(id="c")),
        lambda: q.update_request_status("c", "failed", error="x"),
    ]
    for change in changes:
        change()
        got = q.pending_window(8, version)
        assert got is not None
        assert got[0] > version
        version = got[0]
        assert got[1] == [d["id"] for d in q.peek_summaries(8)]


def test_only_unknown_ids_get_summaries(q):
    for rid in ("a", "b", "c"):
        q.enqueue(make_request(id=rid))
    _, ids, fresh = q.pending_window(2, known={"a": {}})
    assert ids == ["a", "b"] and set(fresh) == {"b"}


def test_a_delayed_request_counts_when_it_becomes_due(q, clock):
    q.enqueue(make_request(id="a"))
    q.dequeue(1, ids=["a"])
    q.requeue("a", delay_s=5.0)
    version, ids, _ = q.pending_window(8)
    assert ids == []
    clock.advance(6.0)
    version2, ids, _ = q.pending_window(8, version)
    assert ids == ["a"] and version2 > version


def test_a_rebuild_never_reuses_a_version(q):
    q.enqueue(make_request(id="j", kind="job"))
    version = q.pending_window(8)[0]
    q.recover()  # rebuilds the RAM index from the store: same contents, new index
    got = q.pending_window(8, version)
    assert got is not None and got[0] > version and got[1] == ["j"]


def test_limit_is_checked(q):
    with pytest.raises(ValueError):
        q.pending_window(0)

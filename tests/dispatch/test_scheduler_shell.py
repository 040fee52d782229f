"""RequestScheduler as the shell of place(): what it reads, what it claims."""

from __future__ import annotations

from tests.dispatch.conftest import MODEL, status

OTHER = "qwen2.5:0.5b"


def test_residency_is_read_from_the_cluster(rig):
    r = rig(("n1:1", "n2:1"))
    r.cluster.record_poll("n2:1", status(loaded=(MODEL,)), 1.0)
    r.submit("r1")
    first = r.scheduler.schedule_next_batch()
    assert first.node == "n2:1"
    r.scheduler.release(first)
    # the nodes report otherwise now: the scheduler follows the cluster, keeps no copy
    r.clock.advance(5.0)
    r.cluster.record_poll("n1:1", status(loaded=(MODEL,)), 1.0)
    r.cluster.record_poll("n2:1", status(loaded=()), 1.0)
    r.submit("r2")
    assert r.scheduler.schedule_next_batch().node == "n1:1"


def test_a_claim_is_noted_in_the_cluster(rig):
    r = rig(("n1:1",))
    r.submit("r1")
    a = r.scheduler.schedule_next_batch()
    assert a.cold
    assert MODEL in r.cluster.node("n1:1").loaded_models
    assert r.scheduler.slots_in_use() == {"n1:1": 1}
    r.scheduler.release(a)
    assert r.scheduler.slots_in_use() == {}


def test_a_newer_model_displaces_an_older_one_on_a_one_model_node(rig):
    r = rig(("n1:1", "n2:1"))
    for a in ("n1:1", "n2:1"):
        r.cluster.record_poll(a, status(models=(MODEL, OTHER), loaded=()), 1.0)
    r.submit("a1")
    first = r.scheduler.schedule_next_batch()
    r.scheduler.release(first)
    r.clock.advance(1.0)
    r.submit("b1", model=OTHER)
    second = r.scheduler.schedule_next_batch()
    assert second.node != first.node  # the idle node with nothing on it
    r.scheduler.release(second)
    r.clock.advance(1.0)
    r.submit("a2")
    assert r.scheduler.schedule_next_batch().node == first.node


def test_work_is_grouped_through_batch_similar_requests(rig):
    r = rig(("n1:1",))
    asked = []
    real = r.queue.batch_similar_requests

    def spy(*args, **kw):
        groups = real(*args, **kw)
        asked.append(groups)
        return groups

    r.queue.batch_similar_requests = spy
    for i in range(3):
        r.submit(f"e{i}", endpoint="embed", input="x")
    a = r.scheduler.schedule_next_batch()
    assert asked and asked[-1][0]["embed_merge"]
    assert [q["id"] for q in a.requests] == asked[-1][0]["ids"]


def test_a_session_stays_on_its_node(rig):
    r = rig(("n1:1", "n2:1"))
    r.cluster.record_poll("n1:1", status(loaded=(MODEL,), parallel=2), 1.0)
    r.cluster.record_poll("n2:1", status(loaded=(MODEL,), parallel=2), 1.0)
    r.submit("s1", session="abc")
    a = r.scheduler.schedule_next_batch()
    r.submit("x1")
    b = r.scheduler.schedule_next_batch()
    assert b.node != a.node  # the emptier node
    r.submit("s2", session="abc")
    assert r.scheduler.schedule_next_batch().node == a.node


def test_a_failed_node_loses_its_sessions_and_is_suspect(rig):
    r = rig(("n1:1", "n2:1"))
    r.submit("s1", session="abc")
    a = r.scheduler.schedule_next_batch()
    r.scheduler.release(a)
    r.scheduler.handle_server_failure(a.node, "gone")
    assert r.cluster.node(a.node).suspect
    r.submit("s2", session="abc")
    assert r.scheduler.schedule_next_batch().node != a.node


def test_a_poll_read_before_a_load_ended_does_not_undo_it(rig):
    r = rig(("n1:1", "n2:1"))
    for a in ("n1:1", "n2:1"):
        r.cluster.record_poll(a, status(models=(MODEL, OTHER)), 1.0)
    r.submit("a1")
    first = r.scheduler.schedule_next_batch()
    r.scheduler.release(first)
    # the node's /api/ps was read while the model was still loading: it shows nothing
    r.cluster.record_poll(first.node, status(models=(MODEL, OTHER), loaded=()), 1.0)
    r.submit("b1", model=OTHER)
    assert r.scheduler.schedule_next_batch().node != first.node
    # a later poll that still shows nothing is believed
    r.clock.advance(5.0)
    r.cluster.record_poll(first.node, status(models=(MODEL, OTHER), loaded=()), 1.0)
    r.submit("a2")
    again = r.scheduler.schedule_next_batch()
    assert again.node == first.node and again.cold


def test_node_views_are_reused_only_while_nothing_changed(rig):
    r = rig(("n1:2", "n2:2"))
    for a in ("n1:2", "n2:2"):
        r.cluster.record_poll(a, status(loaded=(), parallel=2), 1.0)
    r.submit("r1")
    first = r.scheduler.schedule_next_batch()
    r.submit("r2")
    second = r.scheduler.schedule_next_batch()
    # the second decision's view of first.node counts r1's slot (reserved after the
    # first decision's views were made): the views were rebuilt, not reused
    views = {v.address: v for v in r.scheduler._all_views[1]}
    assert sum(views[first.node].busy.values()) == 1
    r.scheduler.release(first)
    r.scheduler.release(second)
    # a poll that unloads the model everywhere reaches the next decision
    r.clock.advance(5.0)
    for a in ("n1:2", "n2:2"):
        r.cluster.record_poll(a, status(models=(MODEL, OTHER), loaded=(OTHER,), parallel=2),
                              1.0)
    r.submit("r3")
    third = r.scheduler.schedule_next_batch()
    assert third.cold  # not resident any more: the cached views were not reused

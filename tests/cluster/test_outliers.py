"""Outlier detection on its own (a fake clock, no nodes): when a node×model is
ejected, for how long, when it comes back, and when nobody may be blamed."""

from __future__ import annotations

from collections import Counter

import pytest

from olol.outliers import OutlierDetector
from olol.scheduler import RequestScheduler
from tests.support import FakeClock

M = "llama3.2:1b"
PEERS = ["a:1", "b:1", "c:1"]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def det(clock):
    return OutlierDetector(clock=clock, consecutive_failures=3, base_ejection_s=5.0,
                           max_ejection_s=20.0, decay_s=60.0)


def peers_succeed(det, *nodes):
    for node in nodes or ("b:1", "c:1"):
        det.success(node, M)


def test_failures_where_peers_succeed_count_at_once_and_eject_after_the_threshold(det):
    peers_succeed(det)
    for i in range(2):
        assert det.failure("a:1", M, PEERS).counted
        assert not det.is_ejected("a:1", M), i
    det.failure("a:1", M, PEERS)
    assert det.is_ejected("a:1", M)
    assert [e["event"] for e in det.events()] == ["ejected"]
    assert det.view(M).ejected == {"a:1"}


def test_a_success_resets_the_run(det):
    peers_succeed(det)
    det.failure("a:1", M, PEERS)
    det.failure("a:1", M, PEERS)
    det.success("a:1", M)
    det.failure("a:1", M, PEERS)
    det.failure("a:1", M, PEERS)
    assert not det.is_ejected("a:1", M)


def test_without_evidence_a_failure_waits_and_a_success_elsewhere_confirms_it(det):
    ticket = det.failure("a:1", M, PEERS)  # nobody has succeeded yet: not counted
    assert not ticket.counted
    assert det.view(M).held == {"a:1"}  # placed elsewhere while it is checked
    det.success("b:1", M)  # the retry succeeded on b
    det.confirm(ticket, PEERS)
    assert ticket.counted and det.view(M).held == frozenset()


def test_a_retracted_failure_cancels_the_ejection_it_caused(det):
    peers_succeed(det)
    tickets = [det.failure("a:1", M, PEERS) for _ in range(3)]
    assert det.is_ejected("a:1", M)
    det.retract(tickets[-1])  # the same request then failed alike elsewhere
    assert not det.is_ejected("a:1", M)
    assert det.events()[-1]["event"] == "ejection-cancelled"
    assert det.snapshot()[0]["failures"] == 2


def test_ejections_grow_up_to_the_cap_and_the_key_comes_back_on_probation(det, clock):
    peers_succeed(det)
    lengths = []
    for _ in range(6):
        for _ in range(3):
            if not det.is_ejected("a:1", M):
                det.failure("a:1", M, PEERS)
        lengths.append(det.events()[-1]["seconds"])
        clock.advance(lengths[-1])  # the ejection ends
        assert not det.is_ejected("a:1", M)
        assert "a:1" in det.view(M).limited  # on probation: one call at a time
        peers_succeed(det)
        det.failure("a:1", M, PEERS)  # one failure on probation ejects again
        assert det.is_ejected("a:1", M)
        lengths.append(det.events()[-1]["seconds"])
        clock.advance(lengths[-1])
        det.success("a:1", M)  # healed: probation over
        assert det.view(M) == det.view("other")
    assert lengths[:4] == [5.0, 10.0, 15.0, 20.0]
    assert max(lengths) == 20.0


def test_the_ejection_count_decays_while_the_node_behaves(det, clock):
    peers_succeed(det)
    for _ in range(3):
        det.failure("a:1", M, PEERS)
    clock.advance(5)
    det.success("a:1", M)
    clock.advance(120)  # two decay periods without trouble
    peers_succeed(det)
    for _ in range(3):
        det.failure("a:1", M, PEERS)
    assert det.events()[-1]["seconds"] == 5.0  # back to the base length


def test_never_more_than_the_allowed_share_of_a_models_nodes(det):
    peers_succeed(det, "c:1")
    for node in ("a:1", "b:1"):
        for _ in range(3):
            det.failure(node, M, PEERS)
    assert det.view(M).ejected == {"a:1"}  # b is as bad, but one of three is the most


def test_the_only_node_of_a_model_is_never_ejected(det):
    for _ in range(10):
        det.failure("a:1", M, ["a:1"], count=True)
    assert not det.is_ejected("a:1", M)


def test_a_failure_rate_far_above_the_peers_ejects(clock):
    det = OutlierDetector(clock=clock, consecutive_failures=100, rate_window=20,
                          rate_min_requests=10, failure_rate=0.5)
    for i in range(20):
        det.success("b:1", M)
        det.success("c:1", M)
        if i % 3 == 2:
            det.success("a:1", M)
        else:
            det.failure("a:1", M, PEERS)
        clock.advance(0.1)
    assert det.is_ejected("a:1", M)
    assert "failure rate" in det.events()[-1]["detail"]


def test_the_same_rate_everywhere_ejects_nobody(clock):
    det = OutlierDetector(clock=clock, consecutive_failures=100)
    for i in range(30):
        for node in PEERS:
            if i % 2:
                det.success(node, M)
            else:
                det.failure(node, M, PEERS, count=True)
        clock.advance(0.1)
    assert det.view(M).ejected == frozenset()


def test_after_a_failure_a_key_takes_one_call_at_a_time(det):
    peers_succeed(det, "a:1", "b:1", "c:1")
    det.failure("a:1", M, PEERS)
    assert det.view(M).limited == {"a:1"}
    det.success("a:1", M)
    assert det.view(M).limited == frozenset()


# -- the scheduler respects the view ------------------------------------------------


class _Node:
    def __init__(self, address):
        self.address = address
        self.available_models = {M: {}}
        self.loaded_models = {M: {}}
        self.parallel = 4
        self.cpu_load = 0.0
        self.vram_free = 0
        self.last_check = 1.0


class _Cluster:
    def __init__(self, det):
        self.outliers = det
        self.nodes = [_Node(a) for a in PEERS]

    def healthy_nodes(self):
        return list(self.nodes)

    def list_nodes(self):
        return list(self.nodes)

    def outlier_view(self, model):
        return self.outliers.view(model)


def _place(sched, rid="r1"):
    return sched.assign_server([{"id": rid, "model_key": M, "enqueued_ts": 0}],
                               demand=Counter({M: 1}))


def test_the_scheduler_skips_ejected_and_avoided_nodes(det, clock):
    sched = RequestScheduler(queue_manager=None, cluster_manager=_Cluster(det), clock=clock)
    peers_succeed(det)
    for _ in range(3):
        det.failure("a:1", M, PEERS)
    for _ in range(10):
        assert _place(sched) in ("b:1", "c:1")
    sched.avoid("r1", "b:1")
    assert _place(sched, "r1") == "c:1"
    assert _place(sched, "r2") in ("b:1", "c:1")
    sched.avoid("r1", "c:1")
    # every node it may use failed it: back to those (a:1 stays ejected)
    assert _place(sched, "r1") in ("b:1", "c:1")
    sched.forget("r1")

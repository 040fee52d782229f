"""Dispatcher.tick(now): one claim and its run, on fake node clients and injected clocks."""

from __future__ import annotations

import grpc

from olol.hub import CHUNK, DONE, ERROR
from olol.rpc.client import NodeError
from tests.dispatch.conftest import MODEL, FakeStream, final


def events(channel):
    out = []
    while (e := channel.poll()) is not None:
        out.append(e)
    return out


def test_nothing_queued_nothing_done(rig):
    r = rig()
    assert r.dispatcher.tick() is None
    assert all(not n.calls for n in r.nodes.values())


def test_start_and_success(rig):
    r = rig()
    ch = r.submit("r1")
    a = r.dispatcher.tick(r.clock())
    assert a is not None and a.requests[0]["id"] == "r1"
    assert [e.kind for e in events(ch)] == [CHUNK, DONE]
    assert r.status_of("r1") == "completed"
    assert a.node in r.nodes and len(r.nodes[a.node].calls) == 1
    assert r.scheduler.slots_in_use() == {}  # the slot came back
    assert r.dispatcher.tick() is None  # nothing left


def test_success_notes_the_model_loaded_and_learns_its_times(rig):
    r = rig(("n1:1",))
    r.nodes["n1:1"].script = lambda body: FakeStream([final(load_s=2.5, total_s=3.0)])
    r.submit("r1")
    a = r.dispatcher.tick()
    assert a.cold
    assert MODEL in r.cluster.node("n1:1").loaded_models
    assert r.scheduler.timings.load_s("n1:1", MODEL) == 2.5
    assert abs(r.scheduler.timings.service_s("n1:1", MODEL) - 0.5) < 1e-9


def test_a_node_failure_is_retried_on_another_node(rig):
    r = rig()

    def broken(body):
        raise NodeError(grpc.StatusCode.UNAVAILABLE, "connection refused", 502)

    ch = r.submit("r1")
    a = r.dispatcher.tick()
    # the first try went to a node that works: make the next one fail instead
    assert r.status_of("r1") == "completed"
    r.nodes[a.node].script = broken
    ch2 = r.submit("r2")
    b = r.dispatcher.tick()
    assert b.node == a.node  # the model is loaded there: placement prefers it
    assert r.status_of("r2") == "pending"  # back in the queue, not failed
    assert r.cluster.node(a.node).suspect
    assert r.scheduler.slots_in_use() == {}
    c = r.dispatcher.tick()
    assert c is not None and c.node != a.node
    assert r.status_of("r2") == "completed"
    assert [e.kind for e in events(ch2)] == [CHUNK, DONE]
    assert [e.kind for e in events(ch)] == [CHUNK, DONE]


def test_a_failure_everywhere_ends_in_an_error_after_max_attempts(rig):
    r = rig(max_attempts=2)

    def broken(body):
        raise NodeError(grpc.StatusCode.UNAVAILABLE, "connection refused", 502)

    for n in r.nodes.values():
        n.script = broken
    ch = r.submit("r1")
    assert r.dispatcher.tick() is not None
    assert r.dispatcher.tick() is not None
    assert r.status_of("r1") == "failed"
    [e] = events(ch)
    assert e.kind == ERROR and e.data["status"] == 502
    assert r.scheduler.slots_in_use() == {}


def test_a_refused_request_is_answered_as_the_node_said(rig):
    r = rig()

    def refuse(body):
        raise NodeError(grpc.StatusCode.INVALID_ARGUMENT, "invalid option", 400)

    for n in r.nodes.values():
        n.script = refuse
    ch = r.submit("r1")
    r.dispatcher.tick()
    assert r.status_of("r1") == "failed"
    [e] = events(ch)
    assert (e.kind, e.data["status"], e.data["error"]) == (ERROR, 400, "invalid option")
    assert not any(r.cluster.node(a).suspect for a in r.nodes)
    assert r.scheduler.slots_in_use() == {}


def test_a_stream_cut_before_its_end_is_retried(rig):
    r = rig()
    cut = {"done": False}

    def cut_once(body):
        if cut["done"]:
            return FakeStream([final("ok")])
        cut["done"] = True
        return FakeStream([])  # the node closed the stream before the final record

    for n in r.nodes.values():
        n.script = cut_once
    r.submit("r1")
    r.dispatcher.tick()
    assert r.status_of("r1") == "pending"
    assert r.scheduler.slots_in_use() == {}
    r.dispatcher.tick()
    assert r.status_of("r1") == "completed"


def test_cancellation_stops_the_node_call_and_frees_the_slot(rig):
    r = rig(("n1:1",))
    streams = []

    def slow(body):
        def before(i):
            if i == 1:  # the caller cancels while the node generates
                r.queue.cancel("r1")

        s = FakeStream([{"model": MODEL, "response": "a", "done": False},
                        {"model": MODEL, "response": "b", "done": False}, final()], before)
        streams.append(s)
        return s

    r.nodes["n1:1"].script = slow
    r.submit("r1")
    r.dispatcher.tick()
    assert streams[0].cancelled
    assert r.status_of("r1") == "cancelled"
    assert r.scheduler.slots_in_use() == {}
    assert not r.cluster.node("n1:1").suspect  # nobody is blamed for a cancel


def test_a_caller_gone_cancels_the_request(rig):
    r = rig(("n1:1",))
    r.submit("r1", listen=False)
    r.dispatcher.tick()
    assert r.status_of("r1") == "cancelled"
    assert r.scheduler.slots_in_use() == {}


def test_a_long_generation_refreshes_its_lease_on_the_injected_clock(rig):
    r = rig(("n1:1",), lease_refresh_s=10.0)
    leases = []

    def long(body):
        def before(i):
            leases.append(r.queue.get("r1")["lease_until"])
            r.mono.now += 6.0  # each record comes 6 s after the one before
            r.clock.advance(6.0)

        return FakeStream([{"model": MODEL, "response": "x", "done": False}] * 3 + [final()],
                          before)

    r.nodes["n1:1"].script = long
    r.submit("r1")
    r.dispatcher.tick()
    assert r.status_of("r1") == "completed"
    # refreshed once 10 s of the dispatcher's clock had passed (at the 2nd record), not before
    assert leases[0] == leases[1] < leases[2]


def test_an_unexpected_error_fails_the_batch_and_frees_the_slot(rig):
    r = rig(("n1:1",))

    def bug(body):
        raise RuntimeError("a bug")

    r.nodes["n1:1"].script = bug
    ch = r.submit("r1")
    r.dispatcher.tick()
    assert r.status_of("r1") == "failed"
    [e] = events(ch)
    assert e.kind == ERROR and e.data["status"] == 500
    assert r.scheduler.slots_in_use() == {}


def test_a_model_no_node_has_fails_with_404(rig):
    r = rig()
    ch = r.submit("r1", model="nowhere:1b")
    assert r.dispatcher.tick() is None
    assert r.status_of("r1") == "failed"
    [e] = events(ch)
    assert (e.kind, e.data["status"]) == (ERROR, 404)


def test_embeds_of_one_model_are_merged_into_one_call(rig):
    r = rig(("n1:1",))
    chans = [r.submit(f"e{i}", endpoint="embed", input=f"{'x' * (i + 1)}") for i in range(3)]
    a = r.dispatcher.tick()
    assert a.mode == "embed_merge" and len(a.requests) == 3
    assert len(r.nodes["n1:1"].calls) == 1
    for i, ch in enumerate(chans):
        [e] = events(ch)
        assert e.kind == DONE and e.data["embeddings"] == [[float(i + 1)]]


def test_identical_requests_are_coalesced_into_one_call(rig):
    r = rig(("n1:1",))
    body = {"model": MODEL, "prompt": "same", "stream": False, "options": {"seed": 1}}
    for rid in ("c1", "c2"):
        r.queue.enqueue({"id": rid, "kind": "sync", "endpoint": "generate", "api": "ollama",
                         "model": MODEL, "body": dict(body), "stream": False,
                         "coalesce_key": "k", "batch_key": "b"})
        r.hub.open(rid)
    a = r.dispatcher.tick()
    assert a.mode == "coalesced" and [q["id"] for q in a.requests] == ["c1", "c2"]
    assert len(r.nodes["n1:1"].calls) == 1
    assert r.status_of("c1") == r.status_of("c2") == "completed"


def test_a_stopping_dispatcher_claims_nothing(rig):
    """A job waits for the next start; a synchronous caller is answered at once (no
    other proxy can run its request) and the record says why."""
    r = rig()
    r.submit("j1", kind="job")
    channel = r.submit("r1")
    r.dispatcher.stop(grace_s=0.0)
    assert r.dispatcher.tick() is None
    assert r.status_of("j1") == "pending"
    assert r.status_of("r1") == "interrupted"
    event = channel.poll()
    assert event.kind == "error" and event.data["status"] == 503
    assert event.data["error"] == "the proxy is stopping; try again"


def test_a_relayed_answer_refreshes_its_lease_on_the_injected_clock(rig):
    """A relay (streamed chat or pass-through) calls the dispatcher's lease keeper for
    each record it reads: the lease is extended once lease_refresh_s has passed."""
    r = rig(("n1:1",), lease_refresh_s=10.0)
    r.submit("r1", listen=False)
    assert [d["id"] for d in r.queue.dequeue(1, ids=["r1"], server="n1:1")] == ["r1"]
    keep = r.dispatcher._lease_keeper("r1")
    leases = [r.queue.get("r1")["lease_until"]]
    for _ in range(3):
        r.mono.now += 6.0
        r.clock.advance(6.0)
        keep()
        leases.append(r.queue.get("r1")["lease_until"])
    # refreshed at 12 s of the dispatcher's clock (the 2nd record), not before or again
    assert leases[0] == leases[1] < leases[2] == leases[3]

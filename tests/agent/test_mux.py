"""``rpc Mux``: Generate and Chat calls to one agent on one long-lived call.

What the multiplexed call must add to the plain calls (whose behaviour the other
agent tests check on both paths): one call for many streams, records of parallel
slots sharing messages, per-call flow control, bounds, fallback, shutdown.
"""

from __future__ import annotations

import selectors
import threading
import types

import grpc
import orjson
import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.rpc.client import NodeClient, NodeError

from .conftest import make_sim, wait_until


def chat(content: str, tokens: int, stream: bool = True) -> dict:
    return {"model": "llama3.2:1b", "stream": stream, "options": {"num_predict": tokens, "seed": 7},
            "messages": [{"role": "user", "content": content}]}


@pytest.fixture(scope="module")
def paced_sim():
    """Four slots decoding in step at 50 tokens/s."""
    s = make_sim(tokens_per_second=50.0, parallel=4)
    yield s
    s.stop()


@pytest.fixture
def paced_agent(paced_sim):
    a = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=paced_sim.url)).start()
    yield a
    a.stop(0)


def _run(client: NodeClient, body: dict, out: dict, key: str) -> None:
    try:
        out[key] = [r for r in client.chat(body)]
    except NodeError as exc:
        out[key] = exc


def test_parallel_streams_share_one_call_and_its_messages(paced_sim, paced_agent):
    """Four streams at once: one Mux session serves them, each gets its own answer
    (the same as a plain call's), and the records the node's slots wrote at the same
    step travelled together in fewer messages than records."""
    prompts = [f"question {i}" for i in range(4)]
    with NodeClient(paced_agent.address, mux=False) as plain:
        expected = {p: [r["message"]["content"] for r in plain.chat(chat(p, 20))] for p in prompts}
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        out: dict = {}
        threads = [threading.Thread(target=_run, args=(client, chat(p, 20), out, p)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for p in prompts:
            assert not isinstance(out[p], NodeError), out[p]
            assert [r["message"]["content"] for r in out[p]] == expected[p]
            assert out[p][-1]["done"] is True and sum(r["done"] for r in out[p]) == 1
        sessions = paced_agent.servicer.mux_sessions()
        assert len(sessions) == 1
        session = sessions[0]
        assert session.messages < session.parts


def test_cancelling_one_stream_leaves_the_others_running(paced_sim, paced_agent):
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        before = paced_sim.stats()["generations_cancelled"]
        doomed = client.chat(chat("cancel me", 500))
        other = client.chat(chat("keep me", 30))
        assert next(doomed)["done"] is False
        doomed.cancel()
        assert wait_until(lambda: paced_sim.stats()["generations_cancelled"] == before + 1)
        records = list(other)
        assert records[-1]["done"] is True and len(records) == 31
        with pytest.raises(NodeError) as info:
            list(doomed)
        assert info.value.code == grpc.StatusCode.CANCELLED
        assert wait_until(lambda: client.status()["agent"]["in_flight_total"] == 0)


def test_an_agent_without_mux_gets_plain_calls(paced_agent):
    paced_agent.servicer._mux_pool = None  # as an agent older than Mux answers: UNIMPLEMENTED
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        records = list(client.chat(chat("old agent", 5)))
        assert records[-1]["done"] is True and len(records) == 6
        assert client._mux is not None and client._mux.supported is False
        again = list(client.chat(chat("old agent", 5)))  # straight to a plain call
        assert again == records or [r["message"] for r in again] == [r["message"] for r in records]


def test_a_slow_reader_holds_back_its_own_call_only():
    """A stream nobody reads: the agent stops reading Ollama for it once its window
    is full; another stream on the same session is served meanwhile, and the held
    one completes, whole, once read."""
    # no pacing: Ollama writes as fast as it can, and long answers
    sim = make_sim(parallel=4, response_tokens=(1500, 2000))
    window = 4096
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url))
    try:
        agent.start()
        agent.servicer._mux_window = window
        with NodeClient(agent.address, mux_lone=True) as client:
            held = client.chat(chat("a long answer", 2000))
            assert next(held)["done"] is False
            session = agent.servicer.mux_sessions()[0]
            assert wait_until(lambda: any(v > window for v in session.unacked().values()))
            other = list(client.chat(chat("a short one", 10)))
            assert other[-1]["done"] is True and len(other) == 11
            # still held: what was sent and not acknowledged is the window plus at
            # most one part (one read from Ollama, 64 KiB), not the whole answer
            unacked = list(session.unacked().values())
            assert unacked and max(unacked) <= window + 65536 + 4096
            rest = list(held)
            assert rest[-1]["done"] is True
        with NodeClient(agent.address, mux=False) as plain:
            whole = list(plain.chat(chat("a long answer", 2000)))
        assert len(rest) + 1 == len(whole) and len(whole) * 100 > 2 * (window + 65536 + 4096)
    finally:
        agent.stop(0)
        sim.stop()


def test_calls_beyond_the_session_bound_get_503(paced_agent):
    paced_agent.servicer._mux_calls = 2
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        first, second = client.chat(chat("a", 200)), client.chat(chat("b", 200))
        next(first), next(second)
        with pytest.raises(NodeError) as info:
            list(client.chat(chat("c", 5)))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.http_status == 503
        first.cancel()
        second.cancel()


def test_a_stopping_agent_finishes_open_calls_and_refuses_new_ones(paced_agent):
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        running = client.chat(chat("finish me", 15))
        assert next(running)["done"] is False
        paced_agent.servicer.drain_mux()
        with pytest.raises(NodeError) as info:
            list(client.chat(chat("too late", 5)))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.retryable
        rest = list(running)
        assert rest[-1]["done"] is True and len(rest) == 15


def test_an_agent_that_goes_away_fails_its_streams_as_retryable(paced_sim):
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=paced_sim.url)).start()
    with NodeClient(agent.address, mux_lone=True) as client:
        stream = client.chat(chat("interrupted", 500))
        assert next(stream)["done"] is False
        agent.stop(0)
        with pytest.raises(NodeError) as info:
            list(stream)
        assert info.value.retryable


@pytest.fixture
def small_window_agent():
    sim = make_sim(parallel=4, response_tokens=(1500, 2000))
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url))
    try:
        agent.start()
        agent.servicer._mux_window = 4096
        yield sim, agent
    finally:
        agent.stop(0)
        sim.stop()


def test_cancelling_a_held_stream_releases_its_ollama_request(small_window_agent):
    sim, agent = small_window_agent
    with NodeClient(agent.address, mux_lone=True) as client:
        held = client.chat(chat("a long answer", 2000))
        assert next(held)["done"] is False
        session = agent.servicer.mux_sessions()[0]
        assert wait_until(lambda: any(v > 4096 for v in session.unacked().values()))
        held.cancel()
        assert wait_until(lambda: client.status()["agent"]["in_flight_total"] == 0)
        assert wait_until(lambda: sim.stats()["active_generations"] == 0)
        assert wait_until(lambda: not session.unacked())


@pytest.fixture
def held_pause(monkeypatch):
    """The session's first pause of a stream (its window full) is held open until
    the test releases it: (pausing, release) events."""
    pausing = threading.Event()
    release = threading.Event()

    class SlowToPause(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def unregister(self, fileobj):
            if not pausing.is_set():
                pausing.set()
                release.wait(5)
            return super().unregister(fileobj)

    monkeypatch.setattr("olol.agent.mux.selectors", types.SimpleNamespace(
        DefaultSelector=SlowToPause, EVENT_READ=selectors.EVENT_READ))
    yield pausing, release
    release.set()


def test_a_cancel_that_races_the_pause_of_a_full_window_still_releases(held_pause,
                                                                        small_window_agent):
    """A cancel taken while the session pauses the stream finishes it all the same
    (a pause decided outside the lock the cancel takes left it paused for good, its
    Ollama request and slot held: the test above failed once in CI)."""
    pausing, release = held_pause
    sim, agent = small_window_agent
    with NodeClient(agent.address, mux_lone=True) as client:
        held = client.chat(chat("a long answer", 2000))
        assert next(held)["done"] is False
        assert pausing.wait(5)
        session = agent.servicer.mux_sessions()[0]
        held.cancel()
        assert wait_until(lambda: not session.unacked())  # the cancel is taken
        release.set()
        assert wait_until(lambda: client.status()["agent"]["in_flight_total"] == 0)
        assert wait_until(lambda: sim.stats()["active_generations"] == 0)


def test_a_lone_call_goes_on_its_own_and_overlapping_ones_share_the_mux(paced_agent):
    """The proxy's client: a call with no other in flight takes a plain call (fewest
    thread hand-offs); one that overlaps another goes on the multiplexed call."""
    with NodeClient(paced_agent.address) as client:
        assert list(client.chat(chat("alone", 3)))[-1]["done"] is True
        assert paced_agent.servicer.mux_sessions() == []
        first = client.chat(chat("first", 30))
        next(first)
        second = client.chat(chat("second", 3))
        assert list(second)[-1]["done"] is True
        assert len(paced_agent.servicer.mux_sessions()) == 1
        assert list(first)[-1]["done"] is True


# --------------------------------------------------------------- the session's two calls
def _raw_stub(address: str):
    from olol.rpc import node_pb2_grpc

    channel = grpc.insecure_channel(address)
    return channel, node_pb2_grpc.NodeAgentStub(channel)


def test_the_session_needs_a_name_and_one_coordinator_call(paced_agent, monkeypatch):
    import olol.agent.service as service
    from olol.rpc import node_pb2

    monkeypatch.setattr(service, "JOIN_S", 0.3)
    channel, stub = _raw_stub(paced_agent.address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.MuxListen(node_pb2.MuxHello(session=""), timeout=5)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a MuxSend naming no session is refused once the join wait is over
        with pytest.raises(grpc.RpcError) as info:
            stub.MuxSend(iter([node_pb2.MuxUp()]), timeout=5,
                         metadata=(("x-olol-mux-session", "nobody"),))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # a session can be opened once, and joined once
        listen = stub.MuxListen(node_pb2.MuxHello(session="s1"), timeout=10)
        assert wait_until(lambda: len(paced_agent.servicer.mux_sessions()) == 1)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stub.MuxListen(node_pb2.MuxHello(session="s1"), timeout=5)))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        hold = threading.Event()
        first = stub.MuxSend.future(iter(hold.wait, True), timeout=10,
                                    metadata=(("x-olol-mux-session", "s1"),))
        assert wait_until(lambda: paced_agent.servicer.mux_sessions()[0]._joined)
        with pytest.raises(grpc.RpcError) as info:
            stub.MuxSend(iter([node_pb2.MuxUp()]), timeout=5,
                         metadata=(("x-olol-mux-session", "s1"),))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        first.cancel()
        listen.cancel()
    finally:
        channel.close()


def test_a_session_that_no_coordinator_call_joins_ends(paced_agent, monkeypatch):
    import olol.agent.mux as mux
    from olol.rpc import node_pb2

    monkeypatch.setattr(mux, "JOIN_S", 0.3)
    channel, stub = _raw_stub(paced_agent.address)
    try:
        listen = stub.MuxListen(node_pb2.MuxHello(session="lonely"), timeout=10)
        assert list(listen) == []  # ended by the agent, without an error
        assert wait_until(lambda: paced_agent.servicer.mux_sessions() == [])
    finally:
        channel.close()


def test_the_single_bidirectional_call_still_serves_older_coordinators(paced_agent):
    import queue

    from olol.rpc import node_pb2

    channel, stub = _raw_stub(paced_agent.address)
    try:
        ups: queue.SimpleQueue = queue.SimpleQueue()
        ups.put(node_pb2.MuxUp(open=[node_pb2.MuxOpen(
            id=1, path="/api/chat", model="llama3.2:1b",
            body=orjson.dumps(chat("older coordinator", 5)))]))
        call = stub.Mux(iter(ups.get, None), timeout=10)
        bodies = []
        for down in call:
            for part in down.parts:
                assert part.id == 1 and not part.code
                bodies.extend(line for line in part.body.split(b"\n") if line)
                if part.end:
                    break
            else:
                continue
            break
        ups.put(None)
        call.cancel()
        records = [orjson.loads(b) for b in bodies]
        assert len(records) == 6 and records[-1]["done"] is True
    finally:
        channel.close()


def test_the_coordinator_reads_the_session_on_its_own_thread(paced_agent):
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        assert list(client.chat(chat("one thread", 3)))[-1]["done"] is True
        # a server-streaming call on a SingleThreadedUnaryStream channel: read by the
        # reader thread itself, no channel thread in between
        assert type(client._mux._call).__name__ == "_SingleThreadedRendezvous"


def test_a_session_whose_coordinator_call_fails_ends_its_streams_as_retryable(paced_agent,
                                                                             monkeypatch):
    from olol.agent.mux import MuxSession

    monkeypatch.setattr(MuxSession, "join", lambda self, requests: False)  # refused: 409
    with NodeClient(paced_agent.address, mux_lone=True) as client:
        with pytest.raises(NodeError) as info:
            list(client.chat(chat("no way up", 3)))
        # ended by this side at once (not when the agent gives up on the session), as
        # a node failure the dispatcher retries elsewhere
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.http_status == 503
        assert "multiplexed session failed (ALREADY_EXISTS)" in info.value.message
        assert client._mux.supported  # not mistaken for an agent without the calls

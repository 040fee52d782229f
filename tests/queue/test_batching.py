"""batch_similar_requests: grouping by runner, coalescing, embed merge."""

from __future__ import annotations

from tests.queue.conftest import make_request


def _by_model(groups):
    return {(g["model_key"], g["endpoint"]): g for g in groups}


def test_groups_by_model_and_runner_options(q):
    a1, _ = q.enqueue(make_request(model="llama3.2:1b", prompt="a1"))
    b1, _ = q.enqueue(make_request(model="qwen2:0.5b", prompt="b1"))
    a2, _ = q.enqueue(make_request(model="llama3.2:1b", endpoint="chat", prompt="a2"))
    # A different context size needs another runner: its own group.
    a3, _ = q.enqueue(make_request(model="llama3.2:1b", prompt="a3", options={"num_ctx": 8192}))
    groups = q.batch_similar_requests()
    assert [g["ids"] for g in groups] == [[a1, a2], [b1], [a3]]
    first = groups[0]
    assert first["model_key"] == "llama3.2:1b"
    assert first["endpoint"] == "mixed"  # generate + chat share a runner
    assert groups[1]["endpoint"] == "generate"
    assert not any(g["embed_merge"] for g in groups)
    assert all(g["coalesced"] == {} for g in groups)
    # Nothing was claimed.
    assert len(q.peek()) == 4


def test_groups_follow_dispatch_order(q):
    low, _ = q.enqueue(make_request(model="llama3.2:1b", priority=0))
    high, _ = q.enqueue(make_request(model="qwen2:0.5b", priority=5))
    groups = q.batch_similar_requests()
    assert [g["ids"] for g in groups] == [[high], [low]]
    assert groups[0]["priority"] == 5


def test_identical_deterministic_requests_are_listed_together(q):
    seeded = {"seed": 42}
    s1, _ = q.enqueue(make_request(prompt="same", options=seeded))
    other, _ = q.enqueue(make_request(prompt="different", options=seeded))
    s2, _ = q.enqueue(make_request(prompt="same", options=seeded))
    rnd1, _ = q.enqueue(make_request(prompt="same"))  # no seed: random, never coalesced
    rnd2, _ = q.enqueue(make_request(prompt="same"))
    # A seed is no runner option: all five share one runner, hence one group.
    [group] = q.batch_similar_requests()
    assert group["ids"] == [s1, s2, other, rnd1, rnd2]
    [(key, ids)] = group["coalesced"].items()
    assert ids == [s1, s2]
    assert key == q.get(s1)["coalesce_key"]


def test_embed_requests_of_one_model_are_merged(q):
    e1, _ = q.enqueue(make_request(model="nomic-embed-text", endpoint="embed", prompt="x"))
    e2, _ = q.enqueue(make_request(model="nomic-embed-text", endpoint="embed", prompt="y"))
    e3, _ = q.enqueue(make_request(model="nomic-embed-text", endpoint="embed", prompt="x"))
    solo, _ = q.enqueue(make_request(model="all-minilm", endpoint="embed", prompt="z"))
    legacy, _ = q.enqueue(make_request(model="nomic-embed-text", endpoint="embeddings"))
    groups = _by_model(q.batch_similar_requests())
    merged = groups[("nomic-embed-text:latest", "embed")]
    assert merged["embed_merge"] is True
    assert merged["ids"] == [e1, e3, e2]  # identical inputs listed together
    assert list(merged["coalesced"].values()) == [[e1, e3]]
    assert groups[("all-minilm:latest", "embed")]["embed_merge"] is False  # alone
    assert groups[("all-minilm:latest", "embed")]["ids"] == [solo]
    assert groups[("nomic-embed-text:latest", "embeddings")]["embed_merge"] is False
    assert groups[("nomic-embed-text:latest", "embeddings")]["ids"] == [legacy]


def test_requests_without_keys_group_by_model(q):
    a, _ = q.enqueue(make_request(batch_key=None, coalesce_key=None))
    b, _ = q.enqueue(make_request(endpoint="chat", batch_key=None, coalesce_key=None))
    [group] = q.batch_similar_requests()
    assert group["ids"] == [a, b]
    assert group["batch_key"] == "infer:llama3.2:1b"


def test_limit_model_and_claimed_or_delayed_work(q, clock):
    ids = [q.enqueue(make_request(prompt=str(i)))[0] for i in range(5)]
    other, _ = q.enqueue(make_request(model="qwen2:0.5b"))
    assert [g["ids"] for g in q.batch_similar_requests(limit=2)] == [ids[:2]]
    assert [g["ids"] for g in q.batch_similar_requests(model="qwen2:0.5b")] == [[other]]
    q.dequeue(ids=[ids[0]])
    q.requeue(ids[0], delay_s=10)
    q.dequeue(ids=[ids[1]])
    assert [g["ids"] for g in q.batch_similar_requests(model="llama3.2:1b")] == [ids[2:]]
    clock.advance(10)
    assert [g["ids"] for g in q.batch_similar_requests(model="llama3.2:1b")] == [
        [ids[0]] + ids[2:]
    ]

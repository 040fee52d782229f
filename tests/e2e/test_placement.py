"""Where requests go: loaded models first, session affinity, the baseline strategies."""

import requests

from tests.e2e.conftest import wait_until

BODY = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 3}}


def served(sim):
    return sim.stats()["generations_started"]


def test_session_affinity_keeps_a_conversation_on_one_node(make_cluster):
    c = make_cluster(nodes=3)
    for session in ("alice", "bob"):
        before = [served(s) for s in c.sims]
        for _ in range(6):
            r = requests.post(c.url + "/api/chat", json=BODY, headers={"X-OLOL-Session": session},
                              timeout=10)
            assert r.status_code == 200
        delta = [served(s) - b for s, b in zip(c.sims, before, strict=True)]
        assert sorted(delta) == [0, 0, 6], delta


def test_a_node_that_has_the_model_loaded_is_preferred(make_cluster):
    c = make_cluster(nodes=2, models="llama3.2:1b,qwen2.5:0.5b", sim_kw={"max_loaded": 1})
    for _ in range(8):
        assert requests.post(c.url + "/api/chat", json=BODY, timeout=10).status_code == 200
        assert requests.post(c.url + "/api/chat", json={**BODY, "model": "qwen2.5:0.5b"},
                             timeout=10).status_code == 200
    # each model settled on a node: two loads in all, not one per request
    assert sum(s.stats()["model_loads"] for s in c.sims) <= 4


def test_round_robin_baseline_spreads_requests(make_cluster):
    c = make_cluster(nodes=2, strategy="round-robin")
    for _ in range(6):
        assert requests.post(c.url + "/api/chat", json=BODY, timeout=10).status_code == 200
    assert [served(s) for s in c.sims] == [3, 3]


def test_least_busy_baseline_serves_everything(make_cluster):
    c = make_cluster(nodes=2, strategy="least-busy")
    for _ in range(4):
        assert requests.post(c.url + "/api/chat", json=BODY, timeout=10).status_code == 200
    assert sum(served(s) for s in c.sims) == 4


def test_unknown_model_on_every_node_is_refused_before_queueing(make_cluster):
    c = make_cluster(nodes=1)
    r = requests.post(c.url + "/api/generate", json={"model": "ghost", "prompt": "x"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "model 'ghost' not found"
    assert wait_until(lambda: c.proxy.queue.get_queue_stats()["depth"] == 0)
